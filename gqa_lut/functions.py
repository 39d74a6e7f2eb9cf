"""The function library the searches approximate (defined once, in :mod:`intsim.functions`)."""

from intsim.functions import ALIASES, FUNCTIONS, Function, check_domain, get_function

__all__ = ["ALIASES", "FUNCTIONS", "Function", "check_domain", "get_function"]
