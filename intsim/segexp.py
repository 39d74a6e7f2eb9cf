"""Per-segment exponents: the coefficient format in which every segment picks its own fraction bits.

LUT-APP's "dynamic fixed-point format": segment ``i`` stores a slope code ``K_i`` (signed
``slope_bits``) with its own exponent ``s_i`` in ``[s_lo, s_hi]`` (``slope_fracs``) and an
intercept code ``B_i`` (signed ``icpt_bits``) with its own ``t_i`` in ``[t_lo, t_hi]``
(``icpt_fracs``); real slope ``K_i * 2**-s_i``, intercept ``B_i * 2**-t_i``. The unit shifts
each by its segment's exponent into the accumulator of ``F(e) = max(e + s_hi, t_hi)``
fractional bits:

    A = (K_i * q) << (F - e - s_i)  +  B_i << (F - t_i)

which is, bit for bit, the canonical unit on the *wide* datapath
``s(slope_bits + s_hi - s_lo).s_hi`` / ``s(icpt_bits + t_hi - t_lo).t_hi`` with codes
``K_i << (s_hi - s_i)`` and ``B_i << (t_hi - t_i)``: ``(K << d) * q << (F - e - s_hi)`` is
``K * q << (F - e - s_i)``. So a table in this format is a :class:`~intsim.PWLTable` on
:meth:`SegmentExponents.wide_datapath` whose codes are restricted to those shifted narrow
codes: intsim's evaluation of that table (``PWLTable.output_codes``) *is* the narrow-code
unit's, and every error report, file and simulator path applies unchanged. The table's
provenance records the format (``coefficient_format``, :meth:`SegmentExponents.to_dict`) and
the narrow codes and exponents the hardware stores (``segments``, :func:`segment_codes`);
:func:`table_format` reads the format back (hw_models prices and emits the narrow unit from it).

It lives in intsim because it describes a datapath (the table type's coefficient format);
gqa_lut searches it (:mod:`gqa_lut.segexp`), hw_models prices and emits it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datapath import MAX_COEFF_BITS, PWLDatapath
from .errors import GQAError
from .fixedpoint import QFormat

KIND = "per-segment exponents"


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

    @property
    def slope_span(self) -> int:
        """``s_hi - s_lo``: the largest left shift of a segment's product (its slope's exponent)."""
        return self.slope_fracs[1] - self.slope_fracs[0]

    @property
    def icpt_span(self) -> int:
        return self.icpt_fracs[1] - self.icpt_fracs[0]

    def wide_datapath(self, in_bits: int = 8, **fields) -> PWLDatapath:
        """The canonical datapath whose codes hold every (code, exponent) pair of the format
        (``fields``: the other datapath fields, output and segment rule)."""
        (s_lo, s_hi), (t_lo, t_hi) = self.slope_fracs, self.icpt_fracs
        return PWLDatapath(in_bits=in_bits, slope_bits=self.slope_bits + s_hi - s_lo, slope_frac=s_hi,
                           icpt_bits=self.icpt_bits + t_hi - t_lo, icpt_frac=t_hi, **fields)

    def matches(self, dp: PWLDatapath) -> bool:
        """Whether ``dp``'s coefficient formats are this format's wide ones."""
        w = self.wide_datapath(dp.in_bits)
        return all(getattr(dp, f) == getattr(w, f) for f in ("slope_bits", "slope_frac", "icpt_bits", "icpt_frac"))

    def formats(self) -> list[tuple]:
        """Rows for :func:`gqa_lut.exact.exact_optimum`: one per ``(s, t)`` exponent pair (LSBs, narrow
        code ranges, and the multipliers ``2**(s_hi - s)``, ``2**(t_hi - t)`` onto the wide codes)."""
        kf, bf = QFormat(self.slope_bits, 0), QFormat(self.icpt_bits, 0)
        (s_lo, s_hi), (t_lo, t_hi) = self.slope_fracs, self.icpt_fracs
        return [(2.0**-s, 2.0**-t, kf.min_int, kf.max_int, bf.min_int, bf.max_int, 1 << (s_hi - s), 1 << (t_hi - t))
                for s in range(s_lo, s_hi + 1) for t in range(t_lo, t_hi + 1)]

    def to_dict(self) -> dict:
        return {"kind": KIND, "slope_bits": self.slope_bits, "slope_fracs": list(self.slope_fracs),
                "icpt_bits": self.icpt_bits, "icpt_fracs": list(self.icpt_fracs)}

    @classmethod
    def from_dict(cls, d, field: str = "coefficient_format") -> "SegmentExponents":
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise GQAError(field, f"is not a {KIND} format: {d!r}", f"a dict with kind {KIND!r} (SegmentExponents.to_dict)")
        try:
            return cls(d["slope_bits"], tuple(d["slope_fracs"]), d["icpt_bits"], tuple(d["icpt_fracs"]))
        except KeyError as exc:
            raise GQAError(field, f"has no {exc.args[0]!r}", "write it with SegmentExponents.to_dict") from None


def _narrow(code: int, bits: int, lo: int, hi: int, field: str) -> tuple[int, int]:
    """A wide code as ``(narrow code, exponent)``: the largest exponent whose narrow code fits."""
    fmt = QFormat(bits, 0)
    for frac in range(hi, lo - 1, -1):
        shift = hi - frac
        if code % (1 << shift) == 0 and fmt.min_int <= code >> shift <= fmt.max_int:
            return code >> shift, frac
    raise GQAError(field, f"wide code {code} is no {bits}-bit code shifted by 0..{hi - lo}",
                   "the table is not in this per-segment exponent format")


def segment_codes(table, fmt: SegmentExponents) -> list[dict]:
    """Per segment, the narrow codes and exponents the hardware stores (raises if the table is not in ``fmt``)."""
    out = []
    for i, (k, b) in enumerate(zip(table.slopes, table.intercepts)):
        kc, s = _narrow(int(k), fmt.slope_bits, *fmt.slope_fracs, f"slopes[{i}]")
        bc, t = _narrow(int(b), fmt.icpt_bits, *fmt.icpt_fracs, f"intercepts[{i}]")
        out.append({"slope": kc, "slope_frac": s, "icpt": bc, "icpt_frac": t})
    return out


def table_format(table) -> SegmentExponents | None:
    """The per-segment exponent format a table's provenance declares (None: the datapath's one format).

    Refuses a declaration that does not fit the table: a datapath that is not the format's
    wide one (e.g. widths overridden after the search), or a code that is no narrow code shifted
    by an exponent of the format.
    """
    d = table.provenance.get("coefficient_format") if isinstance(table.provenance, dict) else None
    if d is None or (isinstance(d, dict) and d.get("kind") != KIND):
        return None
    fmt = SegmentExponents.from_dict(d)
    if not fmt.matches(table.datapath):
        w = fmt.wide_datapath(table.datapath.in_bits)
        raise GQAError("coefficient_format", f"the table declares {KIND} whose wide codes are "
                       f"{w.slope_format} / {w.icpt_format}, but its datapath holds "
                       f"{table.datapath.slope_format} / {table.datapath.icpt_format}",
                       "keep the searched widths (no --slope-bits/--icpt-bits overrides) or search again")
    segment_codes(table, fmt)  # every code is in the format
    return fmt
