"""Per-segment exponents: a coefficient format in which every segment picks its own fraction bits.

LUT-APP's "dynamic fixed-point format": segment ``i`` stores a slope code ``K_i`` (signed
``slope_bits``) with its own exponent ``s_i`` in ``[slope_fracs[0], slope_fracs[1]]`` and an
intercept code ``B_i`` (signed ``icpt_bits``) with its own ``t_i`` in ``icpt_fracs``; real
slope ``K_i * 2**-s_i``, intercept ``B_i * 2**-t_i``. The unit shifts each by its segment's
exponent into the accumulator of ``F(e) = max(e + s_max, t_max)`` fractional bits:

    A = (K_i * q) << (F - e - s_i)  +  B_i << (F - t_i)

which is, bit for bit, the canonical unit on the *wide* datapath
``s(slope_bits + s_max - s_min).s_max`` / ``s(icpt_bits + t_max - t_min).t_max`` with codes
``K_i << (s_max - s_i)`` and ``B_i << (t_max - t_i)``: ``(K << d) * q << (F - e - s_max)`` is
``K * q << (F - e - s_i)``. So a table in this format is a :class:`~intsim.PWLTable` on
:meth:`SegmentExponents.wide_datapath` whose codes are restricted to those shifted narrow
codes, and every error report, file and simulator path applies unchanged; the narrow codes
and exponents the hardware stores are recorded in the provenance (:func:`segment_codes`).

The exact search (:func:`gqa_lut.exact.exact_optimum` with ``formats``) scans the exponent
choices per segment: a segment's cost is the minimum over every ``(s, t)`` of its exact best
integer line on that grid. Exact for every metric and output the exact search takes: the
MSE (histogram weights included) and max |err|, at full precision or with ``out_bits``
rounding (each format row's codes are scanned with the bounds of :mod:`gqa_lut.exact`,
evaluated on the unit's own integer formula).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intsim import GQAError, PWLDatapath, PWLTable
from intsim.datapath import MAX_COEFF_BITS
from intsim.fixedpoint import QFormat


def _range(value, field: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise GQAError(field, f"must be two integers (lo, hi), got {value!r}") from None
    if lo > hi:
        raise GQAError(field, f"({lo}, {hi}) is empty", "give lo <= hi")
    return lo, hi


@dataclass(frozen=True)
class SegmentExponents:
    """Narrow coefficient widths and the exponent range each segment may choose from."""

    slope_bits: int = 8
    slope_fracs: tuple[int, int] = (4, 8)
    icpt_bits: int = 8
    icpt_fracs: tuple[int, int] = (4, 8)

    def __post_init__(self):
        object.__setattr__(self, "slope_fracs", _range(self.slope_fracs, "slope_fracs"))
        object.__setattr__(self, "icpt_fracs", _range(self.icpt_fracs, "icpt_fracs"))
        for name, bits, (lo, hi) in (("slope_bits", self.slope_bits, self.slope_fracs),
                                     ("icpt_bits", self.icpt_bits, self.icpt_fracs)):
            if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
                raise GQAError(name, f"must be a positive integer, got {bits!r}")
            if bits + hi - lo > MAX_COEFF_BITS:
                raise GQAError(name, f"{bits} bits over exponents {lo}..{hi} need a {bits + hi - lo}-bit wide code",
                               f"keep bits + (hi - lo) <= {MAX_COEFF_BITS}")

    def wide_datapath(self, in_bits: int = 8, **fields) -> PWLDatapath:
        """The canonical datapath whose codes hold every (code, exponent) pair of the format
        (``fields``: the other datapath fields, output and segment rule)."""
        (s_lo, s_hi), (t_lo, t_hi) = self.slope_fracs, self.icpt_fracs
        return PWLDatapath(in_bits=in_bits, slope_bits=self.slope_bits + s_hi - s_lo, slope_frac=s_hi,
                           icpt_bits=self.icpt_bits + t_hi - t_lo, icpt_frac=t_hi, **fields)

    def formats(self) -> list[tuple]:
        """Rows for :func:`gqa_lut.exact.exact_optimum`: one per ``(s, t)`` exponent pair."""
        kf, bf = QFormat(self.slope_bits, 0), QFormat(self.icpt_bits, 0)
        (s_lo, s_hi), (t_lo, t_hi) = self.slope_fracs, self.icpt_fracs
        return [(2.0**-s, 2.0**-t, kf.min_int, kf.max_int, bf.min_int, bf.max_int, 1 << (s_hi - s), 1 << (t_hi - t))
                for s in range(s_lo, s_hi + 1) for t in range(t_lo, t_hi + 1)]

    def to_dict(self) -> dict:
        return {"kind": "per-segment exponents", "slope_bits": self.slope_bits, "slope_fracs": list(self.slope_fracs),
                "icpt_bits": self.icpt_bits, "icpt_fracs": list(self.icpt_fracs)}


def _narrow(code: int, bits: int, lo: int, hi: int, field: str) -> tuple[int, int]:
    """A wide code as ``(narrow code, exponent)``: the largest exponent whose narrow code fits."""
    fmt = QFormat(bits, 0)
    for frac in range(hi, lo - 1, -1):
        shift = hi - frac
        if code % (1 << shift) == 0 and fmt.min_int <= code >> shift <= fmt.max_int:
            return code >> shift, frac
    raise GQAError(field, f"wide code {code} is no {bits}-bit code shifted by 0..{hi - lo}",
                   "the table is not in this per-segment exponent format")


def segment_codes(table: PWLTable, fmt: SegmentExponents) -> list[dict]:
    """Per segment, the narrow codes and exponents the hardware stores (raises if the table is not in ``fmt``)."""
    out = []
    for i, (k, b) in enumerate(zip(table.slopes, table.intercepts)):
        kc, s = _narrow(int(k), fmt.slope_bits, *fmt.slope_fracs, f"slopes[{i}]")
        bc, t = _narrow(int(b), fmt.icpt_bits, *fmt.icpt_fracs, f"intercepts[{i}]")
        out.append({"slope": kc, "slope_frac": s, "icpt": bc, "icpt_frac": t})
    return out
