"""intsim: bit-accurate integer simulator (fixed-point core, PWL unit, table type)."""

from .datapath import PWLDatapath
from .errors import GQAError
from .fixedpoint import (QFormat, SaturationCounter, quantize_multiplier, requantize, round_real,
                         round_shift, saturate)
from .functions import FUNCTIONS, Function, get_function
from .pwl import pwl_accumulate, pwl_accumulate_population, pwl_output
from .table import PWLTable, TableError, scale_points

__all__ = [
    "PWLDatapath", "GQAError", "QFormat", "SaturationCounter", "quantize_multiplier", "requantize",
    "round_real", "round_shift", "saturate", "FUNCTIONS", "Function", "get_function", "pwl_accumulate",
    "pwl_accumulate_population", "pwl_output", "PWLTable", "TableError", "scale_points",
]
