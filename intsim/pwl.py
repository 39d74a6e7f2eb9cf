"""The PWL unit: integer breakpoints, slopes and intercepts applied to input codes.

Semantics are :mod:`intsim.datapath`'s, exactly:

    i(q) = #{j : q >= S_j(e)}          S_j(e) = PWLDatapath.segment_starts (either segment_rule)
    A    = K_i * q * 2**slope_shift(e) + B_i * 2**icpt_shift(e)     (int64, exact)
    y    = A                                            (full precision, A * 2**-F(e))
         | saturate(round_shift(A, F(e) - out_frac, out_rounding), s{out_bits}.{out_frac})

Two entry points share those formulas: :func:`pwl_accumulate` for one table over a vector of
codes (the simulator), and :class:`ScaleBatch` / :func:`pwl_accumulate_population` for a whole
population of candidate tables over several scales at once (the search's hot path, one numba
kernel). Both take the segment starts ``S_j(e)``, never the comparator constants, so every
kernel here is one rule whatever the datapath's ``segment_rule``.
"""

from __future__ import annotations

import numba
import numpy as np

from .datapath import PWLDatapath
from .errors import GQAError
from .fixedpoint import SaturationCounter, round_shift, saturate
from .jit import parallel_njit


def _check_shapes(bp_codes, slopes, icpts):
    if slopes.shape != icpts.shape:
        raise GQAError("intercepts", f"shape {icpts.shape} differs from slopes' {slopes.shape}")
    if bp_codes.shape[:-1] != slopes.shape[:-1] or bp_codes.shape[-1] != slopes.shape[-1] - 1:
        raise GQAError("breakpoints", f"shape {bp_codes.shape} does not fit {slopes.shape[-1]} entries",
                       "a table of N entries has N-1 breakpoints")


def _check_acc_width(dp: PWLDatapath, e: int):
    if dp.acc_bits(e) > 63:
        raise GQAError("scale", f"e={e} needs a {dp.acc_bits(e)}-bit accumulator",
                       "the simulator holds accumulators in int64; narrow the formats or the scale")


def pwl_accumulate(codes, e: int, starts, slopes, icpts, dp: PWLDatapath) -> np.ndarray:
    """Accumulator ``A`` (int64, ``F(e)`` fractional bits) of one table at scale ``e``.

    ``starts`` are the segment starts ``S_j(e)`` (:meth:`PWLDatapath.segment_starts`,
    non-decreasing; under "ge" the comparator constants themselves), ``slopes`` and ``icpts``
    the integer codes ``K_i`` and ``B_i``.
    """
    q = np.asarray(codes, dtype=np.int64)
    bp = np.asarray(starts, dtype=np.int64)
    k = np.asarray(slopes, dtype=np.int64)
    b = np.asarray(icpts, dtype=np.int64)
    _check_shapes(bp, k, b)
    _check_acc_width(dp, e)
    i = np.searchsorted(bp, q, side="right")  # == #{j : q >= S_j} for sorted S
    return (k[i] * q << np.int64(dp.slope_shift(e))) + (b[i] << np.int64(dp.icpt_shift(e)))


def pwl_output(acc, e: int, dp: PWLDatapath, counter: SaturationCounter | None = None,
               name: str = "pwl.out") -> np.ndarray:
    """The unit's output code: ``A`` itself at full precision, else rounded and saturated."""
    if dp.out_bits is None:
        return np.asarray(acc, dtype=np.int64)
    shift = dp.acc_frac(e) - dp.out_frac
    acc = np.asarray(acc, dtype=np.int64)
    if shift < 0:
        if -shift > 61:
            raise GQAError("out_frac", f"{dp.out_frac} is {-shift} bits finer than the accumulator at e={e}",
                           "the simulator shifts left by at most 61 bits")
        # values beyond the output range saturate anyway: clip first so the left shift cannot overflow
        lim = ((1 << (dp.out_bits - 1)) >> -shift) + 1
        acc = np.clip(acc, -lim, lim)
    y = round_shift(acc, shift, dp.out_rounding)
    return saturate(y, dp.out_format, counter, name)


def output_frac(e: int, dp: PWLDatapath) -> int:
    """Fractional bits of :func:`pwl_output`'s codes at scale ``e``."""
    return dp.acc_frac(e) if dp.out_bits is None else dp.out_frac


@numba.njit(cache=True, nogil=True)
def _population_kernel(q, bounds, bp, k, b, s_k, s_b, ascending, out):
    """Mirrors the segment primitive: ``i = #{j : x >= bp[p, s, j]}`` over segment starts
    (:meth:`PWLDatapath.segment_starts`), then the accumulator of :func:`pwl_accumulate`."""
    pop, n_scales, nb = bp.shape
    for p in range(pop):
        for s in range(n_scales):
            i = 0
            for t in range(bounds[s], bounds[s + 1]):
                x = q[t]
                if ascending:
                    # codes ascend within a scale: the segment index only moves forward
                    while i < nb and x >= bp[p, s, i]:
                        i += 1
                else:
                    i = 0
                    for j in range(nb):
                        if x >= bp[p, s, j]:
                            i += 1
                out[p, t] = ((k[p, i] * x) << s_k[s]) + (b[p, i] << s_b[s])


class ScaleBatch:
    """Input codes of several scales, validated once and evaluated for many populations.

    ``codes[bounds[s]:bounds[s+1]]`` are the codes evaluated at scale ``scales[s]``. The
    search calls :meth:`accumulate` once per generation, so everything that does not depend on
    the tables (shifts, widths, ordering) is settled here.
    """

    def __init__(self, codes, bounds, scales, dp: PWLDatapath):
        self.codes = np.ascontiguousarray(codes, dtype=np.int64)
        self.bounds = np.ascontiguousarray(bounds, dtype=np.int64)
        self.scales = tuple(int(e) for e in scales)
        self.dp = dp
        if self.bounds.shape != (len(self.scales) + 1,) or self.bounds[0] != 0 or \
                self.bounds[-1] != self.codes.shape[0] or np.any(np.diff(self.bounds) < 0):
            raise GQAError("bounds", f"must split {self.codes.shape[0]} codes into {len(self.scales)} scales")
        if np.any(self.codes < dp.code_min) or np.any(self.codes > dp.code_max):
            raise GQAError("codes", f"leave the s{dp.in_bits} range [{dp.code_min}, {dp.code_max}]")
        for e in self.scales:
            _check_acc_width(dp, e)
        self.s_k = np.array([dp.slope_shift(e) for e in self.scales], dtype=np.int64)
        self.s_b = np.array([dp.icpt_shift(e) for e in self.scales], dtype=np.int64)
        self.ascending = all(np.all(np.diff(self.codes[a:z]) >= 0) for a, z in zip(self.bounds[:-1], self.bounds[1:]))

    def accumulate(self, starts, slopes, icpts) -> np.ndarray:
        """``(pop, S, N-1)`` segment starts, ``(pop, N)`` codes -> ``(pop, n)`` accumulators.

        Each element is what :func:`pwl_accumulate` computes for that table, scale and code.
        Segment starts must be non-decreasing along each table (checked).
        """
        bp = np.ascontiguousarray(starts, dtype=np.int64)
        k = np.ascontiguousarray(slopes, dtype=np.int64)
        b = np.ascontiguousarray(icpts, dtype=np.int64)
        if bp.ndim != 3 or bp.shape[1] != len(self.scales):
            raise GQAError("breakpoints", f"expected (pop, {len(self.scales)}, N-1) codes, got {bp.shape}")
        _check_shapes(bp[:, 0], k, b)
        if bp.shape[2] > 1 and np.any(bp[:, :, 1:] < bp[:, :, :-1]):
            raise GQAError("breakpoints", "segment starts must be non-decreasing in every table")
        out = np.empty((bp.shape[0], self.codes.shape[0]), dtype=np.int64)
        _population_kernel(self.codes, self.bounds, bp, k, b, self.s_k, self.s_b, self.ascending, out)
        return out


def pwl_accumulate_population(codes, e: int, starts, slopes, icpts, dp: PWLDatapath) -> np.ndarray:
    """Accumulators of ``pop`` tables at once: ``(pop, N-1)`` starts, ``(pop, N)`` -> ``(pop, n)``.

    Row ``r`` equals ``pwl_accumulate(codes, e, starts[r], slopes[r], icpts[r], dp)``.
    """
    bp = np.asarray(starts)
    if bp.ndim != 2:
        raise GQAError("breakpoints", f"a population is 2-D (pop, N-1), got shape {bp.shape}")
    q = np.asarray(codes)
    return ScaleBatch(q, [0, q.shape[0]], [e], dp).accumulate(bp[:, None, :], slopes, icpts)


# --- scalar unit for the simulator's fused kernels -----------------------------------------

ROUNDING_IDS = {"half_even": 0, "half_up": 1, "half_away": 2, "floor": 3}


@numba.njit(cache=True, inline="always")
def round_shift1(x, s, mode):
    """Mirrors :func:`intsim.fixedpoint.round_shift` for one integer in numba (``mode`` an index
    into ROUNDING_IDS; shifts ``s <= 62``); tested equal to it over tie-heavy inputs."""
    if s <= 0:
        return x << -s
    q = x >> s
    if mode == 3:
        return q
    half = 1 << (s - 1)
    rem = x & ((1 << s) - 1)
    if mode == 1:
        return q + (1 if rem >= half else 0)
    if mode == 2:
        return q + (1 if rem > half or (rem == half and x >= 0) else 0)
    return q + (1 if rem > half or (rem == half and (q & 1) == 1) else 0)


@numba.njit(cache=True, inline="always")
def pwl1(q, u):
    """One evaluation of the unit packed by :func:`unit_constants` (its output code).

    Mirrors the segment primitive: ``i = #{j : q >= S_j}`` over the packed segment starts."""
    bp, k, b, p = u
    i = 0
    for j in range(bp.shape[0]):
        if q >= bp[j]:
            i += 1
    a = ((k[i] * q) << p[0]) + (b[i] << p[1])
    if p[2] == 0:
        return a
    y = round_shift1(a, p[3], p[4])
    return min(max(y, p[5]), p[6])


def unit_constants(table, e: int) -> tuple:
    """The table at scale ``e`` as numba-friendly constants ``(S, K, B, params)``, ``S`` the
    segment starts (:meth:`intsim.PWLTable.segment_starts`).

    ``params = (slope_shift, icpt_shift, has_out, out_shift, rounding_id, out_min, out_max)``;
    with ``has_out == 0`` the output is the accumulator itself.
    """
    dp = table.datapath
    _check_acc_width(dp, e)
    has_out = dp.out_bits is not None
    params = np.array([dp.slope_shift(e), dp.icpt_shift(e), int(has_out),
                       dp.acc_frac(e) - dp.out_frac if has_out else 0, ROUNDING_IDS[dp.out_rounding],
                       dp.out_format.min_int if has_out else 0, dp.out_format.max_int if has_out else 0], np.int64)
    if has_out and not 0 <= params[3] <= 62:
        raise GQAError("out_frac", f"needs an output shift of {params[3]} bits at e={e}",
                       "the fused kernels shift the output right by 0..62 bits")
    return (np.ascontiguousarray(table.segment_starts(e), np.int64), np.asarray(table.slopes, np.int64),
            np.asarray(table.intercepts, np.int64), params)


@parallel_njit
def _pwl_map(q, u, out):
    flat_q = q.ravel()
    flat_o = out.ravel()
    for t in numba.prange(flat_q.shape[0]):
        flat_o[t] = pwl1(np.int64(flat_q[t]), u)


@numba.njit(cache=True)
def unit_lut(u, code_min, code_max):
    """The unit's output for every input code ``code_min..code_max`` (index ``q - code_min``).

    The unit is a pure function of its input code, so for narrow inputs the simulator evaluates
    it once per code and gathers: bit-identical to evaluating every element, and far faster.
    """
    lut = np.empty(code_max - code_min + 1, np.int64)
    for q in range(code_min, code_max + 1):
        lut[q - code_min] = pwl1(np.int64(q), u)
    return lut


@parallel_njit
def _gather(q, lut, offset, out):
    flat_q = q.ravel()
    flat_o = out.ravel()
    for t in numba.prange(flat_q.shape[0]):
        flat_o[t] = lut[np.int64(flat_q[t]) - offset]


LUT_MAX_BITS = 16


def pwl_map(codes, table, e: int, out_dtype=np.int32) -> np.ndarray:
    """The table's output codes for an array of input codes (any shape), one fused pass."""
    q = np.ascontiguousarray(codes)
    if q.dtype.kind not in "iu":
        raise GQAError("codes", f"input codes must be integers, got {q.dtype}", "quantize inputs first")
    dp = table.datapath
    need = dp.acc_bits(e) if dp.out_bits is None else dp.out_bits
    if need > np.iinfo(out_dtype).bits:
        raise GQAError("out_dtype", f"{np.dtype(out_dtype)} cannot hold the unit's {need}-bit output at e={e}",
                       "use int64, or a datapath with out_bits")
    out = np.empty(q.shape, out_dtype)
    u = unit_constants(table, e)
    if dp.in_bits <= LUT_MAX_BITS:
        if q.size and (q.min() < dp.code_min or q.max() > dp.code_max):
            raise GQAError("codes", f"leave the s{dp.in_bits} range [{dp.code_min}, {dp.code_max}]")
        _gather(q, unit_lut(u, dp.code_min, dp.code_max), dp.code_min, out)
    else:
        _pwl_map(q, u, out)
    return out
