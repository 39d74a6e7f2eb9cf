"""Per-segment exponents on the search side: the exact search over every segment's exponent choice.

The format itself (LUT-APP's "dynamic fixed-point format", :class:`SegmentExponents`: narrow
codes, per-segment exponents, the wide datapath it is bit for bit, the narrow codes a table
stores) lives in :mod:`intsim.segexp`, beside the datapath it describes, so that hw_models can
price and emit it; it is re-exported here.

The exact search (:func:`gqa_lut.exact.exact_optimum` with ``formats``,
:meth:`SegmentExponents.formats`) scans the exponent choices per segment: a segment's cost is
the minimum over every ``(s, t)`` of its exact best integer line on that grid. Exact for every
metric and output the exact search takes: the MSE (histogram weights included) and max |err|,
at full precision or with ``out_bits`` rounding (each format row's codes are scanned with the
bounds of :mod:`gqa_lut.exact`, evaluated on the unit's own integer formula).
"""

from __future__ import annotations

from intsim.segexp import KIND, SegmentExponents, segment_codes, table_format

__all__ = ["KIND", "SegmentExponents", "segment_codes", "table_format"]
