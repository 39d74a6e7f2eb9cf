"""GPTQ rounding of integer weights: the rounding error of each column compensated in the next ones.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023 (after Optimal Brain Quantization, Frantar & Alistarh 2022).

A linear layer ``y = W x`` (``W`` (N, K), rows the output channels) with symmetric codes
``q_nk`` at a fixed per-row scale ``s_n`` (the scale of :func:`intsim.layers.quantize_weight`; GPTQ
changes which code each weight rounds to, never a scale, so the integer datapath is unchanged).
Objective, per row ``n`` over calibration inputs ``X`` (K, T)::

    || (w_n - s_n q_n) X ||**2 = (w_n - s_n q_n) H (w_n - s_n q_n)^T,   H = X X^T (K x K)

Round to nearest minimises each term alone; GPTQ quantizes the columns in order and, after column
``i``, moves the still unquantized weights to absorb its error (the optimal least-squares update):

    H' = H + lambda I,   lambda = damp * mean(diag H)         (damping; a zero column of H:
                                                               H_ii = 1 and its weights 0)
    U  = chol(H'^-1)^T                                        (upper triangular: U^T U = H'^-1)
    for i = 0 .. K-1:
        q_:i = clip(round_half_even(w_:i / s), -Q, Q)        (Q = 2**(b-1) - 1; numpy's rint)
        e_:i = (w_:i - s q_:i) / U_ii
        w_:j -= e_:i U_ij                                     for j > i

``U``'s row ``i`` is the row of the inverse Hessian of the not yet quantized columns ``i..K-1``
(the Cholesky form of OBQ's rank-one downdates ``H^-1 <- H^-1 - H^-1_:i H^-1_i: / H^-1_ii``);
:func:`gptq_round_reference` computes the same by those downdates, the test's reference. The
float arithmetic decides the codes, so GPTQ codes are reproducible (numpy, fixed order) but a
rounding decision at an exact tie of two codes may differ between the two forms (and between
block sizes of the lazy updates).
"""

from __future__ import annotations

import numba
import numpy as np

from .errors import GQAError


def _checked(w, H, scale, bits):
    w = np.asarray(w, np.float64)
    H = np.asarray(H, np.float64)
    scale = np.asarray(scale, np.float64)
    if w.ndim != 2:
        raise GQAError("w", f"has shape {w.shape}", "give the weight matrix (out channels, in features)")
    N, K = w.shape
    if H.shape != (K, K) or not np.all(np.isfinite(H)):
        raise GQAError("H", f"has shape {H.shape} for {K} input features",
                       "give X X^T of the layer's calibration inputs (K x K, finite)")
    if scale.shape != (N,) or not np.all(scale > 0):
        raise GQAError("scale", f"has shape {scale.shape}", f"give {N} positive per-row scales")
    if not 2 <= bits <= 16:
        raise GQAError("bits", f"{bits} is outside [2, 16]")
    return w.copy(), H.copy(), scale, (1 << (bits - 1)) - 1


def _damped(w, H, damp):
    dead = np.diag(H) == 0                  # an input that never moves: its weights cannot matter
    H[dead, dead] = 1.0
    w[:, dead] = 0.0
    H += damp * np.mean(np.diag(H)) * np.eye(H.shape[0])
    return w, H


def _inverse_cholesky(H) -> np.ndarray:
    """The upper triangular ``U`` with ``U^T U = H^-1``, without forming ``H^-1``: ``H = R R^T`` with
    ``R`` upper triangular (the Cholesky factor of ``H`` with rows and columns reversed, reversed
    back), then ``U = R^-1`` (``R^-T R^-1 = (R R^T)^-1``; the factor is unique, so this is
    ``chol(H^-1)^T`` of the module docstring)."""
    from scipy.linalg import solve_triangular

    try:
        L = np.linalg.cholesky(H[::-1, ::-1])
    except np.linalg.LinAlgError:
        raise GQAError("H", "is not positive definite after damping", "raise damp") from None
    R = np.ascontiguousarray(L[::-1, ::-1])
    return solve_triangular(R, np.eye(H.shape[0]), lower=False)


def gptq_round(w, H, scale, bits: int = 8, damp: float = 0.01, block: int = 128) -> np.ndarray:
    """GPTQ codes (int64, (N, K)) of ``w`` at the per-row ``scale`` (the module docstring), the updates
    of the columns after each ``block`` of columns applied at once (GPTQ's lazy batch updates: the
    same sums in another order, one matrix product instead of ``block`` outer products)."""
    w, H, scale, top = _checked(w, H, scale, bits)
    w, H = _damped(w, H, damp)
    U = _inverse_cholesky(H)
    wt = np.ascontiguousarray(w.T)      # (K, N): column i of w is row i here (contiguous)
    q = np.empty(wt.shape, np.int64)
    K = wt.shape[0]
    for a in range(0, K, block):        # GPTQ's lazy batches: the columns after a block updated once
        z = min(a + block, K)
        E = np.empty((z - a, wt.shape[1]))
        _quantize_block(wt, q, E, U, scale, float(top), a, z)
        wt[z:] -= U[a:z, z:].T @ E
    return q.T.copy()


@numba.njit(cache=True)
def _quantize_block(wt, q, E, U, scale, top, a, z):
    """Columns ``a .. z-1`` of one lazy batch (rows of ``wt``), each rounded and its error spread
    over the batch's later columns: per column ``i``, ``q_i = clip(rint(w_i / s))``, ``E_i = (w_i -
    s q_i) / U_ii``, ``w_j -= U_ij E_i`` for ``i < j < z`` (one multiply and one subtract per element,
    as numpy's ``w_j - outer(U_i, E_i)``)."""
    N = wt.shape[1]
    for i in range(a, z):
        d = U[i, i]
        for n in range(N):
            qi = min(max(np.rint(wt[i, n] / scale[n]), -top), top)
            q[i, n] = np.int64(qi)
            E[i - a, n] = (wt[i, n] - qi * scale[n]) / d
        for j in range(i + 1, z):
            u = U[i, j]
            for n in range(N):
                wt[j, n] -= u * E[i - a, n]


def gptq_round_reference(w, H, scale, bits: int = 8, damp: float = 0.01) -> np.ndarray:
    """The same codes by OBQ's explicit inverse-Hessian downdates (slow; the tests' reference)."""
    w, H, scale, top = _checked(w, H, scale, bits)
    w, H = _damped(w, H, damp)
    Hinv = np.linalg.inv(H)
    N, K = w.shape
    q = np.empty(w.shape, np.int64)
    for i in range(K):
        for n in range(N):
            q[n, i] = int(min(max(round(w[n, i] / scale[n]), -top), top))
        d = Hinv[i, i]
        for n in range(N):
            err = w[n, i] - q[n, i] * scale[n]
            for j in range(i + 1, K):
                w[n, j] -= err * Hinv[i, j] / d
        Hinv = Hinv - np.outer(Hinv[:, i], Hinv[i, :]) / d     # column i is fixed now: drop it
    return q


def output_error(w, q, scale, H) -> float:
    """``sum_n (w_n - s_n q_n) H (w_n - s_n q_n)^T``: the layer's squared output error over the
    calibration inputs whose ``H = X X^T`` is given."""
    d = np.asarray(w, np.float64) - np.asarray(q, np.float64) * np.asarray(scale, np.float64)[:, None]
    return float(np.sum((d @ np.asarray(H, np.float64)) * d))


# --- an integer model's linears, rounded against their own operands --------------------------------

def linears(model) -> list:
    """Every :class:`~intsim.layers.IntLinear` reachable from ``model``'s attributes (lists, tuples and
    dicts followed; only intsim objects entered), each once, in attribute order."""
    from .layers import IntLinear

    found, seen, stack = [], set(), [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, IntLinear):
            found.append(obj)
        elif isinstance(obj, (list, tuple)):
            stack.extend(reversed(obj))
        elif isinstance(obj, dict):
            stack.extend(reversed(list(obj.values())))
        elif type(obj).__module__.startswith("intsim.") and hasattr(obj, "__dict__"):
            stack.extend(reversed(list(vars(obj).values())))
    return found


def row_factors(row_shift, rows: int) -> np.ndarray:
    """The real factor of each operand row's scale (rows,): ``g_r`` of a
    :class:`~intsim.fixedpoint.RowScale`, ``2**t_r`` of a power-of-two row shift, 1 without either."""
    from .fixedpoint import RowScale

    if row_shift is None:
        return np.ones(rows)
    if isinstance(row_shift, RowScale):
        return row_shift.factor().reshape(rows)
    return np.exp2(np.asarray(row_shift, np.float64).reshape(rows))


class HessianObserver:
    """``H = X^T X`` of what a linear's weights multiply, in real units, over the rows ``rows`` selects:
    ``x_r = codes_r * s_in * g_r + shift`` (the operand scale, the row's scale, a zero-point shift
    folded with the codes: :meth:`~intsim.layers.IntLinear.operand_shift`); padding rows are left out."""

    def __init__(self, linear):
        self.linear = linear
        self.H = None
        self.rows = None          # (M,) bool: the rows of the next operands that are real tokens
        self.shift = linear.operand_shift()

    def __call__(self, x2, row_shift):
        f = self.linear.in_scale * row_factors(row_shift, x2.shape[0])
        if self.rows is not None:
            x2, f = x2[self.rows], f[self.rows]
        # float32 (relative error ~1e-7 per product, far below the 1% damping), summed in float64 per batch
        x = x2.astype(np.float32) * f.astype(np.float32)[:, None] + np.asarray(self.shift, np.float32)
        h = (x.T @ x).astype(np.float64)
        self.H = h if self.H is None else self.H + h


def operand_hessians(model, batches, forward) -> list[tuple[object, np.ndarray]]:
    """``[(linear, H)]`` of every linear of ``model``: ``forward(ids, mask)`` run on each ``(ids, mask)``
    of ``batches``, the operands of real tokens (``mask == 1``) observed."""
    lins = linears(model)
    obs = [HessianObserver(lin) for lin in lins]
    try:
        for lin, o in zip(lins, obs):
            lin.observer = o
        for ids, mask in batches:
            rows = np.asarray(mask).reshape(-1).astype(bool)
            for o in obs:
                o.rows = rows
            forward(ids, mask)
    finally:
        for lin in lins:
            lin.observer = None
    return [(lin, o.H) for lin, o in zip(lins, obs) if o.H is not None]


def gptq_model(model, batches, forward, damp: float = 0.01, progress: bool = False) -> int:
    """Re-round every linear of the built integer ``model`` by GPTQ (:func:`gptq_round`) against the
    Hessian of its own integer operands over ``batches`` (:func:`operand_hessians`; the model as built,
    round to nearest, gives them: one pass, not layer by layer). Scales, multipliers and widths stay;
    only the codes and the biases that fold with them change. -> the number of linears re-rounded.

    Each linear must have kept its folded real weights (built with ``weight_rounding`` other than
    ``"nearest"``); they are released afterwards."""
    from tqdm.auto import tqdm

    pairs = operand_hessians(model, batches, forward)
    for lin, H in tqdm(pairs, desc="gptq", unit="linear", disable=not progress):
        if lin.folded_weights is None:
            raise GQAError("weight_rounding", "the linears kept no real weights to re-round",
                           "build the model with weight_rounding = 'gptq'")
        lin.set_codes(gptq_round(lin.folded_weights, H, lin.weight_scale, lin.weight_bits, damp))
    for lin in linears(model):
        lin.folded_weights = None
    return len(pairs)
