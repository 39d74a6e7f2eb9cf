"""Baseline tables under the same datapath: equal-width segments, NN-LUT and pwlf.

- ``uniform``: ``N`` equal-width segments over the domain; coefficients fitted as the search
  fits them (so the comparison isolates the breakpoints).
- ``nnlut``: NN-LUT (Yu et al., DAC 2022): a one-hidden-layer ReLU network with ``N-1``
  hidden units trained on ``f`` over a dense grid (:func:`nnlut_lines`), converted to a
  table: its kinks become breakpoints and each segment's slope and intercept are the
  network's, rounded half-even to the datapath's formats.
- ``pwlf``: the pwlf package's continuous piecewise-linear least-squares fit on the same
  grid (``fitfast``: multi-start L-BFGS from seeded random breakpoints), its slopes and
  intercepts rounded likewise.

Both network baselines fit in floating point and are quantized afterwards: that is their
method, and the point of comparing them with the quantization-aware search.
"""

from __future__ import annotations

import numpy as np
from intsim import GQAError, PWLTable

from .fitting import round_coefficients
from .objective import Objective

GRID_POINTS = 257
PWLF_STARTS = 3


def uniform_breakpoints(entries: int, domain) -> np.ndarray:
    lo, hi = domain
    return np.linspace(lo, hi, entries + 1)[1:-1]


def _grid(objective: Objective):
    lo, hi = objective.fn.domain
    x = np.linspace(lo, hi, GRID_POINTS)
    return x, objective.fn(x)


def _table_from_lines(objective: Objective, bp: np.ndarray, k: np.ndarray, b: np.ndarray, provenance: dict) -> PWLTable:
    """Quantize real segment lines onto the datapath (half-even, clipped and counted)."""
    bp = objective.snap(bp)  # the lines are given in ascending segment order
    K, B, clipped = round_coefficients(k[None, :], b[None, :], objective.dp)
    prov = dict(provenance)
    prov["coefficients"] = {"method": "rounded", "refine": "none", "clipped": int(clipped[0])}
    return PWLTable(function=objective.fn.name, domain=objective.fn.domain, datapath=objective.dp,
                    scales=objective.scales, breakpoints=bp, slopes=K[0], intercepts=B[0], provenance=prov)


def _relu_features(x: np.ndarray, kinks: np.ndarray) -> np.ndarray:
    """Hidden layer of the network: ``relu(x - kink_j)``, plus the skip ``x`` and the bias."""
    return np.hstack([np.maximum(x[:, None] - kinks[None, :], 0.0), x[:, None], np.ones((x.size, 1))])


def nnlut_lines(objective: Objective, seed: int = 0, max_iter: int = 200):
    """Train the ReLU network; returns its kinks and per-segment slopes and intercepts (reals).

    The network ``g(x) = d + u*x + sum_j v_j * relu(x - t_j)`` (``N-1`` hidden units; unit input
    weights lose nothing, a unit's scale folds into ``v_j``) is linear in its output layer, so
    training is variable projection: L-BFGS over the kinks ``t``, the output weights solved
    exactly by least squares at every step. The start spreads the kinks evenly, jittered by
    ``seed``.
    """
    from scipy.optimize import minimize

    h = objective.entries - 1
    lo, hi = objective.fn.domain
    x, y = _grid(objective)
    rng = np.random.default_rng(seed)
    t0 = np.linspace(lo, hi, h + 2)[1:-1] + rng.normal(0, 1e-2 * (hi - lo) / (h + 1), h)

    def loss(t):
        feats = _relu_features(x, t)
        r = feats @ np.linalg.lstsq(feats, y, rcond=None)[0] - y
        return float(r @ r) / x.size

    t = np.sort(minimize(loss, t0, method="L-BFGS-B", bounds=[(lo, hi)] * h, options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-12}).x)
    coef = np.linalg.lstsq(_relu_features(x, t), y, rcond=None)[0]
    v, u, d = coef[:h], coef[h], coef[h + 1]
    ends = np.concatenate([[lo], t, [hi]])
    mid = 0.5 * (ends[:-1] + ends[1:])
    active = mid[:, None] > t[None, :]
    k = u + active @ v
    b = d - active @ (v * t)
    return t, k, b


def nnlut_table(objective: Objective, seed: int = 0) -> PWLTable:
    bp, k, b = nnlut_lines(objective, seed)
    return _table_from_lines(objective, bp, k, b, {"method": "nnlut", "seed": seed,
                                                   "budget": {"grid_points": GRID_POINTS, "max_iter": 200}})


def legacy_seed(seed: int) -> int:
    """A seed for numpy's legacy ``RandomState`` (pwlf's), which takes only ``[0, 2**32)``: seeds
    below that are used as given; larger ones (which every other method accepts) are hashed into
    the range by ``SeedSequence``, so each still picks its own stream, the same on every run."""
    seed = int(seed)
    if 0 <= seed < 2**32:
        return seed
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])


def pwlf_table(objective: Objective, seed: int = 0) -> PWLTable:
    try:
        import pwlf
    except ImportError:  # pragma: no cover - pwlf is a declared dependency
        raise GQAError("method", "the pwlf baseline needs the pwlf package", "pip install pwlf") from None
    x, y = _grid(objective)
    model = pwlf.PiecewiseLinFit(x, y, seed=legacy_seed(seed))
    # multi-start L-BFGS (pwlf's fitfast): its differential-evolution `fit` takes minutes here
    breaks = model.fitfast(objective.entries, pop=PWLF_STARTS)
    bp = np.asarray(breaks[1:-1], dtype=np.float64)
    return _table_from_lines(objective, bp, np.asarray(model.slopes), np.asarray(model.intercepts),
                             {"method": "pwlf", "seed": seed,
                              "budget": {"grid_points": GRID_POINTS, "starts": PWLF_STARTS}})
