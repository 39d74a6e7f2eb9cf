"""gqa_lut: PWL lookup tables for non-linear functions, searched with the quantization in the loop.

    >>> import gqa_lut
    >>> table = gqa_lut.search("gelu", entries=8)
    >>> table.error().mean_mse
    >>> table.provenance["optimum"]   # the exact optimum of the same objective, and the gap
"""

__version__ = "0.1.0"

from intsim import PWLDatapath, PWLTable  # noqa: E402  (the table type lives in intsim)

from .functions import FUNCTIONS, Function, get_function  # noqa: E402
from .gqa_json import load_gqa_json, save_gqa_json  # noqa: E402
from .exact import ExactTooLarge, ExactUnavailable, exact_optimum, lower_bound  # noqa: E402
from .search import METHOD_REGISTRY, METHODS, search  # noqa: E402
from .segexp import SegmentExponents  # noqa: E402


def load(path, segment_rule: str | None = None) -> PWLTable:
    """Load a table file: gqa-sim JSON, or the GQA-LUT reference layout.

    ``segment_rule`` ("ge" or "gt") is the comparator convention a GQA-LUT file's breakpoints
    are read with (default "ge"; the reference torch operator's is "gt"); gqa-sim files store
    their own, which a given rule must match.
    """
    from .io import load_any
    return load_any(path, segment_rule=segment_rule)


__all__ = ["search", "load", "load_gqa_json", "save_gqa_json", "PWLTable", "PWLDatapath", "FUNCTIONS",
           "Function", "get_function", "METHODS", "METHOD_REGISTRY", "exact_optimum", "lower_bound", "ExactTooLarge",
           "ExactUnavailable", "SegmentExponents", "__version__"]
