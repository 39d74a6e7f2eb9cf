"""Slow, obviously-correct references for intsim's integer arithmetic.

Everything here is plain Python integers and :class:`fractions.Fraction` -- no numpy
arithmetic -- written from the specifications (DESIGN.md "Canonical PWL semantics" and the
module docstring of :mod:`intsim.fixedpoint`), not from intsim's code. Tests convert
intsim's numpy results with ``int()`` and compare element by element.

The second half holds hypothesis strategies that build random datapaths and tables (kept
here rather than in a conftest so that every test module imports them explicitly).
"""

from __future__ import annotations

from fractions import Fraction

from hypothesis import strategies as st

MODES = ("half_even", "half_up", "half_away", "floor")
SEGMENT_RULES = ("ge", "gt")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

HALF = Fraction(1, 2)


# --- rounding -------------------------------------------------------------------------------

def round_fraction(v, mode: str) -> int:
    """Round an exact rational (int, float or Fraction) to an integer by ``mode``."""
    v = Fraction(v)
    fl = v.numerator // v.denominator          # floor, exact
    rem = v - fl                               # in [0, 1)
    if mode == "floor":
        return fl
    if mode not in MODES:
        raise ValueError(mode)
    if rem < HALF:
        return fl
    if rem > HALF:
        return fl + 1
    # an exact tie: v = fl + 1/2
    if mode == "half_up":
        return fl + 1
    if mode == "half_away":
        return fl + 1 if v > 0 else fl
    return fl if fl % 2 == 0 else fl + 1      # half_even


def round_shift(x: int, shift: int, mode: str) -> int:
    """``x / 2**shift`` rounded by ``mode`` (``shift <= 0``: exact left shift), via divmod."""
    x = int(x)
    if shift <= 0:
        return x * 2 ** (-shift)
    d = 2**shift
    q, r = divmod(x, d)                        # q = floor(x / d), 0 <= r < d
    if mode == "floor":
        return q
    twice = 2 * r
    if twice < d:
        return q
    if twice > d:
        return q + 1
    if mode == "half_up":
        return q + 1
    if mode == "half_away":
        return q + 1 if x > 0 else q
    if mode == "half_even":
        return q + (q % 2)
    raise ValueError(mode)


def fmt_range(bits: int, signed: bool = True) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def saturate(x: int, bits: int, signed: bool = True) -> tuple[int, bool]:
    """``(clipped value, whether it was clipped)``."""
    lo, hi = fmt_range(bits, signed)
    x = int(x)
    if x < lo:
        return lo, True
    if x > hi:
        return hi, True
    return x, False


def _add_residual_saturate(y: int, residual_rows, r: int, c: int, bits: int) -> tuple[int, bool]:
    """``y`` plus the residual's ``[r][c]`` (if any), saturated to ``s{bits}``."""
    if residual_rows is not None:
        y += int(residual_rows[r][c])
    return saturate(y, bits)


# --- gemmlowp dyadic requantization -------------------------------------------------------


def srdhm(a: int, b: int) -> int:
    """SaturatingRoundingDoublingHighMul on int32 values."""
    a, b = int(a), int(b)
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    s = ab + nudge
    q = abs(s) // 2**31                        # C division truncates toward zero
    return q if s >= 0 else -q


def rdbpot(x: int, n: int) -> int:
    """RoundingDivideByPOT, literally: ``(x >> n) + (r > t)``."""
    x = int(x)
    mask = 2**n - 1
    r = x & mask                               # Python's & is two's complement on negatives
    t = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> n) + (1 if r > t else 0)


def rdbpot_exact(x: int, n: int) -> int:
    """The same value by its meaning: ``x / 2**n`` rounded half away from zero."""
    return round_fraction(Fraction(int(x), 2**n), "half_away")


def requantize(acc: int, m0: int, shift: int, out_bits: int | None = None) -> tuple[int, int]:
    """``(value, number of saturations)`` of gemmlowp requantization of one int32 ``acc``."""
    sats = 0
    acc = int(acc)
    if shift < 0:
        acc, hit = saturate(acc * 2 ** (-shift), 32)
        sats += hit
        shift = 0
    y = rdbpot(srdhm(acc, m0), shift)
    if out_bits is not None:
        y, hit = saturate(y, out_bits)
        sats += hit
    return y, sats


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``(M0, n)``: ``m = frac * 2**-n`` with ``frac in [1/2, 1)``, ``M0 = round_half_away(frac * 2**31)``."""
    v = Fraction(m)
    assert 0 < v < 1
    n = 0
    while v * 2**n < HALF:
        n += 1
    m0 = round_fraction(v * 2**n * 2**31, "half_away")
    if m0 == 2**31:
        m0 //= 2
        n -= 1
    return m0, n


def dyadic_value(m0: int, n: int) -> Fraction:
    """The real ``M0 * 2**-31 * 2**-n``."""
    return Fraction(m0) / Fraction(2) ** (31 + n)


# --- the PWL unit -------------------------------------------------------------------------
# ``dp`` is anything with the datapath's fields as attributes (an intsim.PWLDatapath or a
# SimpleNamespace); only the fields are read, never intsim's methods.

def code_range(in_bits: int) -> tuple[int, int]:
    return -(2 ** (in_bits - 1)), 2 ** (in_bits - 1) - 1


def segment_rule(dp) -> str:
    """The datapath's comparator convention ("ge" when it names none)."""
    return getattr(dp, "segment_rule", "ge")


def breakpoint_codes(breakpoints, e: int, in_bits: int, rule: str = "ge") -> list[int]:
    """``P_j(e) = round_half_even(p_j * 2**e)`` (Python's round on a Fraction), clamped to
    ``[qmin, qmax + 1]`` ("ge") or ``[qmin - 1, qmax]`` ("gt"): beyond those ends no code
    changes segment."""
    lo, hi = code_range(in_bits)
    if rule == "gt":
        lo, hi = lo - 1, hi - 1
    elif rule != "ge":
        raise ValueError(rule)
    out = []
    for p in breakpoints:
        c = round(Fraction(p) * Fraction(2) ** e)
        out.append(min(max(c, lo), hi + 1))
    return out


def segment(q: int, bp_codes, rule: str = "ge") -> int:
    """``i(q) = #{j : q >= P_j}`` ("ge") or ``#{j : q > P_j}`` ("gt")."""
    n = 0
    for c in bp_codes:
        if (q >= c) if rule == "ge" else (q > c):
            n += 1
    return n


def acc_frac(e: int, dp) -> int:
    return max(e + dp.slope_frac, dp.icpt_frac)


def accumulate(q: int, e: int, bp_codes, slopes, icpts, dp) -> int:
    """``A = K_i*q*2**(F-e-slope_frac) + B_i*2**(F-icpt_frac)``, ``F = max(e+slope_frac, icpt_frac)``."""
    F = acc_frac(e, dp)
    i = segment(q, bp_codes, segment_rule(dp))
    return int(slopes[i]) * q * 2 ** (F - e - dp.slope_frac) + int(icpts[i]) * 2 ** (F - dp.icpt_frac)


def output(acc: int, e: int, dp) -> tuple[int, bool]:
    """The unit's output code and whether it saturated (full precision: ``A`` itself)."""
    if dp.out_bits is None:
        return acc, False
    y = round_shift(acc, acc_frac(e, dp) - dp.out_frac, dp.out_rounding)
    return saturate(y, dp.out_bits)


def output_frac(e: int, dp) -> int:
    return acc_frac(e, dp) if dp.out_bits is None else dp.out_frac


def output_real(code: int, e: int, dp) -> Fraction:
    return Fraction(code) / Fraction(2) ** output_frac(e, dp)


def unit(codes, e: int, breakpoints, slopes, icpts, dp, bp_codes=None):
    """Everything for a list of codes: ``(P, accumulators, outputs, saturation count)``."""
    P = list(bp_codes) if bp_codes is not None else breakpoint_codes(breakpoints, e, dp.in_bits, segment_rule(dp))
    accs, outs, sats = [], [], 0
    for q in codes:
        a = accumulate(int(q), e, P, slopes, icpts, dp)
        y, hit = output(a, e, dp)
        accs.append(a)
        outs.append(y)
        sats += hit
    return P, accs, outs, sats


def domain_codes(domain, e: int, in_bits: int) -> list[int]:
    """Codes ``q`` of the input range with ``lo <= q * 2**-e <= hi`` (exact)."""
    lo, hi = Fraction(domain[0]), Fraction(domain[1])
    qmin, qmax = code_range(in_bits)
    s = Fraction(2) ** e
    return [q for q in range(qmin, qmax + 1) if lo <= q / s <= hi]


# --- self-checks of the reference (cheap; run by test_fixedpoint) ---------------------------

def self_check() -> None:
    assert [round_fraction(Fraction(v, 2), "half_even") for v in (-5, -3, -1, 1, 3, 5)] == [-2, -2, 0, 0, 2, 2]
    assert [round_fraction(Fraction(v, 2), "half_up") for v in (-5, -3, -1, 1, 3, 5)] == [-2, -1, 0, 1, 2, 3]
    assert [round_fraction(Fraction(v, 2), "half_away") for v in (-5, -3, -1, 1, 3, 5)] == [-3, -2, -1, 1, 2, 3]
    assert [round_fraction(Fraction(v, 2), "floor") for v in (-5, -3, -1, 1, 3, 5)] == [-3, -2, -1, 0, 1, 2]
    for mode in MODES:
        for x in range(-70, 71):
            for s in range(-3, 7):
                assert round_shift(x, s, mode) == round_fraction(Fraction(x) / Fraction(2) ** s, mode)
    for x in range(-300, 301):
        for n in range(0, 9):
            assert rdbpot(x, n) == rdbpot_exact(x, n)
    assert srdhm(INT32_MIN, INT32_MIN) == INT32_MAX
    assert srdhm(2**30, 2**30) == 2**29
    assert srdhm(-(2**30), 2**30) == -(2**29)
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(0.75) == (3 * 2**29, 0)
    assert saturate(200, 8) == (127, True) and saturate(-129, 8) == (-128, True) and saturate(5, 8) == (5, False)
    assert saturate(-1, 8, signed=False) == (0, True) and saturate(256, 8, signed=False) == (255, True)
    assert breakpoint_codes([Fraction(1, 2), Fraction(3, 2), 1000, -1000], 0, 8) == [0, 2, 128, -128]
    assert breakpoint_codes([Fraction(1, 2), Fraction(3, 2), 1000, -1000], 0, 8, "gt") == [0, 2, 127, -129]
    assert [segment(q, [0, 2]) for q in (-1, 0, 1, 2, 3)] == [0, 1, 1, 2, 2]
    assert [segment(q, [0, 2], "gt") for q in (-1, 0, 1, 2, 3)] == [0, 0, 1, 1, 2]


# --- hypothesis strategies ------------------------------------------------------------------

SCALE_MIN, SCALE_MAX = -2, 10


@st.composite
def datapath_fields(draw, out=None, in_bits=None, rule=None):
    """Keyword arguments of a random PWLDatapath in the tested ranges.

    ``out``: True forces a rounded output, False full precision, None either. ``rule``: a
    segment rule, True to draw one, None to leave the default ("ge", no key).
    """
    kw = dict(
        in_bits=draw(st.integers(2, 12)) if in_bits is None else in_bits,
        slope_bits=draw(st.integers(2, 12)),
        slope_frac=draw(st.integers(0, 10)),
        icpt_bits=draw(st.integers(2, 12)),
        icpt_frac=draw(st.integers(0, 10)),
    )
    if rule is not None:
        kw["segment_rule"] = draw(st.sampled_from(SEGMENT_RULES)) if rule is True else rule
    rounded = draw(st.booleans()) if out is None else out
    if rounded:
        kw.update(out_bits=draw(st.integers(2, 24)), out_frac=draw(st.integers(-4, 20)),
                  out_rounding=draw(st.sampled_from(MODES)))
    return kw


@st.composite
def dyadic_reals(draw, in_bits: int):
    """Dyadic reals ``±m * 2**t`` from far below one code step at e=10 to beyond the code range
    at e=-2 (so some breakpoints clamp), exact as floats; many produce rounding ties."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return Fraction(0)
    sign = draw(st.sampled_from((-1, 1)))
    if kind == 1:  # far outside the code range at every tested scale
        return sign * Fraction(2) ** draw(st.integers(in_bits + 3, in_bits + 20))
    m = draw(st.integers(1, 255))
    t = draw(st.integers(-14, in_bits + 3))
    return sign * m * Fraction(2) ** t


@st.composite
def table_parts(draw, dp_kw: dict, entries=None):
    """``(breakpoints as sorted Fractions, slope codes, intercept codes)`` for ``dp_kw``."""
    n = draw(st.integers(2, min(20, 2 ** dp_kw["in_bits"]))) if entries is None else entries
    bps = sorted(draw(st.lists(dyadic_reals(dp_kw["in_bits"]), min_size=n - 1, max_size=n - 1)))
    klo, khi = fmt_range(dp_kw["slope_bits"])
    blo, bhi = fmt_range(dp_kw["icpt_bits"])
    slopes = draw(st.lists(st.integers(klo, khi), min_size=n, max_size=n))
    icpts = draw(st.lists(st.integers(blo, bhi), min_size=n, max_size=n))
    return bps, slopes, icpts


@st.composite
def comparator_codes(draw, in_bits: int, count: int, rule: str = "ge"):
    """Explicit non-decreasing comparator constants in ``[qmin, qmax + 1]`` ("ge") or
    ``[qmin - 1, qmax]`` ("gt")."""
    lo, hi = code_range(in_bits)
    d = 1 if rule == "gt" else 0
    return sorted(draw(st.lists(st.integers(lo - d, hi + 1 - d), min_size=count, max_size=count)))


@st.composite
def input_codes(draw, in_bits: int, bp_codes=(), max_size: int = 48):
    """Random codes plus every code next to a comparator constant and both range ends."""
    lo, hi = code_range(in_bits)
    codes = draw(st.lists(st.integers(lo, hi), max_size=max_size))
    extra = {lo, hi, 0}
    for c in bp_codes:
        extra.update(v for v in (c - 1, c, c + 1) if lo <= v <= hi)
    return codes + sorted(extra)


# --- integer transformer kernels (intsim.gemm, softmax, layernorm, rangereduce) -------------
# Written from the module docstrings' specifications; tables are read through their fields only
# (``breakpoints``, ``slopes``, ``intercepts``, ``explicit_codes``, ``datapath``, ``scales``,
# ``domain``), never through intsim's arithmetic.

def matmul(a, b, n: int | None = None) -> list[list[int]]:
    """``C[m][n] = sum_k a[m][k] * b[k][n]`` over Python integers (nested lists); ``n`` columns
    (needed only when ``K == 0``, where ``b`` has no row to count them)."""
    K = len(b)
    N = n if n is not None else len(b[0])
    assert all(len(row) == K for row in a)
    return [[sum(int(row[k]) * int(b[k][n]) for k in range(K)) for n in range(N)] for row in a]


def msb(x: int) -> int:
    """``floor(log2 x)`` for ``x > 0`` by repeated halving; -1 for 0."""
    x = int(x)
    n = -1
    while x > 0:
        x //= 2
        n += 1
    return n


def isqrt_newton(n: int) -> tuple[int, int]:
    """I-BERT's integer Newton square root, literally: ``(floor(sqrt n), iterations)``."""
    n = int(n)
    if n == 0:
        return 0, 0
    x = 2 ** (msb(n) // 2 + 1)
    it = 0
    while True:
        it += 1
        y = (x + n // x) // 2
        if y >= x:
            return x, it
        x = y


def table_output(q: int, e: int, table) -> int:
    """The PWL unit's output code of ``table`` at scale ``e`` for one input code."""
    dp = table.datapath
    if table.explicit_codes is not None:
        P = [int(c) for c in table.explicit_codes[e]]
    else:
        P = breakpoint_codes([Fraction(float(p)) for p in table.breakpoints], e, dp.in_bits, segment_rule(dp))
    a = accumulate(int(q), e, P, [int(k) for k in table.slopes], [int(b) for b in table.intercepts], dp)
    return output(a, e, dp)[0]


def requantize_channels(acc_rows, bias, m0s, shifts, out_bits: int, residual_rows=None, row_shifts=None):
    """Per-column requantization, per element (intsim.fixedpoint.requantize_channels' docstring):

    row ``r`` with row shift ``t`` (default 0) uses ``b = RDBPOT(bias_c, t)`` and ``n = n_c - t``;
    ``a = acc + b`` (outside int32: one overflow, saturated); ``y = RDBPOT(SRDHM(a, M0_c), n)``
    (negative ``n``: a left shift first, int32-saturated, a clipped value counted as one more
    overflow) ``+ residual``; ``y`` saturated to s{out_bits} (counted).
    Returns ``(rows of y, saturated, overflowed, peak |acc + b|)``.
    """
    out, sat, ovf, peak = [], 0, 0, 0
    for r, row in enumerate(acc_rows):
        t = 0 if row_shifts is None else int(row_shifts[r])
        orow = []
        for c, v in enumerate(row):
            b = int(bias[c]) if t <= 0 else rdbpot(int(bias[c]), t)
            a = int(v) + b
            peak = max(peak, abs(a))
            a, hit = saturate(a, 32)
            ovf += hit
            n = int(shifts[c]) - t
            y, hit = requantize(a, int(m0s[c]), n)
            ovf += hit
            y, hit = _add_residual_saturate(y, residual_rows, r, c, out_bits)
            sat += hit
            orow.append(y)
        out.append(orow)
    return out, sat, ovf, peak


def requantize_dynamic(acc_rows, m0s, shifts, bits: int):
    """Per-row dynamic power-of-two scaling (intsim.fixedpoint.requantize_dynamic's docstring):
    ``v = RDBPOT(SRDHM(acc, M0_c), n_c)``; ``t`` the smallest ``t >= 0`` with
    ``floor(max|v| / 2**t) <= 2**(bits-1) - 1``; ``y = saturate(RDBPOT(v, t), s{bits})``.
    Returns ``(rows of y, list of t)``."""
    hi = 2 ** (bits - 1) - 1
    ys, ts = [], []
    for row in acc_rows:
        v = [requantize(int(a), int(m0s[c]), int(shifts[c]))[0] for c, a in enumerate(row)]
        mx = max((abs(x) for x in v), default=0)
        t = 0
        while mx // 2**t > hi:
            t += 1
        ys.append([saturate(rdbpot(x, t), bits)[0] for x in v])
        ts.append(t)
    return ys, ts


ROW_GUARD, ROW_K_MIN, ROW_K_MAX, ROW_FRAC = 8, -8, 23, 8


def row_pick(peak: int, hi: int, m: int) -> tuple[int, int]:
    """The smallest ``g = mu * 2**(k - m)`` (``mu`` in [2**m, 2**(m+1)), ``k`` in [-8, 23]) with
    ``g * hi * 2**G >= peak``, by enumeration in exact fractions; none: the largest ``g``."""
    for k in range(ROW_K_MIN, ROW_K_MAX + 1):
        for mu in range(2**m, 2 ** (m + 1)):
            if Fraction(mu * hi) * Fraction(2) ** (k - m + ROW_GUARD) >= peak:
                return mu, k
    return 2 ** (m + 1) - 1, ROW_K_MAX


def requantize_rows(acc_rows, m0s, shifts, bits: int, m: int):
    """Per-row mantissa scaling (intsim.fixedpoint.requantize_rows' docstring): the row's peak
    ``P = max |requantize(a, M0_c, n_c - G)|`` (a saturated to int32 first), ``(mu, k)`` by
    :func:`row_pick`, ``R = round_half_up(2**(30+m) / mu)``, ``n_r = n_c + k - 1``,
    ``p = max(8 - n_r, 0)``, ``y = saturate(requantize(sat32(a 2**p), SRDHM(M0_c, R), n_r + p), s{bits})``. Returns ``(rows of y, mantissas, exponents, saturations)``."""
    hi = 2 ** (bits - 1) - 1
    ys, mus, ks, sats = [], [], [], 0
    for row in acc_rows:
        a = [saturate(int(v), 32)[0] for v in row]
        peak = max((abs(requantize(x, int(m0s[c]), int(shifts[c]) - ROW_GUARD)[0]) for c, x in enumerate(a)), default=0)
        mu, k = row_pick(peak, hi, m)
        r = round_fraction(Fraction(2 ** (30 + m), mu), "half_up")
        out = []
        for c, x in enumerate(a):
            nr = int(shifts[c]) + k - 1
            pre = max(ROW_FRAC - nr, 0)
            x = saturate(x * 2**pre, 32)[0]
            y, _ = requantize(x, srdhm(int(m0s[c]), r), nr + pre)
            y, hit = saturate(y, bits)
            sats += hit
            out.append(y)
        ys.append(out)
        mus.append(mu)
        ks.append(k)
    return ys, mus, ks, sats


def requantize_channels_rows(acc_rows, bias, m0s, shifts, out_bits: int, mus, ks, m: int, residual_rows=None):
    """Per-column requantization with per-row scales ``mu * 2**(k - m)``
    (intsim.fixedpoint.requantize_channels' docstring): ``x = SRDHM(sat32(acc), M0_c)``,
    ``Bq = SRDHM(bias_c, M0_c)``, ``s = m - k``, ``z = x mu + (Bq 2**s or RDBPOT(Bq, -s))``,
    ``y = RDBPOT(z, n_c + s)`` (negative: ``sat32(sat32(z) * 2**-(n_c+s))``, each clip one overflow)
    ``+ residual``, saturated. Returns ``(rows of y, saturated, overflowed, peak |acc|)``."""
    out, sat, ovf, peak = [], 0, 0, 0
    for r, row in enumerate(acc_rows):
        mu, s = int(mus[r]), m - int(ks[r])
        orow = []
        for c, v in enumerate(row):
            peak = max(peak, abs(int(v)))
            a, hit = saturate(int(v), 32)
            ovf += hit
            bq = srdhm(int(bias[c]), int(m0s[c]))
            z = srdhm(a, int(m0s[c])) * mu + (bq * 2**s if s >= 0 else rdbpot(bq, -s))
            e = int(shifts[c]) + s
            if e >= 0:
                y = rdbpot(z, e)
            else:
                zc, hit1 = saturate(z, 32)
                y, hit2 = saturate(zc * 2 ** (-e), 32)
                ovf += hit1 or hit2
            y, hit = _add_residual_saturate(y, residual_rows, r, c, out_bits)
            sat += hit
            orow.append(y)
        out.append(orow)
    return out, sat, ovf, peak


def mantissa_scale(table, kind: str):
    """``e_r``: the largest table scale whose codes hold the whole mantissa range ``[1, hi)``
    (``hi * 2**e - 1 <= code_max``), None if there is none."""
    hi = {"reciprocal": 2, "rsqrt": 4}[kind]
    qmax = code_range(table.datapath.in_bits)[1]
    fits = [e for e in table.scales if Fraction(hi) * Fraction(2) ** e - 1 <= qmax]
    return max(fits) if fits else None


def reciprocal(s: int, table, e_r: int) -> tuple[int, int]:
    """``(R, shift)``: ``k = msb(s)``, ``M = floor(s * 2**(e_r - k))``, ``R = PWL(M)``,
    ``shift = F_r + k`` with ``F_r`` the table's output fractional bits at ``e_r``."""
    s = int(s)
    assert s > 0
    k = msb(s)
    v = Fraction(s) * Fraction(2) ** (e_r - k)
    M = v.numerator // v.denominator
    return table_output(M, e_r, table), output_frac(e_r, table.datapath) + k


def rsqrt(s: int, table, e_r: int) -> tuple[int, int]:
    """``(R, shift)``: ``j = floor(msb(s) / 2)``, ``M = floor(s * 2**(e_r - 2j))``, ``R = PWL(M)``,
    ``shift = F_r + j``."""
    s = int(s)
    assert s > 0
    j = msb(s) // 2
    v = Fraction(s) * Fraction(2) ** (e_r - 2 * j)
    M = v.numerator // v.denominator
    return table_output(M, e_r, table), output_frac(e_r, table.datapath) + j


def visible_keys(key_mask, i: int, q_len: int, causal: bool) -> list[bool]:
    """The mask policy of every softmax kernel for query ``i`` of ``q_len``: a key is visible iff
    its padding flag is set and, with a causal mask, it is not after the query (the queries are
    the last ``q_len`` of the keys)."""
    k_len = len(key_mask)
    return [bool(m) and (not causal or t <= i + k_len - q_len) for t, m in enumerate(key_mask)]


def softmax_row(scores, mask, m0: int, n: int, exp_out, q_min: int, recip=None, out_bits: int = 8):
    """One row of intsim.softmax's specification.

    ``exp_out(u)`` is the exp table's output code at its scale; ``recip(Z)`` gives ``(R, sh)``
    (``recip=None``: the integer divider); probabilities unsigned ``out_bits`` at ``2**-out_bits``.
    Returns ``(probabilities, exp-input saturations,
    probability saturations, Z)``.
    """
    keys = [int(a) for a, m in zip(scores, mask) if m]
    if not keys:
        return [0] * len(scores), 0, 0, 0
    mx = max(keys)
    E, low = [], 0
    for a, m in zip(scores, mask):
        if not m:
            E.append(0)
            continue
        d = max(int(a) - mx, INT32_MIN)
        u, _ = requantize(d, m0, n)
        if u < q_min:
            u, low = q_min, low + 1
        E.append(max(exp_out(u), 0))
    Z = sum(E)
    if Z == 0:
        return [0] * len(scores), low, 0, 0
    probs, sat = [], 0
    if recip is None:
        raw = [(v * 2**out_bits + Z // 2) // Z for v in E]
    else:
        R, sh = recip(Z)
        raw = [round_shift(v * R, sh - out_bits, "half_up") for v in E]
    for p in raw:
        p, hit = saturate(p, out_bits, signed=False)
        probs.append(p)
        sat += hit
    return probs, low, sat, Z


def layernorm_row(x, d_bits: int, z_frac: int, rsqrt_fn, outs, center: bool = True, eps: int = 0, row_scales=None):
    """One row of intsim.layernorm's specification (``center=False``: RMSNorm, ``d = x``; ``eps``:
    the integer epsilon ``E``, added to ``V`` as ``round_half_up(E / 2**(2r))``).

    ``rsqrt_fn(V)`` gives ``(R, sh)`` (None: Newton isqrt and a divider; ``"bitwise"``: DI-Norm's
    bit-wise isqrt and the same divider); ``outs`` is a list of
    ``(G, H, T, bits)``, ``(G, H, T, bits, dynamic)`` or ``(G, H, T, bits, True, m)``; a dynamic output's
    row uses shift ``T + t`` (``t`` per the spec) and the returned row is ``(values, t)``'s values; with
    a mantissa ``m`` the row scale ``mu * 2**(k - m)`` of the spec (:func:`norm_row_scale`), whose
    ``(mu, k)`` are appended to ``row_scales`` when given. Returns ``(list of output rows, |S|, V,
    saturations, Newton iterations)``.
    """
    x = [int(v) for v in x]
    C = len(x)
    S = sum(x) if center else 0
    d = [C * v - S for v in x] if center else list(x)
    r = max(0, msb(max(abs(v) for v in d)) + 2 - d_bits)
    d = [round_shift(v, r, "half_up") for v in d]
    V = sum(v * v for v in d) + round_shift(eps, 2 * r, "half_up")
    it = 0
    if V == 0:
        z = [0] * C
    elif rsqrt_fn is None or rsqrt_fn == "bitwise":
        s, it = isqrt_newton(V) if rsqrt_fn is None else isqrt_bitwise(V)
        assert s == isqrt_floor(V)
        # floor((d * 2**(Z+1) + s) / (2 s)) with Python's floor division
        z = [(v * 2 ** (z_frac + 1) + s) // (2 * s) for v in d]
    else:
        R, sh = rsqrt_fn(V)
        z = [round_shift(v * R, sh - z_frac, "half_up") for v in d]
    ys, sat = [], 0
    for spec in outs:
        G, H, T, bits = spec[:4]
        if len(spec) > 5 and spec[5] is not None:     # a mantissa row scale
            v = [z[c] * int(G[c]) + int(H[c]) for c in range(C)]
            row, hit, mu, k = norm_row_scale(v, T, bits, spec[5])
            sat += hit
            ys.append(row)
            if row_scales is not None:
                row_scales.append((mu, k))
            continue
        if len(spec) > 4 and spec[4]:   # dynamic (per-token): the smallest extra shift that fits
            vmax = max(abs(z[c] * int(G[c]) + int(H[c])) for c in range(C))
            t = T
            while t < 62 and (vmax >> t) > 2 ** (bits - 1) - 2:
                t += 1
            T = t
        row = []
        for c in range(C):
            y = round_shift(z[c] * int(G[c]) + int(H[c]), T, "half_away")
            y, hit = saturate(y, bits)
            sat += hit
            row.append(y)
        ys.append(row)
    return ys, abs(S), V, sat, it


def norm_row_scale(v, T: int, bits: int, m: int, k_max: int = 15):
    """intsim.layernorm's mantissa row (module docstring, step 4) on Python integers: ``v`` the row's
    ``z G + H`` at ``2**T`` per output code. ``P = round_half_away(max|v| / 2**(T - 8))``, ``(mu, k)``
    enumerated as :func:`row_pick` (``k`` in ``[-8, k_max]``), ``p = max(0, -k)``, ``w`` = ``v``
    rounded to ``2**-(8 + p)`` nominal codes (saturated to ``+-(2**32 - 1)``), ``y = saturate(round_half_away(w R / 2**(38 + p + k)))``
    with ``R = round_half_up(2**(30+m) / mu)``. Returns ``(row, saturations, mu, k)``."""
    hi = 2 ** (bits - 1) - 1
    peak = round_fraction(Fraction(max(abs(a) for a in v)) / Fraction(2) ** (T - ROW_GUARD), "half_away")
    mu, k = 2 ** (m + 1) - 1, k_max
    found = False
    for kk in range(ROW_K_MIN, k_max + 1):
        for mm in range(2**m, 2 ** (m + 1)):
            if Fraction(mm * hi) * Fraction(2) ** (kk - m + ROW_GUARD) >= peak:
                mu, k, found = mm, kk, True
                break
        if found:
            break
    r = round_fraction(Fraction(2 ** (30 + m), mu), "half_up")
    p = max(0, -k)
    row, sat = [], 0
    for a in v:
        w = round_fraction(Fraction(a) / Fraction(2) ** (T - ROW_GUARD - p), "half_away")
        w = max(-(2**32 - 1), min(2**32 - 1, w))
        y = round_fraction(Fraction(w * r, 2 ** (30 + ROW_GUARD + p + k)), "half_away")
        y, hit = saturate(y, bits)
        sat += hit
        row.append(y)
    return row, sat, mu, k


def isqrt_floor(n: int) -> int:
    """``floor(sqrt(n))`` by bisection on Python integers."""
    lo, hi = 0, 1
    while hi * hi <= n:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid * mid <= n:
            lo = mid
        else:
            hi = mid
    return lo


def ceil_log2(v: Fraction) -> int:
    """The smallest ``k`` with ``2**k >= v`` (``v > 0``), exactly."""
    k = v.numerator.bit_length() - v.denominator.bit_length()
    while Fraction(2) ** k < v:
        k += 1
    while Fraction(2) ** (k - 1) >= v:
        k -= 1
    return k


def layernorm_fold(gamma, beta, scale, g_bits: int, z_frac: int, sqrt_c: float):
    """LayerNorm's output folding (intsim.layernorm.LNOutput's docstring) in exact rationals:
    per channel ``g = gamma sqrt(C) / s * 2**-Z`` and ``b = beta / s``; ``T`` the largest shift in
    ``[0, 62 - Z]`` with ``max|g| 2**T <= 2**(g_bits-1) - 1``, then ``T <= 51 - ceil(log2 max|b|)``
    (and ``T >= 0``); ``G = round_half_even(g 2**T)``, ``H = round_half_even(b 2**T)``.
    ``sqrt_c`` is the float ``sqrt(C)`` (the one irrational factor). Returns ``(G, H, T, g)``."""
    g = [Fraction(float(a)) * Fraction(sqrt_c) / Fraction(float(s)) / Fraction(2) ** z_frac
         for a, s in zip(gamma, scale)]
    b = [Fraction(float(a)) / Fraction(float(s)) for a, s in zip(beta, scale)]
    peak = max(abs(v) for v in g)
    lim = 2 ** (g_bits - 1) - 1
    T = 62 - z_frac
    if peak > 0:
        while T > 0 and peak * Fraction(2) ** T > lim:
            T -= 1
    b_peak = max(abs(v) for v in b)
    if b_peak > 0:
        T = max(0, min(T, 51 - ceil_log2(b_peak)))
    G = [round(v * Fraction(2) ** T) for v in g]
    H = [round(v * Fraction(2) ** T) for v in b]
    return G, H, T, g


def rope_constant(p: int, i: int, head_dim: int, base: float, rope_bits: int) -> tuple[int, int]:
    """intsim.rope's step 1 for one position and pair: ``(c, s)`` codes of ``cos``/``sin`` of
    ``p * base**(-2i/d)`` with ``rope_bits - 1`` fractional bits, half-even, clipped symmetric."""
    import math
    a = float(p) * (base ** (-(2 * i) / head_dim))
    top = 2 ** (rope_bits - 1) - 1
    c = round_fraction(Fraction(math.cos(a)) * 2 ** (rope_bits - 1), "half_even")
    s = round_fraction(Fraction(math.sin(a)) * 2 ** (rope_bits - 1), "half_even")
    return max(-top, min(top, c)), max(-top, min(top, s))


def rope_vector(x, p: int, base: float, rope_bits: int, m0: int, n: int, out_bits: int):
    """intsim.rope's steps 2-3 for one head vector ``x`` (d codes) at position ``p``:
    ``y_{2i} = x_{2i} c - x_{2i+1} s``, ``y_{2i+1} = x_{2i} s + x_{2i+1} c``, then
    ``saturate(RDBPOT(SRDHM(y, M0), n))``. Returns ``(codes, saturations, peak |y|)``."""
    d = len(x)
    out, sat, peak = [], 0, 0
    for i in range(d // 2):
        c, s = rope_constant(p, i, d, base, rope_bits)
        a, b = int(x[2 * i]), int(x[2 * i + 1])
        for y in (a * c - b * s, a * s + b * c):
            peak = max(peak, abs(y))
            v, _ = requantize(y, m0, n)
            v, hit = saturate(v, out_bits)
            out.append(v)
            sat += hit
    return out, sat, peak


# --- I-LLM (intsim.illm's docstring) ----------------------------------------------------------

LOG2E_M, LOG2E_FRAC = 23637, 14


def di_exp(u: int, m: int, k: int, b: int = 16) -> int:
    """DI-Exp: ``2**-(q + f)`` of ``t = -u m L`` (n = k + 14 fraction bits) as ``(2**n - f/2) >> q``,
    rescaled to ``2**-b`` (floor); exact Python integers."""
    assert u <= 0
    n = k + LOG2E_FRAC
    t = -u * m * LOG2E_M
    assert t < 2**62
    q, f = divmod(t, 2**n)
    y = 2**n - f // 2
    sh = q + n - b
    return y >> sh if sh >= 0 else y << -sh     # y > 0: floor(y / 2**sh); no 2**sh built (q may be ~2**48)


def isqrt_bitwise(v: int) -> tuple[int, int]:
    """DI-Norm's bit-wise check, literally: ``(floor(sqrt v), steps)``."""
    if v <= 0:
        return 0, 0
    s, steps = 0, 0
    for j in range(msb(v) // 2, -1, -1):
        if (s + 2**j) ** 2 <= v:
            s += 2**j
        steps += 1
    return s, steps


def clipped_softmax_row(scores, mask, m_s: int, k_s: int, clip_codes: int, in_bits: int = 8, out_bits: int = 8):
    """One row of DI-ClippedSoftmax. Returns ``(probabilities, saturations, Z)``."""
    keys = [int(a) for a, v in zip(scores, mask) if v]
    if not keys:
        return [0] * len(scores), 0, 0
    mx, mn = max(keys), min(keys)
    R = max(1, min(mx - mn, clip_codes))
    Q = 2 ** (in_bits + 22) // R
    E = []
    for a, v in zip(scores, mask):
        if not v:
            E.append(0)
            continue
        d = max(int(a) - mx, INT32_MIN)
        u = max(-(2**in_bits), (d * Q) // 2**22)
        E.append(di_exp(u, m_s * R, k_s + in_bits))
    Z = sum(E)
    F = 2 ** (out_bits + 32) // Z
    probs, sat = [], 0
    for e in E:
        p = round_shift(e * F, 32, "half_up")
        p, hit = saturate(p, out_bits, signed=False)
        probs.append(p)
        sat += hit
    return probs, sat, Z


def di_silu(x: int, m_s: int, k_s: int, sig_bits: int = 15) -> int:
    """DI-SiLU of one code: ``x * round_half_up(num 2**K / den)`` with the DI-Exp of ``-|x|``."""
    x = int(x)
    e = di_exp(-abs(x), m_s, k_s)
    num, den = (2**16 if x >= 0 else e), 2**16 + e
    return x * round_fraction(Fraction(num * 2**sig_bits, den), "half_up")


def dyadic_scale(s: float) -> tuple[int, int]:
    """``(M, k)``: ``M 2**-k`` the half-even rounding of ``s`` to a mantissa in ``[2**15, 2**16)``."""
    v = Fraction(s)
    k = 0
    while v * 2**k >= 2**16:
        k -= 1
    while v * 2**k < 2**15:
        k += 1
    m = round(v * 2**k)
    if m == 2**16:
        m, k = m // 2, k - 1
    return m, k
