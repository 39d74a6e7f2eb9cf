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
rounding decision at an exact tie of two codes may differ between the two forms.
"""

from __future__ import annotations

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


def gptq_round(w, H, scale, bits: int = 8, damp: float = 0.01) -> np.ndarray:
    """GPTQ codes (int64, (N, K)) of ``w`` at the per-row ``scale`` (the module docstring)."""
    w, H, scale, top = _checked(w, H, scale, bits)
    w, H = _damped(w, H, damp)
    try:
        U = np.linalg.cholesky(np.linalg.inv(H)).T
    except np.linalg.LinAlgError:
        raise GQAError("H", "is not positive definite after damping", "raise damp") from None
    q = np.empty(w.shape, np.int64)
    for i in range(w.shape[1]):
        qi = np.clip(np.rint(w[:, i] / scale), -top, top)
        q[:, i] = qi
        e = (w[:, i] - qi * scale) / U[i, i]
        w[:, i + 1:] -= np.outer(e, U[i, i + 1:])
    return q


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
    return float(np.einsum("nk,kl,nl->", d, np.asarray(H, np.float64), d))
