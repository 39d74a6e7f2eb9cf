"""Slow, obviously-correct reference of the native Q4_1 / Q8_0 linear layer (intsim.q4linear).

Plain Python integers and :class:`fractions.Fraction`, written from intsim.q4linear's module
docstring, not from its code: per row the exponent ``E`` from the denominators of the FP16 block
scales and minima, ``D = d 2**E`` and ``M = m 2**E`` as integers, per token and block the group
sum ``G = sum x q`` and block sum ``S = sum x``, ``A = sum_b D G + M S``, the row's static shift
``t`` (the smallest with ``RDBPOT(bound, t) <= 2**31 - 1``), ``A32 = RDBPOT(A, t)``, then the
shared requantizer's reference (:func:`reference_int.requantize_channels`).
"""

from __future__ import annotations

from fractions import Fraction

import reference_int as ref

BLOCK = 32
X_MAX = 128


def exponent(values) -> int:
    """The fewest fractional bits at which every value (a float of a power-of-two denominator) is an
    integer (negative when all are even integers); 0 when every value is zero."""
    bits = []
    for v in values:
        f = Fraction(float(v))
        assert f.denominator & (f.denominator - 1) == 0
        if f != 0:
            bits.append(f.denominator.bit_length() - 1 if f.denominator > 1 else -_twos(f.numerator))
    return max(bits) if bits else 0


def _twos(n: int) -> int:
    """The number of trailing zero bits of a non-zero integer."""
    n, k = abs(n), 0
    while n % 2 == 0:
        n //= 2
        k += 1
    return k


def integer_row(d_row, m_row) -> tuple[int, list[int], list[int]]:
    """``(E, D, M)`` of one row's block scales and minima."""
    e = exponent(list(d_row) + list(m_row))
    scale = Fraction(2) ** e
    d = [Fraction(float(v)) * scale for v in d_row]
    m = [Fraction(float(v)) * scale for v in m_row]
    assert all(v.denominator == 1 for v in d + m)
    return e, [int(v) for v in d], [int(v) for v in m]


def weight(codes_row, d_row, m_row) -> list[Fraction]:
    """The exact real weights ``d q + m`` of one row."""
    return [Fraction(float(d_row[k // BLOCK])) * int(q) + Fraction(float(m_row[k // BLOCK]))
            for k, q in enumerate(codes_row)]


def static_shift(bound: int) -> int:
    t = 0
    while ref.rdbpot(bound, t) > ref.INT32_MAX:
        t += 1
    return t


def accumulate(x_rows, codes, d, m):
    """``(A32 rows, t per column, E per column, A rows)`` of int8 rows ``x`` against the block weights."""
    cols = []
    for n, crow in enumerate(codes):
        e, dd, mm = integer_row(d[n], m[n])
        wint = [dd[k // BLOCK] * int(q) + mm[k // BLOCK] for k, q in enumerate(crow)]
        cols.append((e, dd, mm, static_shift(X_MAX * sum(abs(w) for w in wint))))
    a_rows, a32_rows = [], []
    for x in x_rows:
        x = [int(v) for v in x]
        nb = len(x) // BLOCK
        sums = [sum(x[BLOCK * b:BLOCK * (b + 1)]) for b in range(nb)]
        a_row = []
        for n, crow in enumerate(codes):
            _, dd, mm, _ = cols[n]
            a = 0
            for b in range(nb):
                g = sum(x[BLOCK * b + i] * int(crow[BLOCK * b + i]) for i in range(BLOCK))
                a += dd[b] * g + mm[b] * sums[b]
            a_row.append(a)
        a_rows.append(a_row)
        a32_rows.append([ref.rdbpot(a, cols[n][3]) for n, a in enumerate(a_row)])
    return a32_rows, [c[3] for c in cols], [c[0] for c in cols], a_rows
