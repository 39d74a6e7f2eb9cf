"""The search's fitness: exact integer-datapath error of candidate breakpoint sets.

:class:`Objective` holds, once per search, every scale's domain codes, their reals, the
function values and prefix sums of the fitting statistics. Given a population of breakpoint
vectors ``(pop, N-1)`` it derives every scale's segment starts (the canonical rule,
:meth:`intsim.PWLDatapath.segment_starts`, so either ``segment_rule``), fits each segment's
integer slope and intercept (:mod:`gqa_lut.fitting`), runs the whole population through
intsim's PWL unit (:class:`intsim.pwl.ScaleBatch`) and measures the error of the unit's real
outputs: one vectorised call per generation.

Metrics: ``mse`` (mean over scales of each scale's MSE, optionally histogram-weighted) and
``max_abs`` (largest |error| over every scale and code).
"""

from __future__ import annotations

import numba
import numpy as np

from intsim import GQAError, PWLDatapath, PWLTable, scale_points
from intsim.functions import Function
from intsim.pwl import ScaleBatch, output_frac, pwl_output
from intsim.table import check_scales

from .fitting import check_coeff_method, fit_lines, point_stats, round_coefficients

METRICS = ("mse", "max_abs")


@numba.njit(cache=True)
def _segment_stats(prefix, offset, q_lo, n, P, out):
    """Segment ``i`` of scale ``s`` holds the codes ``P[p, s, i-1] <= q < P[p, s, i]`` (``P`` the
    segment starts: mirrors ``i(q) = #{j : q >= S_j}``); sums its points' statistics."""
    pop, S, nb = P.shape
    for p in range(pop):
        for i in range(nb + 1):
            for c in range(6):
                out[p, i, c] = 0.0
        for s in range(S):
            prev = 0
            for i in range(nb + 1):
                hi = n[s] if i == nb else min(max(P[p, s, i] - q_lo[s], 0), n[s])
                hi = max(hi, prev)
                for c in range(6):
                    out[p, i, c] += prefix[offset[s] + hi, c] - prefix[offset[s] + prev, c]
                prev = hi


@numba.njit(cache=True)
def _scale_errors(values, y, w, bounds, mse, mx):
    pop = values.shape[0]
    S = bounds.shape[0] - 1
    for p in range(pop):
        for s in range(S):
            acc = 0.0
            m = 0.0
            for t in range(bounds[s], bounds[s + 1]):
                d = values[p, t] - y[t]
                acc += w[t] * d * d
                if abs(d) > m:
                    m = abs(d)
            mse[p, s] = acc
            mx[p, s] = m


class Objective:
    """Error of shared tables over a scale set, for one function, entries count and datapath."""

    def __init__(self, fn: Function, entries: int, dp: PWLDatapath, scales, metric: str = "mse",
                 coeffs: str = "lsq", refine: bool = True, weights: dict | None = None):
        if metric not in METRICS:
            raise GQAError("metric", f"unknown metric {metric!r}", f"use one of {', '.join(METRICS)}")
        if isinstance(entries, bool) or not isinstance(entries, (int, np.integer)) or entries < 2:
            raise GQAError("entries", f"must be an integer >= 2, got {entries!r}")
        if entries > 2**dp.in_bits:
            raise GQAError("entries", f"{entries} exceed the {2**dp.in_bits} input codes of s{dp.in_bits}",
                           "use fewer entries or a wider input")
        self.fn, self.entries, self.dp = fn, int(entries), dp
        self.scales = check_scales(scales, dp, fn.domain)
        self.metric, self.coeffs, self.refine = metric, check_coeff_method(coeffs), bool(refine)
        S = len(self.scales)
        codes, ys, fit_w, scale_w, prefix = [], [], [], [], []
        for e in self.scales:
            q = scale_points(fn.domain, e, dp)
            x = q * 2.0**-e
            y = fn(x)
            if not np.all(np.isfinite(y)):
                raise GQAError("domain", f"{fn.name} is not finite on the codes of scale {e} in {fn.domain}")
            h = np.ones(q.size)
            if weights is not None and e in weights:
                hist = np.asarray(weights[e], dtype=np.float64)
                if hist.shape != (2**dp.in_bits,) or np.any(hist < 0) or not np.all(np.isfinite(hist)):
                    raise GQAError(f"weights.{e}", f"must be {2**dp.in_bits} finite non-negative counts, one per code")
                h = hist[q - dp.code_min]
            w = h / h.sum() if h.sum() > 0 else h  # weights of MSE_e
            codes.append(q), ys.append(y), scale_w.append(w), fit_w.append(w / S)
            prefix.append(np.vstack([np.zeros((1, 6)), np.cumsum(point_stats(x, y, w / S), axis=0)]))
        self.n = np.array([q.size for q in codes], dtype=np.int64)
        self.q_lo = np.array([q[0] for q in codes], dtype=np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(self.n)]).astype(np.int64)
        # prefix sums of all scales stacked: row offset[s] + i sums the first i points of scale s
        self.offset = np.concatenate([[0], np.cumsum(self.n + 1)[:-1]]).astype(np.int64)
        self.prefix = np.ascontiguousarray(np.vstack(prefix))
        self.codes = np.concatenate(codes)
        self.y = np.concatenate(ys)
        self.w = np.concatenate(scale_w)
        self.batch = ScaleBatch(self.codes, self.bounds, self.scales, dp)
        self._scale_col = np.array(self.scales, dtype=np.int64)[:, None]  # broadcasts to (pop, S, N-1)
        self.out_scale = np.concatenate([np.full(n, 2.0 ** -output_frac(e, dp)) for e, n in zip(self.scales, self.n)])

    # --- pieces ---------------------------------------------------------------------------
    def segment_starts(self, bp: np.ndarray) -> np.ndarray:
        """``(pop, S, N-1)`` segment starts of every scale (:meth:`PWLDatapath.segment_starts`)."""
        return self.dp.segment_starts(np.asarray(bp, dtype=np.float64)[:, None, :], self._scale_col)

    def segment_stats(self, P: np.ndarray) -> np.ndarray:
        """Summed fitting statistics of every segment over every scale: ``(pop, N, 6)``, from the
        segment starts ``P`` ``(pop, S, N-1)``."""
        out = np.empty((P.shape[0], P.shape[2] + 1, 6))
        _segment_stats(self.prefix, self.offset, self.q_lo, self.n, np.ascontiguousarray(P), out)
        return out

    def chord_lines(self, bp: np.ndarray):
        """Lines through ``f`` at each segment's ends (breakpoints clipped to the domain)."""
        lo, hi = self.fn.domain
        pop = bp.shape[0]
        ends = np.concatenate([np.full((pop, 1), lo), np.clip(bp, lo, hi), np.full((pop, 1), hi)], axis=1)
        a, b = ends[:, :-1], ends[:, 1:]
        fa, fb = self.fn(a), self.fn(b)
        width = b - a
        k = np.where(width > 0, (fb - fa) / np.where(width > 0, width, 1.0), 0.0)
        return k, fa - k * a

    def coefficients(self, bp: np.ndarray, P: np.ndarray | None = None):
        """Integer ``(K, B)`` per individual and segment, and the count of clipped coefficients.

        Degenerate segments (all points at one ``x``) take the chord slope, in the fitness and
        in the returned table alike: without ``refine`` a slope that is not refitted decides the
        segment's error, so the fitness must use the very slope the table stores.
        """
        chord = self.chord_lines(bp)
        if self.coeffs == "chord":
            return round_coefficients(*chord, self.dp)
        stats = self.segment_stats(self.segment_starts(bp) if P is None else P)
        return fit_lines(stats, self.dp, exact=self.refine, fallback=chord[0])

    def outputs(self, P: np.ndarray, K: np.ndarray, B: np.ndarray) -> np.ndarray:
        """The PWL unit's real outputs on every domain code of every scale: ``(pop, n_total)``."""
        acc = self.batch.accumulate(P, K, B)
        if self.dp.out_bits is not None:
            acc = np.concatenate([pwl_output(acc[:, a:b], e, self.dp)
                                  for e, a, b in zip(self.scales, self.bounds[:-1], self.bounds[1:])], axis=1)
        return acc * self.out_scale

    def per_scale_errors(self, P, K, B):
        """``(mse, max_abs)``, each ``(pop, S)``, of the tables given by their segment starts and codes."""
        pop, S = P.shape[0], len(self.scales)
        mse, mx = np.empty((pop, S)), np.empty((pop, S))
        _scale_errors(self.outputs(P, K, B), self.y, self.w, self.bounds, mse, mx)
        return mse, mx

    # --- the fitness ---------------------------------------------------------------------
    def snap(self, bp: np.ndarray) -> np.ndarray:
        """Breakpoints sorted and on the finest scale's grid ``2**-max(e)``: the dyadic reals a
        table stores (coarser scales round them again, by the canonical rule)."""
        g = 2.0 ** max(self.scales)
        return np.sort(np.rint(np.asarray(bp, dtype=np.float64) * g) / g, axis=-1)

    def __call__(self, bp: np.ndarray) -> np.ndarray:
        """Fitness (lower is better) of every breakpoint vector in ``bp`` ``(pop, N-1)``."""
        bp = self.snap(bp)
        P = self.segment_starts(bp)
        K, B, _ = self.coefficients(bp, P)
        mse, mx = self.per_scale_errors(P, K, B)
        return mse.mean(axis=1) if self.metric == "mse" else mx.max(axis=1)

    def table(self, bp, provenance: dict | None = None) -> PWLTable:
        """The finished table for one breakpoint vector."""
        bp = self.snap(bp)[None, :]
        K, B, clipped = self.coefficients(bp)
        prov = dict(provenance or {})
        prov["coefficients"] = {"method": self.coeffs,
                                "refine": "exact" if self.refine and self.coeffs == "lsq" else "none",
                                "clipped": int(clipped[0])}
        return PWLTable(function=self.fn.name, domain=self.fn.domain, datapath=self.dp, scales=self.scales,
                        breakpoints=bp[0], slopes=K[0], intercepts=B[0], provenance=prov)
