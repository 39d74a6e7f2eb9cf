"""The exact optimum for one scale: dynamic programming over integer breakpoints.

At one scale ``e`` the domain's codes ``q_lo..q_hi`` (``n`` of them) are split into at most
``N`` contiguous segments. A segment's cost is the exact minimum, over integer slope and
intercept codes in their formats, of its summed squared error weighted ``1/n``
(:func:`gqa_lut.fitting._best_integer_line`): the quantization is inside the cost, not
applied afterwards. With ``C(a, b)`` the cost of points ``a..b-1`` (0 when empty):

    D[1][b] = C(0, b),      D[m][b] = min_{a <= b} D[m-1][a] + C(a, b),

and ``D[N][n]`` is ``MSE_e`` of the best table with ``N`` entries at that scale (empty
segments allowed, so "at most N"). O(n^2) segment costs and O(N n^2) recursion steps, in numba.

Breakpoints inside the domain: a cut ``a`` (the index of a segment start, code ``q_lo + a``)
ranges over ``start_offset .. n - 1 + start_offset``, so every comparator constant is a domain
code (``"ge"``: ``P = q_lo + a <= q_hi``; ``"gt"``: ``P = q_lo + a - 1 >= q_lo``). An empty
segment is then one at the domain's low end ("ge") or high end ("gt") rather than past it;
the optimum is the same, since an empty segment costs 0 wherever it sits.

Tie rule: in the recursion, ties go to the smallest ``a``. Read back from the last cut, the
returned cuts ``(a_1 <= ... <= a_{N-1})`` are therefore the first optimum in the order that
compares ``a_{N-1}`` first, then ``a_{N-2}``, ... (``sorted(cuts, key=reversed)``).
"""

from __future__ import annotations

import numba
import numpy as np

from intsim import GQAError, PWLDatapath, scale_points
from intsim.functions import Function

from .fitting import _best_integer_line, point_stats


@numba.njit(cache=True)
def _segment_costs(prefix, ks, bs, kmin, kmax, bmin, bmax):
    n = prefix.shape[0] - 1
    cost = np.zeros((n + 1, n + 1))
    for a in range(n):
        for b in range(a + 1, n + 1):
            s = prefix[b] - prefix[a]
            _, _, c = _best_integer_line(s[0], s[1], s[2], s[3], s[4], s[5], ks, bs, kmin, kmax, bmin, bmax, 0.0)
            cost[a, b] = max(c, 0.0)
    return cost


@numba.njit(cache=True)
def _dp(cost, entries, a_min, a_max):
    n = cost.shape[0] - 1
    D = np.empty((entries + 1, n + 1))
    arg = np.zeros((entries + 1, n + 1), dtype=np.int64)
    for b in range(n + 1):
        D[1, b] = cost[0, b]
    for m in range(2, entries + 1):
        for b in range(n + 1):
            best, best_a = np.inf, 0
            for a in range(a_min, min(b, a_max) + 1):
                v = D[m - 1, a] + cost[a, b]
                if v < best:
                    best, best_a = v, a
            D[m, b], arg[m, b] = best, best_a
    return D, arg


def dp_optimum(fn: Function, entries: int, dp: PWLDatapath, e: int):
    """Best table at scale ``e``: ``(breakpoints (reals), MSE_e)``.

    The DP finds the optimal segment starts; the breakpoints are the reals whose segment starts
    at scale ``e`` are exactly those under the datapath's ``segment_rule``
    (:meth:`PWLDatapath.breakpoints_for_starts`, the inverse of ``segment_starts``).
    """
    if isinstance(entries, bool) or not isinstance(entries, (int, np.integer)) or entries < 2:
        raise GQAError("entries", f"must be an integer >= 2, got {entries!r}")
    q = scale_points(fn.domain, e, dp)
    x = q * 2.0**-e
    y = fn(x)
    w = np.full(q.size, 1.0 / q.size)
    prefix = np.vstack([np.zeros((1, 6)), np.cumsum(point_stats(x, y, w), axis=0)])
    kf, bf = dp.slope_format, dp.icpt_format
    cost = _segment_costs(prefix, 2.0**-kf.frac, 2.0**-bf.frac, kf.min_int, kf.max_int, bf.min_int, bf.max_int)
    D, arg = _dp(cost, int(entries), dp.start_offset, q.size - 1 + dp.start_offset)
    cuts = []
    b = q.size
    for m in range(int(entries), 1, -1):
        a = int(arg[m, b])
        cuts.append(a)
        b = a
    idx = np.array(cuts[::-1], dtype=np.int64)
    return dp.breakpoints_for_starts(q[0] + idx, e), float(D[int(entries), q.size])
