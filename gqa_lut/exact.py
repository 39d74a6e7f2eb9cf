"""The exact optimum of the shared-table objective: dynamic programming over breakpoint cells.

The objective (DESIGN.md, :class:`gqa_lut.objective.Objective`) of one table serving a scale
set ``E`` is ``mean_e MSE_e`` (weights ``w = 1/(S n_e)`` per domain code, or a histogram's)
or, for ``max_abs``, the largest |error| over every scale and code. Why it can be solved:

1. *Finitely many breakpoints.* At scale ``e`` a breakpoint ``p`` acts through the smallest
   code of the segment above it, :func:`segment_starts` (``P(e) = round_half_even(p * 2**e)``,
   plus one under the "gt" segment rule). That value only changes where ``p * 2**e`` crosses a
   half-integer, an odd multiple of ``2**-(e+1)``; for every ``e <= e_max`` those are points
   of the grid ``u = 2**-(e_max+1)``. So ``p`` is equivalent to a grid point ``t*u`` or to the
   open cell ``(t*u, (t+1)*u)`` between two (represented by its midpoint, where no scale
   ties). Half-even ties at a grid point are handled by evaluating the grid point itself:
   at most one scale ties there (``t*u`` is an odd multiple of ``2**-(e+1)`` for one ``e``),
   and whichever way it rounds is one more *candidate*. Candidates are the distinct vectors
   ``(start_e(p))_e`` clipped to each scale's domain codes (codes outside the domain see
   none of the breakpoints), in increasing ``p``; at most ``1 + sum_e n_e`` exist, since each
   step moves some scale's start up by at least one code.
2. *Separable cost.* With breakpoints at candidates ``a_1 <= ... <= a_{N-1}`` (plus the two
   ends), segment ``i`` holds, at scale ``e``, the codes ``[c_{a_i}(e), c_{a_{i+1}}(e))``; its
   cost ``C(a, b)`` depends only on those two candidates and its own ``(K_i, B_i)``. The
   objective is ``sum_i C`` (``max_i C`` for ``max_abs``).
3. *Exact segment costs* (``C(a, b)`` = minimum over every slope and intercept code):
   - full-precision MSE: weighted least squares on the pooled points from prefix sums; for a
     fixed ``K`` the error is a convex quadratic in ``B``, so the rounded, clipped real
     minimiser is the best code; the real-``B`` error ``g(K)`` is a convex lower bound that
     stops the scan over ``K`` (:func:`gqa_lut.fitting._best_integer_line`);
   - rounded outputs (``out_bits``): the unit's output differs from the line by at most
     ``d`` (half an output LSB; one for ``floor``), so ``||err|| >= ||line - f|| - d*sqrt(W)``
     (triangle inequality in the weighted norm): both the ``K`` and the ``B`` scans run
     outward from the real optimum and stop once that bound reaches the best *exactly
     evaluated* (integer arithmetic, rounding, the unit's own formula) error found. Valid
     when the output cannot saturate over the domain (checked; else the exact method
     refuses);
   - ``max_abs``: for fixed ``K`` the best real ``B`` is the midpoint of the residuals
     ``f - K x`` and the error their half-range ``h(K)``, convex in ``K``; the best code is
     the rounded, clipped midpoint (``|b - mid| + h`` is V-shaped); rounded outputs scan
     ``B`` outward with the bound ``|b - mid| + h - d``.
4. *Dynamic programme* over candidates and segment counts (empty segments allowed, so "at
   most N entries"): ``D[1][b] = C(0, b)``, ``D[m][b] = min_{a <= b} D[m-1][a] (+ | max) C(a, b)``,
   the optimum ``D[N][M-1]``. Ties go to the smallest ``a``.

Cost: ``M(M-1)/2`` segment costs (numba, parallel over rows) and ``N M^2/2`` DP steps. Where
``M`` exceeds ``max_candidates`` (wide inputs, many scales) or the costs run past
``time_limit``, :func:`exact_optimum` raises :class:`ExactTooLarge`; :func:`lower_bound` then
certifies a bound from a relaxation: the exact optimum over the coarsest scales that fit,
plus each remaining scale's own optimum.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numba
import numpy as np

from intsim import GQAError, PWLTable
from intsim.jit import parallel_njit
from intsim.pwl import ROUNDING_IDS, output_frac, round_shift1

from .dp import dp_optimum
from .fitting import _best_integer_line
from .objective import Objective

MAX_CANDIDATES = 3000
MAX_POSITIONS = 1 << 23
METRIC_IDS = {"mse": 0, "max_abs": 1}
_ROW_CHUNK = 64  # rows of segment costs between two checks of the time limit


class ExactUnavailable(GQAError):
    """The exact optimum cannot be computed for this problem (the message says why)."""


class ExactTooLarge(ExactUnavailable):
    """The exact candidate set (or its time) is beyond the limits given."""


def segment_starts(dp, breakpoints, e: int) -> np.ndarray:
    """Per breakpoint, the smallest input code of the segment above it at scale ``e``.

    The one place this module learns the datapath's segment rule
    (:meth:`intsim.PWLDatapath.segment_starts`: ``P_j(e)`` under "ge", ``P_j(e) + 1`` under
    "gt"); the candidate set, the costs and the proofs follow from it unchanged (the cells of
    step 1 do not depend on the rule, only on where ``P_j(e)`` changes).
    """
    return dp.segment_starts(breakpoints, e)


# --- candidates -------------------------------------------------------------------------------
@dataclass
class Candidates:
    """Breakpoint candidates: representative reals ``(M,)`` and clipped segment starts ``(M, S)``."""

    reals: np.ndarray
    starts: np.ndarray


def candidate_bound(objective: Objective) -> int:
    """``1 + sum_e n_e``: no scale set has more candidates than that (module docstring, step 1)."""
    return 1 + int(objective.n.sum())


def _two_adic(t: np.ndarray) -> np.ndarray:
    """2-adic valuation of integers (64 for 0): how coarse the dyadic ``t * 2**-k`` is."""
    t = np.asarray(t, np.int64)
    low = t & -t  # the lowest set bit
    return np.where(t == 0, 64, np.log2(np.where(t == 0, 1, low)).astype(np.int64))


def candidates(objective: Objective) -> Candidates:
    """Every distinct breakpoint behaviour over the scale set, in increasing breakpoint order.

    Positions: the grid points ``t*u`` and cell midpoints ``(t+1/2)*u`` over a range wide
    enough that every scale's starts are clipped at both ends. Consecutive positions with the
    same clipped starts are one candidate; its representative is the position inside the
    domain (if any), then the coarsest dyadic, then the smallest magnitude.
    """
    scales = np.array(objective.scales)
    lo, hi = objective.fn.domain
    u = 2.0 ** -(int(scales.max()) + 1)
    reach = 2.0 ** -int(scales.min())
    t0, t1 = math.floor((lo - reach) / u) - 1, math.ceil((hi + reach) / u) + 1
    if 2 * (t1 - t0) > MAX_POSITIONS:
        raise ExactTooLarge("scales", f"the breakpoint grid 2**-{int(scales.max()) + 1} over the domain has "
                            f"{2 * (t1 - t0)} positions", "use fewer or closer scales")
    t = np.arange(t0, t1 + 1, dtype=np.int64)
    pos_t = np.stack([2 * t, 2 * t + 1], axis=1).ravel()  # in units of u/2: grid points even, midpoints odd
    pos = pos_t * (u / 2)
    dp = objective.dp
    starts = np.empty((pos.size, scales.size), np.int64)
    for s, e in enumerate(objective.scales):
        q_lo = int(objective.q_lo[s])
        starts[:, s] = np.clip(segment_starts(dp, pos, e), q_lo, q_lo + int(objective.n[s]))
    change = np.concatenate([[True], np.any(starts[1:] != starts[:-1], axis=1)])
    run = np.cumsum(change) - 1
    M = int(run[-1]) + 1
    outside = np.maximum(lo - pos, 0.0) + np.maximum(pos - hi, 0.0)
    val = _two_adic(pos_t)
    order = np.lexsort((np.abs(pos), -val, outside, run))  # per run: the best representative first
    first = order[np.concatenate([[True], run[order][1:] != run[order][:-1]])]
    return Candidates(reals=pos[first], starts=np.ascontiguousarray(starts[first]))


# --- segment costs ------------------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _seg_error(K, B, a, b, C, q_lo, bounds, codes, y, w, sk, sb, osh, omode, omin, omax, oscale, has_out, metric):
    """The unit's exact error on the points of segment ``(a, b)``: weighted SSE or max |err|."""
    acc = 0.0
    for s in range(C.shape[1]):
        t0 = bounds[s] + C[a, s] - q_lo[s]
        t1 = bounds[s] + C[b, s] - q_lo[s]
        for t in range(t0, t1):
            q = codes[t]
            A = ((K * q) << sk[s]) + (B << sb[s])
            if has_out:
                A = min(max(round_shift1(A, osh[s], omode), omin), omax)
            d = A * oscale[s] - y[t]
            if metric == 0:
                acc += w[t] * d * d
            elif abs(d) > acc:
                acc = abs(d)
    return acc


@numba.njit(cache=True, inline="always")
def _residual_range(slope, a, b, C, q_lo, bounds, codes, y, xs):
    """``min`` and ``max`` of ``f(x) - slope * x`` over the points of segment ``(a, b)``."""
    rmin, rmax = np.inf, -np.inf
    for s in range(C.shape[1]):
        t0 = bounds[s] + C[a, s] - q_lo[s]
        t1 = bounds[s] + C[b, s] - q_lo[s]
        for t in range(t0, t1):
            r = y[t] - slope * (codes[t] * xs[s])
            rmin = min(rmin, r)
            rmax = max(rmax, r)
    return rmin, rmax


@numba.njit(cache=True, inline="always")
def _shrink(v, r):
    """Lower bound of a squared norm after a perturbation of norm at most ``r``: ``(sqrt(v) - r)_+^2``."""
    d = math.sqrt(max(v, 0.0)) - r
    return d * d if d > 0.0 else 0.0


@numba.njit(cache=True)
def _scan_intercepts(K, B0, best, best_k, best_b, sl, s1, sx, sxx, sy, sxy, syy, r, rmin, rmax, a, b, C, q_lo,
                     bounds, codes, y, w, fmt, sk, sb, osh, omode, omin, omax, oscale, has_out, dmax, metric):
    """Rounded outputs, slope ``K``: intercept codes outward from ``B0`` until the bound reaches ``best``.

    The bound grows outward from ``B0`` in both directions (a convex quadratic in ``B`` for the
    MSE, ``|b - mid| + half-range`` for max |err|), minus what the output rounding can remove.
    ``K`` and ``B`` are codes of the format row ``fmt``; the unit sees them times the row's
    multipliers (its codes on the datapath's grid), and ``best_k``/``best_b`` are those.
    """
    bs, bmin, bmax, mk, mb = fmt[1], int(fmt[4]), int(fmt[5]), int(fmt[6]), int(fmt[7])
    for bdir in (1, -1):
        B = B0 if bdir == 1 else B0 - 1
        while bmin <= B <= bmax:
            bb = B * bs
            if metric == 0:
                lb = _shrink(sl * sl * sxx + 2 * sl * bb * sx + bb * bb * s1 - 2 * sl * sxy - 2 * bb * sy + syy, r)
            else:
                lb = max(bb - rmin, rmax - bb) - dmax
            if lb >= best:
                break
            c = _seg_error(K * mk, B * mb, a, b, C, q_lo, bounds, codes, y, w, sk, sb, osh, omode, omin, omax, oscale,
                           has_out, metric)
            if c < best:
                best, best_k, best_b = c, K * mk, B * mb
            B += bdir
    return best, best_k, best_b


@numba.njit(cache=True)
def _segment(a, b, C, xs, G, q_lo, bounds, codes, y, w, fmts, sk, sb, osh, omode, omin, omax, oscale, has_out,
             dmax, metric):
    """``(K, B, cost)``: the exact best integer line of segment ``(a, b)`` (module docstring, step 3).

    ``fmts``: one row per coefficient format the segment may use (per-segment exponents:
    several); the best over every row, its codes on the datapath's (widest) grid. A segment no
    weighted point reaches (MSE, zero weight) gets the zero line, as :mod:`gqa_lut.fitting` gives it.
    """
    s1 = G[b, 0] - G[a, 0]
    sx = G[b, 1] - G[a, 1]
    sxx = G[b, 2] - G[a, 2]
    sy = G[b, 3] - G[a, 3]
    sxy = G[b, 4] - G[a, 4]
    syy = G[b, 5] - G[a, 5]
    # the segment's x range, from its codes (exact): one distinct x is the degenerate case
    xlo, xhi = np.inf, -np.inf
    for s in range(C.shape[1]):
        if C[b, s] > C[a, s]:
            xlo = min(xlo, C[a, s] * xs[s])
            xhi = max(xhi, (C[b, s] - 1) * xs[s])
    one_x = xlo == xhi
    if one_x:
        # exact statistics of one x: prefix differences would leave noise in s1*sxx - sx^2
        sx, sxx, sxy = xlo * s1, xlo * xlo * s1, xlo * sy
    det = s1 * sxx - sx * sx
    if metric == 0 and s1 <= 0.0:
        return 0, 0, 0.0
    best, best_k, best_b = np.inf, 0, 0
    if metric == 0 and has_out == 0:
        for f in range(fmts.shape[0]):
            r = fmts[f]
            K, B, c = _best_integer_line(s1, sx, sxx, sy, sxy, syy, r[0], r[1], int(r[2]), int(r[3]), int(r[4]),
                                         int(r[5]), 0.0)
            if c < best:
                best, best_k, best_b = c, K * int(r[6]), B * int(r[7])
        return best_k, best_b, max(best, 0.0)
    for f in range(fmts.shape[0]):
        fmt = fmts[f]
        ks, bs = fmt[0], fmt[1]
        kmin, kmax, bmin, bmax, mk, mb = int(fmt[2]), int(fmt[3]), int(fmt[4]), int(fmt[5]), int(fmt[6]), int(fmt[7])
        k0 = 0
        if not one_x and det > 0.0:
            k0 = int(np.rint((s1 * sxy - sx * sy) / det / ks))
        k0 = min(max(k0, kmin), kmax)
        if f == 0:
            best_k = k0 * mk
        if metric == 0:
            r = dmax * math.sqrt(s1)
            for kdir in (1, -1):
                K = k0 if kdir == 1 else k0 - 1
                while kmin <= K <= kmax:
                    sl = K * ks
                    g = sl * sl * sxx - 2 * sl * sxy + syy - (sy - sl * sx) * (sy - sl * sx) / s1
                    if _shrink(g, r) >= best:
                        break  # g is convex in K: every K further out is bounded below as well
                    B0 = min(max(int(np.rint((sy - sl * sx) / s1 / bs)), bmin), bmax)
                    best, best_k, best_b = _scan_intercepts(K, B0, best, best_k, best_b, sl, s1, sx, sxx, sy, sxy,
                                                            syy, r, 0.0, 0.0, a, b, C, q_lo, bounds, codes, y, w, fmt,
                                                            sk, sb, osh, omode, omin, omax, oscale, has_out, dmax, 0)
                    K += kdir
            continue
        # max_abs: walk to the integer minimiser of the convex half-range h(K), then scan outward
        K = k0
        rmin, rmax = _residual_range(K * ks, a, b, C, q_lo, bounds, codes, y, xs)
        h = 0.5 * (rmax - rmin)
        for step in (1, -1):
            moved = False
            while kmin <= K + step <= kmax:
                lo2, hi2 = _residual_range((K + step) * ks, a, b, C, q_lo, bounds, codes, y, xs)
                if 0.5 * (hi2 - lo2) < h:
                    K, h, moved = K + step, 0.5 * (hi2 - lo2), True
                else:
                    break
            if moved:
                break
        kc = K
        for kdir in (1, -1):
            K = kc if kdir == 1 else kc - 1
            while kmin <= K <= kmax:
                rmin, rmax = _residual_range(K * ks, a, b, C, q_lo, bounds, codes, y, xs)
                mid, h = 0.5 * (rmin + rmax), 0.5 * (rmax - rmin)
                if h - dmax >= best:
                    break  # h is convex in K
                B0 = min(max(int(np.rint(mid / bs)), bmin), bmax)
                if has_out == 0:
                    bb = B0 * bs
                    c = max(bb - rmin, rmax - bb)  # the line is the output: B0 is this K's best code
                    if c < best:
                        best, best_k, best_b = c, K * mk, B0 * mb
                else:
                    best, best_k, best_b = _scan_intercepts(K, B0, best, best_k, best_b, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                                            0.0, 0.0, rmin, rmax, a, b, C, q_lo, bounds, codes, y, w,
                                                            fmt, sk, sb, osh, omode, omin, omax, oscale, has_out, dmax,
                                                            1)
                K += kdir
    return best_k, best_b, best


@numba.njit(cache=True)
def _cost_row(a, C, xs, G, q_lo, bounds, codes, y, w, fmts, sk, sb, osh, omode, omin, omax, oscale, has_out, dmax,
              metric, cap, cost):
    for b in range(a + 1, C.shape[0]):
        c = _segment(a, b, C, xs, G, q_lo, bounds, codes, y, w, fmts, sk, sb, osh, omode, omin, omax, oscale, has_out,
                     dmax, metric)[2]
        cost[a, b] = c
        if c > cap:
            # a longer segment holds a superset of the points: its cost is larger still, and no
            # segment of an optimal table costs more than the optimum (<= cap)
            for b2 in range(b + 1, C.shape[0]):
                cost[a, b2] = np.inf
            break


@parallel_njit
def _cost_rows(r0, r1, C, xs, G, q_lo, bounds, codes, y, w, fmts, sk, sb, osh, omode, omin, omax, oscale, has_out,
               dmax, metric, cap, cost):
    M = C.shape[0]
    # rows r and M-1-r in one task: every task has about the same number of pairs
    for r in numba.prange(r0, r1):
        _cost_row(r, C, xs, G, q_lo, bounds, codes, y, w, fmts, sk, sb, osh, omode, omin, omax, oscale, has_out,
                  dmax, metric, cap, cost)
        if M - 1 - r != r:
            _cost_row(M - 1 - r, C, xs, G, q_lo, bounds, codes, y, w, fmts, sk, sb, osh, omode, omin, omax, oscale,
                      has_out, dmax, metric, cap, cost)


@parallel_njit
def _dp(cost, entries, metric):
    M = cost.shape[0]
    D = np.empty((entries + 1, M))
    arg = np.zeros((entries + 1, M), dtype=np.int64)
    for b in range(M):
        D[1, b] = cost[0, b]
    for m in range(2, entries + 1):
        for b in numba.prange(M):
            best, best_a = np.inf, 0
            for a in range(b + 1):
                v = D[m - 1, a] + cost[a, b] if metric == 0 else max(D[m - 1, a], cost[a, b])
                if v < best:
                    best, best_a = v, a
            D[m, b], arg[m, b] = best, best_a
    return D, arg


# --- the problem ----------------------------------------------------------------------------------
def _no_saturation(objective: Objective) -> bool:
    """Whether no slope and intercept code can drive the output into saturation on the domain."""
    dp = objective.dp
    kf, bf, of = dp.slope_format, dp.icpt_format, dp.out_format
    for s, e in enumerate(objective.scales):
        q_ext = max(abs(int(objective.q_lo[s])), abs(int(objective.q_lo[s] + objective.n[s] - 1)))
        a_max = max(-kf.min_int, kf.max_int) * q_ext * (1 << dp.slope_shift(e)) + \
            max(-bf.min_int, bf.max_int) * (1 << dp.icpt_shift(e))
        shift = dp.acc_frac(e) - dp.out_frac
        y = a_max >> shift if shift >= 0 else a_max << -shift
        if y + 1 > of.max_int or -y - 1 < of.min_int:
            return False
    return True


class ExactProblem:
    """Arrays of one objective laid out for the kernels, and the candidate set."""

    def __init__(self, objective: Objective, max_candidates: int = MAX_CANDIDATES, formats=None):
        if objective.metric not in METRIC_IDS:
            raise GQAError("metric", f"the exact method does not know metric {objective.metric!r}")
        dp = objective.dp
        self.objective = objective
        bound = candidate_bound(objective)
        if bound > max_candidates:
            # the bound is nearly tight (module docstring); enumerate only when it might fit
            cand = candidates(objective) if bound <= 4 * max_candidates else None
            m = bound if cand is None else cand.reals.size
            if m > max_candidates:
                raise ExactTooLarge("max_candidates", f"the exact search needs {'up to ' if cand is None else ''}"
                                    f"{m} breakpoint candidates ({m * (m - 1) // 2} segment costs), over the limit "
                                    f"{max_candidates}",
                                    "raise max_candidates, or use fewer scales or a narrower input")
        else:
            cand = candidates(objective)
        self.cand = cand
        S = len(objective.scales)
        self.has_out = dp.out_bits is not None
        self.metric = METRIC_IDS[objective.metric]
        if self.has_out and not _no_saturation(objective):
            raise ExactUnavailable("out_bits", f"the output {dp.out_format} can saturate for some coefficient codes, and "
                           "the exact search proves optimality only without saturation",
                           "widen out_bits, or use method='ga'")
        C = cand.starts
        self.xs = 2.0 ** -np.array(objective.scales, dtype=np.float64)
        G = np.zeros((C.shape[0], 6))
        for s in range(S):
            G += objective.prefix[objective.offset[s] + C[:, s] - objective.q_lo[s]]
        self.G = np.ascontiguousarray(G)
        kf, bf = dp.slope_format, dp.icpt_format
        # coefficient formats: (slope LSB, intercept LSB, code ranges, multipliers onto the datapath's codes)
        rows = [(kf.resolution, bf.resolution, kf.min_int, kf.max_int, bf.min_int, bf.max_int, 1, 1)]
        if formats is not None:
            rows = formats
        self.fmts = np.ascontiguousarray(np.array(rows, dtype=np.float64).reshape(-1, 8))
        self.sk = np.array([dp.slope_shift(e) for e in objective.scales], np.int64)
        self.sb = np.array([dp.icpt_shift(e) for e in objective.scales], np.int64)
        if self.has_out:
            self.osh = np.array([dp.acc_frac(e) - dp.out_frac for e in objective.scales], np.int64)
            of = dp.out_format
            self.omin, self.omax = int(of.min_int), int(of.max_int)
            lsb = 2.0 ** -dp.out_frac
            # largest |output - line|: half an LSB (one for floor) where the output rounds at all
            self.dmax = float(np.max(np.where(self.osh > 0, lsb * (1.0 if dp.out_rounding == "floor" else 0.5),
                                              0.0)))
        else:
            self.osh = np.zeros(S, np.int64)
            self.omin, self.omax, self.dmax = 0, 0, 0.0
        self.omode = ROUNDING_IDS[dp.out_rounding]
        self.oscale = np.array([2.0 ** -output_frac(e, dp) for e in objective.scales])
        self.w = objective.w / S  # the objective's weight per code: each scale's MSE weights over S

    @property
    def size(self) -> int:
        return int(self.cand.reals.size)

    def _args(self, relaxed: bool = False):
        """Kernel arguments; ``relaxed``: full-precision output and the MSE metric (the fast path)."""
        o = self.objective
        has_out, metric = (0, 0) if relaxed else (int(self.has_out), self.metric)
        return (self.cand.starts, self.xs, self.G, o.q_lo, o.bounds, o.codes, o.y, self.w, self.fmts, self.sk, self.sb,
                self.osh, self.omode, self.omin, self.omax, self.oscale, has_out, self.dmax, metric)

    def segment(self, a: int, b: int, relaxed: bool = False):
        """``(K, B, cost)`` of the segment between candidates ``a < b``."""
        return _segment(a, b, *self._args(relaxed))

    def costs(self, cap: float = np.inf, relaxed: bool = False, time_limit: float | None = None,
              t0: float | None = None) -> np.ndarray:
        """Every segment cost ``C(a, b)`` (upper triangle; 0 on the diagonal; ``inf`` past ``cap``)."""
        M = self.size
        cost = np.zeros((M, M))
        t0 = time.perf_counter() if t0 is None else t0
        half = (M + 1) // 2
        for r0 in range(0, half, _ROW_CHUNK):
            _cost_rows(r0, min(r0 + _ROW_CHUNK, half), *self._args(relaxed), float(cap), cost)
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                raise ExactTooLarge("time_limit", f"the {M * (M - 1) // 2} segment costs of {M} candidates ran "
                                    f"past {time_limit:g} s", "raise time_limit, or use fewer scales")
        return cost

    def solve(self, cost: np.ndarray, metric: int, relaxed: bool = False):
        """The DP over ``cost``: ``(value, breakpoints, K, B)``."""
        N, M = self.objective.entries, self.size
        D, arg = _dp(cost, N, metric)
        ends = [M - 1]
        for m in range(N, 1, -1):
            ends.append(int(arg[m, ends[-1]]))
        ends = [0] + ends[::-1]  # candidate indices: 0, a_1, ..., a_{N-1}, M-1
        K = np.zeros(N, np.int64)
        B = np.zeros(N, np.int64)
        for i in range(N):
            if ends[i + 1] > ends[i]:
                K[i], B[i], _ = self.segment(ends[i], ends[i + 1], relaxed)
        return float(D[N, M - 1]), self.cand.reals[np.array(ends[1:-1], dtype=np.int64)], K, B


@dataclass
class ExactResult:
    """The optimum: breakpoints (reals), integer coefficients and the objective's value."""

    breakpoints: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    value: float
    candidates: int


def exact_optimum(objective: Objective, max_candidates: int = MAX_CANDIDATES,
                  time_limit: float | None = None, formats=None) -> ExactResult:
    """The global optimum of ``objective`` over every table of its entries (at most), datapath and scales.

    Raises :class:`ExactTooLarge` past ``max_candidates`` candidates or ``time_limit`` seconds.
    ``formats``: rows ``(slope LSB, intercept LSB, kmin, kmax, bmin, bmax, k multiplier, b
    multiplier)``, the coefficient grids a segment may choose from (:mod:`gqa_lut.segexp`);
    default: the datapath's one format.
    """
    check_limits(max_candidates, time_limit)
    t0 = time.perf_counter()
    prob = ExactProblem(objective, max_candidates, formats)
    relaxed = prob.metric == 0 and not prob.has_out
    cap = np.inf
    if not relaxed:
        # the full-precision MSE optimum (fast) is a feasible table: its true error caps every segment
        _, bp, K, B = prob.solve(prob.costs(relaxed=True, time_limit=time_limit, t0=t0), 0, relaxed=True)
        cap = _value(objective, bp, K, B) * (1 + 1e-9) + 1e-300
    value, bp, K, B = prob.solve(prob.costs(cap, time_limit=time_limit, t0=t0), prob.metric)
    return ExactResult(breakpoints=bp, slopes=K, intercepts=B, value=value, candidates=prob.size)


def check_limits(max_candidates, time_limit):
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, (int, np.integer)) or max_candidates < 2:
        raise GQAError("max_candidates", f"must be an integer >= 2, got {max_candidates!r}")
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or not time_limit > 0):
        raise GQAError("time_limit", f"must be a positive number of seconds or None, got {time_limit!r}")


def _value(objective: Objective, bp, K, B, P=None) -> float:
    if P is None:
        P = np.stack([segment_starts(objective.dp, bp, e) for e in objective.scales])
    mse, mx = objective.per_scale_errors(P[None], np.asarray(K)[None], np.asarray(B)[None])
    return float(mse.mean()) if objective.metric == "mse" else float(mx.max())


def objective_value(objective: Objective, table: PWLTable) -> float:
    """The objective's value for a finished table: its own comparator constants and codes through the unit."""
    P = np.stack([table.segment_starts(e) for e in objective.scales])
    return _value(objective, table.breakpoints, table.slopes, table.intercepts, P)


def exact_table(objective: Objective, provenance: dict | None = None, max_candidates: int = MAX_CANDIDATES,
                time_limit: float | None = None, formats=None) -> tuple[PWLTable, ExactResult]:
    """The optimal table, its provenance recording the optimum, the candidate count and the method."""
    res = exact_optimum(objective, max_candidates, time_limit, formats)
    prov = dict(provenance or {})
    prov["coefficients"] = {"method": "exact", "refine": "exact", "clipped": 0}
    table = PWLTable(function=objective.fn.name, domain=objective.fn.domain, datapath=objective.dp,
                     scales=objective.scales, breakpoints=res.breakpoints, slopes=res.slopes,
                     intercepts=res.intercepts, provenance=prov)
    return table, res


# --- the certified lower bound ----------------------------------------------------------------------
def _sub_objective(objective: Objective, scales, weights) -> Objective:
    """The same problem over a subset of the scales (histogram weights follow their scales)."""
    return Objective(objective.fn, objective.entries, objective.dp, scales, metric=objective.metric, weights=weights)


def per_scale_bound(objective: Objective, e: int, weights, max_candidates: int, time_limit) -> float:
    """A lower bound of scale ``e``'s own term: its single-scale optimum (0 if out of reach)."""
    dp = objective.dp
    if objective.metric == "mse" and weights is None and dp.out_bits is None:
        return float(dp_optimum(objective.fn, objective.entries, dp, e)[1])
    try:
        return exact_optimum(_sub_objective(objective, [e], weights), max_candidates, time_limit).value
    except ExactTooLarge:
        return 0.0


def lower_bound(objective: Objective, weights: dict | None = None, max_candidates: int = MAX_CANDIDATES,
                time_limit: float | None = None) -> dict:
    """A certified lower bound of the objective when the exact optimum is out of reach.

    Relaxation: a table for every scale is in particular a table for the subset ``T`` of the
    coarsest scales whose candidate set fits, so its terms over ``T`` are at least ``|T|``
    times the exact optimum over ``T``; each other scale's term is at least that scale's own
    optimum (its own table). For ``mse`` the bound is ``(|T| opt_T + sum_{e not in T} opt_e)/S``;
    for ``max_abs`` the largest of them.
    """
    scales = list(objective.scales)
    subset, opt_sub = [], 0.0
    for k in range(len(scales), 0, -1):
        try:
            opt_sub = exact_optimum(_sub_objective(objective, scales[:k], weights), max_candidates, time_limit).value
            subset = scales[:k]
            break
        except ExactTooLarge:
            continue
    rest = {e: per_scale_bound(objective, e, weights, max_candidates, time_limit) for e in scales if e not in subset}
    if objective.metric == "mse":
        value = (len(subset) * opt_sub + sum(rest.values())) / len(scales)
    else:
        value = max([opt_sub, *rest.values()])
    return {"value": float(value), "exact_scales": subset, "subset_optimum": float(opt_sub),
            "per_scale": {str(e): float(v) for e, v in rest.items()}}


def gap(value: float, reference: float) -> float | None:
    """Relative gap ``value / reference - 1`` (None where the reference is 0 and the value is not)."""
    if reference > 0:
        return float(value / reference - 1.0)
    return 0.0 if value <= 0 else None
