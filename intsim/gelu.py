"""Activations through a PWL table (GELU, SiLU, ... : the table's function), and the interface
every integer activation kernel shares.

An activation kernel is built offline from the calibrated largest |input| and then maps integer codes
to integer codes:

- ``kernel = Kind(in_absmax, ...)`` chooses its input format: ``in_bits`` (signed) and the real
  scale ``in_scale`` of one input code (the preceding requantizer targets it);
- ``kernel(q, stats=None, name=...)`` takes codes ``q`` (any integer array within s{in_bits})
  and returns int32 codes whose real value is ``code * kernel.out_scale``.

The PWL kernel's input scale is the power of two ``2**-e``: ``e`` is the largest scale of the
table's set at which ``in_absmax`` still fits the code range (clipping nothing the calibration
saw; :meth:`intsim.PWLDatapath.input_exponent`, which :mod:`gqa_lut.nn` calibrates with too),
or the scale given explicitly (``e=``, e.g. exported from quantization-aware training).
The output is the unit's output code (its accumulator at ``F(e)`` fractional bits at full
precision), so ``out_scale = 2**-output_frac(e)``. I-BERT's and I-ViT's kernels
(:mod:`intsim.ibert`, :mod:`intsim.ivit`) follow the same interface.
"""

from __future__ import annotations

import numpy as np

from .errors import GQAError
from .pwl import pwl_map


class PWLActivation:
    """The PWL unit on ``table``: computes whatever function the table approximates (``table.function``)."""

    name = "pwl"

    def __init__(self, in_absmax: float, table, e: int | None = None):
        self.table = table
        dp = table.datapath
        if e is None:
            e = dp.input_exponent(in_absmax, table.scales)
        elif e not in table.scales:
            raise GQAError("pwl_input_exp", f"e={e} is not among the table's scales {list(table.scales)}",
                           "use a scale the table was searched for")
        self.e, self.in_bits = e, dp.in_bits
        self.in_scale = 2.0**-e
        self.out_scale = 2.0 ** -table.output_frac(e)
        acc_bits = dp.acc_bits(e) if dp.out_bits is None else dp.out_bits
        if acc_bits > 32:
            raise GQAError(f"{table.function} table", f"its output at e={e} needs {acc_bits} bits",
                           "narrow the coefficient formats or set out_bits <= 32")

    def __call__(self, q, stats=None, name=None):
        name = name or self.table.function
        y = pwl_map(q, self.table, self.e, np.int32)
        if stats is not None:
            t = self.table
            stats.lut(name, q.size, table=t.function, entries=t.entries, in_bits=t.datapath.in_bits)
        return y


PWLGelu = PWLActivation   # the name of the encoder's first version (a GELU table)
