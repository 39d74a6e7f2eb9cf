"""Per-segment slopes and intercepts for given breakpoints, on the integer formats.

Every segment's line ``y = k*x + b`` is fitted to the points it serves: the input codes of
every scale in the set whose real value ``x = q * 2**-e`` lies in the domain and whose
segment index (under that scale's segment starts, :meth:`intsim.PWLDatapath.segment_starts`)
is the segment's. Point ``(x, y)`` of scale ``e`` has weight ``w = 1 / (S * n_e)`` (``S`` scales,
``n_e`` codes), so the weighted squared error *is* the headline mean MSE; a code histogram
reweights it.

Methods:
- ``chord``: the line through ``f`` at the segment's ends (breakpoints, domain ends), as the
  GQA-LUT paper does; rounded half-even to the formats.
- ``lsq``: weighted least squares over the pooled points, rounded half-even.
- refinement: the integer pair ``(K, B)`` minimising the same weighted error, found exactly
  (:func:`_best_integer_line`); cheap enough to run inside the GA's loop, so the fitness is
  the error of the very table the search returns.

All weighted sums come from prefix sums per scale, so a segment costs O(1) whatever its length.
"""

from __future__ import annotations

import numba
import numpy as np

from intsim import GQAError, PWLDatapath

# columns of a statistics vector
W, WX, WXX, WY, WXY, WYY = range(6)


def point_stats(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-point statistics ``(w, wx, wx^2, wy, wxy, wy^2)``, shape ``(n, 6)``."""
    return np.stack([w, w * x, w * x * x, w * y, w * x * y, w * y * y], axis=-1)


def round_coefficients(k, b, dp: PWLDatapath):
    """Real lines -> saturated codes (half-even); returns codes and the count of clipped ones."""
    kf, bf = dp.slope_format, dp.icpt_format
    kq = np.rint(np.asarray(k) * 2.0**kf.frac)
    bq = np.rint(np.asarray(b) * 2.0**bf.frac)
    clipped = np.count_nonzero((kq < kf.min_int) | (kq > kf.max_int), axis=-1) + \
        np.count_nonzero((bq < bf.min_int) | (bq > bf.max_int), axis=-1)
    return (np.clip(kq, kf.min_int, kf.max_int).astype(np.int64),
            np.clip(bq, bf.min_int, bf.max_int).astype(np.int64), clipped)


@numba.njit(cache=True)
def _best_integer_line(s1, sx, sxx, sy, sxy, syy, ks, bs, kmin, kmax, bmin, bmax, k_fallback):
    """Exact integer minimiser of the weighted error over ``K in [kmin,kmax], B in [bmin,bmax]``.

    For fixed ``K`` the error is a convex quadratic in ``B``: the clipped nearest integer to
    its real minimiser is optimal. ``g(K)``, the error with ``B`` real and free, is a convex
    lower bound; scanning ``K`` outward from the real optimum stops once ``g`` exceeds the
    best integer error found, which proves optimality.
    """
    if s1 <= 0.0:
        return 0, 0, 0.0
    det = s1 * sxx - sx * sx
    if not det > 1e-12 * max(s1 * sxx, 1e-300):
        # one distinct x0: the error depends on K*x0*ks + B*bs only, and K*x0 reaches a finer
        # grid than B alone, so every K is tried (best B for each); ties go to the K nearest
        # the fallback slope
        x0 = sx / s1
        kf = min(max(int(np.rint(k_fallback)), kmin), kmax)
        best_cost = np.inf
        best_k, best_b = kf, 0
        span = max(kf - kmin, kmax - kf)
        for d in range(span + 1):
            for K in (kf - d, kf + d):
                if K < kmin or K > kmax or (d == 0 and K != kf) or (d > 0 and K == kf):
                    continue
                a = K * ks
                B = min(max(int(np.rint((sy / s1 - a * x0) / bs)), bmin), bmax)
                b = B * bs
                cost = a * a * sxx + 2 * a * b * sx + b * b * s1 - 2 * a * sxy - 2 * b * sy + syy
                if cost < best_cost:
                    best_cost, best_k, best_b = cost, K, B
            if x0 == 0.0:
                break
        return best_k, best_b, best_cost
    k_star = (s1 * sxy - sx * sy) / det / ks
    k0 = min(max(int(np.rint(k_star)), kmin), kmax)
    best_cost = np.inf
    best_k = k0
    best_b = 0
    for direction in (1, -1):
        K = k0 if direction == 1 else k0 - 1
        while kmin <= K <= kmax:
            a = K * ks
            b_real = (sy - a * sx) / s1
            lower = a * a * sxx - 2 * a * sxy + syy - (sy - a * sx) * (sy - a * sx) / s1
            if lower > best_cost:
                break
            B = min(max(int(np.rint(b_real / bs)), bmin), bmax)
            b = B * bs
            cost = a * a * sxx + 2 * a * b * sx + b * b * s1 - 2 * a * sxy - 2 * b * sy + syy
            if cost < best_cost:
                best_cost, best_k, best_b = cost, K, B
            K += direction
    return best_k, best_b, best_cost


@numba.njit(cache=True)
def _fit_lines(stats, fallback, ks, bs, kmin, kmax, bmin, bmax, exact, K, B):
    pop, n, _ = stats.shape
    clipped = np.zeros(pop, dtype=np.int64)
    for p in range(pop):
        for i in range(n):
            s1, sx, sxx, sy, sxy, syy = stats[p, i, 0], stats[p, i, 1], stats[p, i, 2], stats[p, i, 3], \
                stats[p, i, 4], stats[p, i, 5]
            if exact:
                K[p, i], B[p, i], _ = _best_integer_line(s1, sx, sxx, sy, sxy, syy, ks, bs, kmin, kmax, bmin, bmax,
                                                         fallback[p, i] / ks)
                continue
            det = s1 * sxx - sx * sx
            k = (s1 * sxy - sx * sy) / det if det > 1e-12 * max(s1 * sxx, 1e-300) else fallback[p, i]
            b = (sy - k * sx) / s1 if s1 > 0 else 0.0
            kq = np.rint(k / ks)
            bq = np.rint(b / bs)
            if kq < kmin or kq > kmax:
                clipped[p] += 1
            if bq < bmin or bq > bmax:
                clipped[p] += 1
            K[p, i] = min(max(kq, kmin), kmax)
            B[p, i] = min(max(bq, bmin), bmax)
    return clipped


def fit_lines(stats: np.ndarray, dp: PWLDatapath, exact: bool, fallback: np.ndarray | None = None):
    """Integer ``(K, B)`` for every segment's statistics ``(pop, N, 6)``.

    ``exact=False``: the weighted least-squares line rounded half-even and clipped (the count
    of clipped coefficients per individual is returned); ``exact=True``: the best integer pair
    (:func:`_best_integer_line`), which never needs clipping. ``fallback`` slopes (reals)
    serve segments whose points share one ``x``.
    """
    kf, bf = dp.slope_format, dp.icpt_format
    stats = np.ascontiguousarray(stats, dtype=np.float64)
    fb = np.zeros(stats.shape[:2]) if fallback is None else np.ascontiguousarray(fallback, dtype=np.float64)
    K = np.empty(stats.shape[:2], dtype=np.int64)
    B = np.empty(stats.shape[:2], dtype=np.int64)
    clipped = _fit_lines(stats, fb, 2.0**-kf.frac, 2.0**-bf.frac, kf.min_int, kf.max_int, bf.min_int, bf.max_int,
                         exact, K, B)
    return K, B, clipped


COEFF_METHODS = ("lsq", "chord")


def check_coeff_method(method: str) -> str:
    if method not in COEFF_METHODS:
        raise GQAError("coeffs", f"unknown coefficient method {method!r}", f"use one of {', '.join(COEFF_METHODS)}")
    return method
