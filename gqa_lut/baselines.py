"""Baseline tables under the same datapath: equal-width segments, NN-LUT and pwlf.

- ``uniform``: ``N`` equal-width segments over the domain; coefficients fitted as the search
  fits them (so the comparison isolates the breakpoints).
- ``nnlut``: NN-LUT (Yu et al., DAC 2022): a one-hidden-layer ReLU network with ``N-1``
  hidden units, ``g(x) = d + sum_j v_j * relu(w_j * x + c_j)``, fitted to ``f`` on a dense
  grid (scipy's least squares, deterministic start: kinks spread evenly over the domain) and
  converted to a table: kinks ``-c_j / w_j`` become breakpoints and each segment's slope and
  intercept are the network's, rounded half-even to the datapath's formats.
- ``pwlf``: the pwlf package's continuous piecewise-linear least-squares fit (its global
  breakpoint search, seeded) on the same grid, its slopes and intercepts rounded likewise.

Both network baselines fit in floating point and are quantized afterwards: that is their
method, and the point of comparing them with the quantization-aware search.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from intsim import GQAError, PWLTable

from .fitting import round_coefficients
from .objective import Objective

GRID_POINTS = 2001


def uniform_breakpoints(entries: int, domain) -> np.ndarray:
    lo, hi = domain
    return np.linspace(lo, hi, entries + 1)[1:-1]


def _grid(objective: Objective):
    lo, hi = objective.fn.domain
    x = np.linspace(lo, hi, GRID_POINTS)
    return x, objective.fn(x)


def _table_from_lines(objective: Objective, bp: np.ndarray, k: np.ndarray, b: np.ndarray, provenance: dict) -> PWLTable:
    """Quantize real segment lines onto the datapath (half-even, clipped and counted)."""
    order = np.argsort(bp, kind="stable")
    K, B, clipped = round_coefficients(k[None, :], b[None, :], objective.dp)
    prov = dict(provenance)
    prov["coefficients"] = {"method": "rounded", "refine": "none", "clipped": int(clipped[0])}
    return PWLTable(function=objective.fn.name, domain=objective.fn.domain, datapath=objective.dp,
                    scales=objective.scales, breakpoints=bp[order], slopes=K[0], intercepts=B[0], provenance=prov)


def _relu_net(params, x, h):
    w, c, v, d = params[:h], params[h:2 * h], params[2 * h:3 * h], params[3 * h]
    z = np.outer(x, w) + c
    return np.maximum(z, 0.0) @ v + d, z


def nnlut_lines(objective: Objective, seed: int = 0, max_nfev: int = 4000):
    """Fit the ReLU network; returns its kinks and per-segment slopes and intercepts (reals)."""
    h = objective.entries - 1
    lo, hi = objective.fn.domain
    x, y = _grid(objective)
    rng = np.random.default_rng(seed)
    kinks = np.linspace(lo, hi, h + 2)[1:-1] + rng.normal(0, 1e-3 * (hi - lo), h)
    w0 = np.ones(h)
    c0 = -kinks
    feats = np.hstack([np.maximum(np.outer(x, w0) + c0, 0.0), np.ones((x.size, 1))])
    vd = np.linalg.lstsq(feats, y, rcond=None)[0]
    p0 = np.concatenate([w0, c0, vd[:h], vd[h:]])

    def residual(p):
        return _relu_net(p, x, h)[0] - y

    def jac(p):
        w, v = p[:h], p[2 * h:3 * h]
        _, z = _relu_net(p, x, h)
        active = (z > 0).astype(np.float64)
        return np.hstack([active * v * x[:, None], active * v, np.maximum(z, 0.0), np.ones((x.size, 1))])

    p = least_squares(residual, p0, jac=jac, max_nfev=max_nfev, method="trf").x
    w, c, v, d = p[:h], p[h:2 * h], p[2 * h:3 * h], p[3 * h]
    w = np.where(np.abs(w) < 1e-12, 1e-12, w)
    bp = np.sort(np.clip(-c / w, lo, hi))
    # each segment's line: evaluate the network's derivative and value at the segment middle
    ends = np.concatenate([[lo], bp, [hi]])
    mid = 0.5 * (ends[:-1] + ends[1:])
    active = (np.outer(mid, w) + c) > 0
    k = active @ (v * w)
    b = active @ (v * c) + d
    return bp, k, b


def nnlut_table(objective: Objective, seed: int = 0) -> PWLTable:
    bp, k, b = nnlut_lines(objective, seed)
    return _table_from_lines(objective, bp, k, b, {"method": "nnlut", "seed": seed,
                                                   "budget": {"grid_points": GRID_POINTS}})


def pwlf_table(objective: Objective, seed: int = 0) -> PWLTable:
    try:
        import pwlf
    except ImportError:  # pragma: no cover - pwlf is a declared dependency
        raise GQAError("method", "the pwlf baseline needs the pwlf package", "pip install pwlf") from None
    x, y = _grid(objective)
    model = pwlf.PiecewiseLinFit(x, y, seed=seed)
    breaks = model.fit(objective.entries)
    bp = np.asarray(breaks[1:-1], dtype=np.float64)
    return _table_from_lines(objective, bp, np.asarray(model.slopes), np.asarray(model.intercepts),
                             {"method": "pwlf", "seed": seed, "budget": {"grid_points": GRID_POINTS}})
