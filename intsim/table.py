"""``PWLTable``: one PWL table on one datapath, its error report and its file format.

A table is what the hardware stores: ``N-1`` breakpoints (real, dyadic), ``N`` slope codes
``K_i`` and ``N`` intercept codes ``B_i`` in the datapath's formats, serving a set of
power-of-two input scales. The per-scale comparator constants ``P_j(e)`` follow the
canonical rule (:meth:`PWLDatapath.breakpoint_codes`) unless the table carries them
explicitly: tables imported from GQA-LUT files do, because the reference rounds each
scale's breakpoints from unrecorded float values. The unit segments its input by the
segment starts derived from them (:meth:`PWLTable.segment_starts`, the datapath's
``segment_rule``).

Error of a table for ``f`` at scale ``e`` (DESIGN.md): over every input code ``q`` whose real
value ``q * 2**-e`` lies in the domain, ``MSE_e = mean((y(q) - f(q * 2**-e))**2)`` where ``y``
is the unit's real output; ``max_abs_e`` likewise. Headline error: the mean of ``MSE_e``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .datapath import PWLDatapath
from .errors import GQAError
from .fileio import atomic_write_json, read_json
from .fixedpoint import QFormat, SaturationCounter, round_real
from .functions import Function, check_domain, get_function
from .pwl import output_frac, pwl_accumulate, pwl_output

FILE_FORMAT = "gqa-sim/pwl-table"
FILE_VERSION = 1


def scale_points(domain, e: int, dp: PWLDatapath) -> np.ndarray:
    """Input codes whose real value ``q * 2**-e`` lies in ``[lo, hi]``, ascending."""
    lo, hi = domain
    q_lo = max(math.ceil(lo * 2.0**e), dp.code_min)
    q_hi = min(math.floor(hi * 2.0**e), dp.code_max)
    if q_lo > q_hi:
        raise GQAError("scales", f"at e={e} no signed {dp.in_bits}-bit input code lies in the domain [{lo}, {hi}]",
                       f"codes span [{dp.code_min * 2.0**-e}, {dp.code_max * 2.0**-e}] there; drop that scale "
                       "or widen in_bits")
    return np.arange(q_lo, q_hi + 1, dtype=np.int64)


def check_scales(scales, dp: PWLDatapath, domain) -> tuple[int, ...]:
    """Validated, sorted, distinct scales, each with at least one code in the domain."""
    if isinstance(scales, (int, np.integer)):
        scales = [scales]
    try:
        scales = list(scales)
    except TypeError:
        raise GQAError("scales", f"must be a list of integers, got {scales!r}") from None
    if not scales:
        raise GQAError("scales", "is empty", "give at least one power-of-two scale exponent, e.g. 0:6")
    out = sorted({dp.check_scale(e) for e in scales})
    for e in out:
        scale_points(domain, e, dp)
    return tuple(out)


def parse_scales(text: str) -> list[int]:
    """``"0:6"`` (inclusive), ``"0,2,4"`` or ``"3"`` -> list of exponents."""
    try:
        if ":" in text:
            a, b = text.split(":")
            return list(range(int(a), int(b) + 1))
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise GQAError("scales", f"{text!r} is not a range A:B or a list A,B,C of integers") from None


def quantize_coefficients(values, fmt: QFormat, field: str, on_overflow: str = "clip"):
    """Reals -> codes of ``fmt`` (half-even); out-of-range values clipped and counted, or refused."""
    if on_overflow not in ("clip", "error"):
        raise GQAError("on_overflow", f"unknown policy {on_overflow!r}", "use 'clip' or 'error'")
    codes = round_real(values * 2.0**fmt.frac, "half_even")
    bad = ~fmt.fits(codes)
    if np.any(bad) and on_overflow == "error":
        i = int(np.flatnonzero(bad)[0])
        raise GQAError(f"{field}[{i}]", f"{float(np.asarray(values)[i])!r} does not fit {fmt} "
                       f"(range [{fmt.min_int * fmt.resolution}, {fmt.max_int * fmt.resolution}])",
                       "widen the format or allow clipping")
    return np.clip(codes, fmt.min_int, fmt.max_int), int(np.count_nonzero(bad))


@dataclass
class TableError:
    """Per-scale error of a table: MSE and max |error| over the domain's codes."""

    scales: tuple[int, ...]
    mse: np.ndarray
    max_abs: np.ndarray
    points: np.ndarray

    @property
    def mean_mse(self) -> float:
        return float(np.mean(self.mse))

    @property
    def max_max_abs(self) -> float:
        return float(np.max(self.max_abs))

    def to_dict(self) -> dict:
        return {
            "mse": {str(e): float(v) for e, v in zip(self.scales, self.mse)},
            "max_abs": {str(e): float(v) for e, v in zip(self.scales, self.max_abs)},
            "mean_mse": self.mean_mse,
            "max_abs_overall": self.max_max_abs,
        }

    def report(self) -> str:
        lines = [f"{'scale e':>7}  {'codes':>5}  {'MSE':>10}  {'max |err|':>10}"]
        for e, n, m, a in zip(self.scales, self.points, self.mse, self.max_abs):
            lines.append(f"{e:>7}  {n:>5}  {m:>10.3e}  {a:>10.3e}")
        lines.append(f"{'mean':>7}  {'':>5}  {self.mean_mse:>10.3e}  {self.max_max_abs:>10.3e}")
        return "\n".join(lines)


def _as_int_array(values, field: str, length: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise GQAError(field, f"must be a list of numbers, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise GQAError(field, f"has {arr.shape[0]} values, expected {length}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise GQAError(field, "holds NaN or infinity")
        if not np.all(arr == np.round(arr)):
            raise GQAError(field, "holds non-integer codes")
    elif arr.dtype.kind not in "iu":
        raise GQAError(field, f"must hold integers, got {arr.dtype}")
    return arr.astype(np.int64)


def _as_breakpoints(values, field: str, length: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise GQAError(field, "must be a list of numbers") from None
    if arr.ndim != 1 or arr.shape[0] != length:
        raise GQAError(field, f"has {arr.size} values, expected {length} (entries - 1)")
    if not np.all(np.isfinite(arr)):
        raise GQAError(field, "holds NaN or infinity")
    if np.any(np.diff(arr) < 0):
        j = int(np.flatnonzero(np.diff(arr) < 0)[0])
        raise GQAError(field, f"is not sorted: [{j}]={arr[j]} > [{j + 1}]={arr[j + 1]}", "breakpoints must ascend")
    return arr


BREAKPOINT_CODE_LIMIT = 2.0**53   # beyond this a breakpoint's code at a scale is no longer an exact integer


def check_breakpoint_range(breakpoints, scales, field: str) -> None:
    """Refuse breakpoints whose code ``p * 2**e`` at the finest scale exceeds 2**53.

    Breakpoints beyond the input range are legitimate (their comparator constant clamps), but a
    real like 1e300 overflows the integer code grid and would evaluate to a wrong table."""
    e = max(scales)
    arr = np.asarray(breakpoints, dtype=np.float64)
    with np.errstate(over="ignore"):
        bad = np.flatnonzero(np.abs(arr) * 2.0**e > BREAKPOINT_CODE_LIMIT)
    if bad.size:
        i = int(bad[0])
        raise GQAError(f"{field}[{i}]", f"{float(arr[i])!r} is too large: at scale e={e} its code exceeds 2**53, "
                       "far outside every input", "give breakpoints within (or near) the inputs' range")


@dataclass
class PWLTable:
    """A PWL table on a datapath: breakpoints, integer slopes and intercepts, scale set."""

    function: str
    domain: tuple[float, float]
    datapath: PWLDatapath
    scales: tuple[int, ...]
    breakpoints: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    explicit_codes: dict[int, np.ndarray] | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        dp = self.datapath
        if not isinstance(dp, PWLDatapath):
            raise GQAError("datapath", f"must be a PWLDatapath, got {type(dp).__name__}")
        self.domain = check_domain(self.domain)
        self.slopes = _as_int_array(self.slopes, "slopes")
        n = self.slopes.shape[0]
        if n < 2:
            raise GQAError("slopes", f"a table needs at least 2 entries, got {n}")
        if n > 2**dp.in_bits:
            raise GQAError("entries", f"{n} entries exceed the {2**dp.in_bits} input codes of s{dp.in_bits}")
        self.intercepts = _as_int_array(self.intercepts, "intercepts", n)
        self.breakpoints = _as_breakpoints(self.breakpoints, "breakpoints", n - 1)
        for name, codes, fmt in (("slopes", self.slopes, dp.slope_format), ("intercepts", self.intercepts, dp.icpt_format)):
            bad = np.flatnonzero(~fmt.fits(codes))
            if bad.size:
                i = int(bad[0])
                raise GQAError(f"{name}[{i}]", f"code {int(codes[i])} does not fit {fmt}",
                               "widen the datapath or clip the coefficient")
        self.scales = check_scales(self.scales, dp, self.domain)
        check_breakpoint_range(self.breakpoints, self.scales, "breakpoints")
        if self.explicit_codes is not None:
            codes = {}
            for e in self.scales:
                if e not in self.explicit_codes:
                    raise GQAError(f"breakpoint_codes.{e}", "missing for a scale of the table")
                c = _as_int_array(self.explicit_codes[e], f"breakpoint_codes.{e}", n - 1)
                if np.any(np.diff(c) < 0):
                    raise GQAError(f"breakpoint_codes.{e}", "is not sorted", "comparator constants must ascend")
                lo, hi = dp.breakpoint_code_range
                if np.any(c < lo) or np.any(c > hi):
                    raise GQAError(f"breakpoint_codes.{e}", f"leaves [{lo}, {hi}]",
                                   f"comparator constants of segment rule {dp.segment_rule!r} lie there")
                codes[e] = c
            self.explicit_codes = codes

    # --- the unit ---------------------------------------------------------------------
    @property
    def entries(self) -> int:
        return int(self.slopes.shape[0])

    def breakpoint_codes(self, e: int) -> np.ndarray:
        """Comparator constants ``P_j(e)``."""
        if self.explicit_codes is not None:
            if e not in self.explicit_codes:
                raise GQAError("scale", f"e={e} is not among the table's scales {list(self.scales)}")
            return self.explicit_codes[e]
        return self.datapath.breakpoint_codes(self.breakpoints, self.datapath.check_scale(e, "scale"))

    def segment_starts(self, e: int) -> np.ndarray:
        """Segment starts ``S_j(e)`` (:meth:`PWLDatapath.segment_starts`): ``i(q) = #{j : q >= S_j}``."""
        if self.explicit_codes is not None:
            # explicit constants are integers: as reals on the 2**-e grid they round back exactly
            return self.datapath.segment_starts(self.breakpoint_codes(e) * 2.0**-e, e)
        return self.datapath.segment_starts(self.breakpoints, self.datapath.check_scale(e, "scale"))

    def _check_codes(self, codes) -> np.ndarray:
        q = np.asarray(codes)
        if q.dtype.kind not in "iu":
            raise GQAError("codes", f"input codes must be integers, got {q.dtype}", "quantize inputs first")
        q = q.astype(np.int64)
        if np.any(q < self.datapath.code_min) or np.any(q > self.datapath.code_max):
            raise GQAError("codes", f"leave the s{self.datapath.in_bits} range "
                           f"[{self.datapath.code_min}, {self.datapath.code_max}]")
        return q

    def accumulate(self, codes, e: int) -> np.ndarray:
        """Integer accumulator ``A`` with ``F(e)`` fractional bits."""
        return pwl_accumulate(self._check_codes(codes), e, self.segment_starts(e),
                              self.slopes, self.intercepts, self.datapath)

    def output_codes(self, codes, e: int, counter: SaturationCounter | None = None) -> np.ndarray:
        """The unit's integer output (``output_frac(e)`` fractional bits)."""
        return pwl_output(self.accumulate(codes, e), e, self.datapath, counter)

    def output_frac(self, e: int) -> int:
        return output_frac(e, self.datapath)

    def evaluate(self, codes, e: int) -> np.ndarray:
        """Real outputs for integer input codes at scale ``e``."""
        return self.output_codes(codes, e).astype(np.float64) * 2.0 ** -self.output_frac(e)

    def __call__(self, x, e: int) -> np.ndarray:
        """Real inputs -> quantized to codes at scale ``e`` (half-even, saturated) -> real outputs."""
        q = self.datapath.in_format.quantize(np.asarray(x, dtype=np.float64) * 2.0**e)
        return self.evaluate(q, e)

    @property
    def slopes_real(self) -> np.ndarray:
        return self.slopes * self.datapath.slope_format.resolution

    @property
    def intercepts_real(self) -> np.ndarray:
        return self.intercepts * self.datapath.icpt_format.resolution

    def reference_function(self, f=None) -> Function:
        return get_function(f if f is not None else self.function, self.domain if f is None or callable(f) else None)

    def error(self, f=None, weights: dict | None = None) -> TableError:
        """Per-scale MSE and max |error| against ``f`` (default: the table's own function).

        ``weights`` maps a scale to per-code weights over the whole code range (a histogram
        of codes a model produces); the MSE is then the weighted mean over the domain.
        """
        fn = self.reference_function(f)
        mse, mx, npts = [], [], []
        for e in self.scales:
            q = scale_points(self.domain, e, self.datapath)
            err = self.evaluate(q, e) - fn(q * 2.0**-e)
            if weights is not None and e in weights:
                w = np.asarray(weights[e], dtype=np.float64)[q - self.datapath.code_min]
                mse.append(float(np.sum(w * err**2) / np.sum(w)) if np.sum(w) > 0 else 0.0)
            else:
                mse.append(float(np.mean(err**2)))
            mx.append(float(np.max(np.abs(err))))
            npts.append(q.size)
        return TableError(self.scales, np.array(mse), np.array(mx), np.array(npts))

    # --- files ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "function": self.function,
            "domain": [float(self.domain[0]), float(self.domain[1])],
            "scales": [int(e) for e in self.scales],
            "datapath": self.datapath.to_dict(),
            "entries": self.entries,
            "breakpoints": [float(p) for p in self.breakpoints],
            "breakpoint_codes": {str(e): [int(c) for c in self.breakpoint_codes(e)] for e in self.scales},
            "breakpoint_codes_explicit": self.explicit_codes is not None,
            "slopes": {"int": [int(k) for k in self.slopes], "real": [float(k) for k in self.slopes_real]},
            "intercepts": {"int": [int(b) for b in self.intercepts], "real": [float(b) for b in self.intercepts_real]},
            "provenance": self.provenance,
        }

    def save(self, path) -> Path:
        """Write the versioned JSON file atomically."""
        return atomic_write_json(path, self.to_dict(), field="output")

    @classmethod
    def from_dict(cls, d, source: str = "table") -> "PWLTable":
        if not isinstance(d, dict):
            raise GQAError(source, "must be a JSON object")
        if d.get("format") != FILE_FORMAT:
            raise GQAError("format", f"is {d.get('format')!r}, expected {FILE_FORMAT!r}",
                           "GQA-LUT files load with gqa_lut.load_gqa_json or `gqa eval`")
        if d.get("version") != FILE_VERSION:
            raise GQAError("version", f"{d.get('version')!r} is not supported", f"this gqa-sim reads version {FILE_VERSION}")
        for key in ("function", "domain", "scales", "datapath", "breakpoints", "slopes", "intercepts"):
            if key not in d:
                raise GQAError(key, "is missing from the table file")
        dp = PWLDatapath.from_dict(d["datapath"])
        slopes, icpts = d["slopes"], d["intercepts"]
        for name, v in (("slopes", slopes), ("intercepts", icpts)):
            if not isinstance(v, dict) or "int" not in v:
                raise GQAError(f"{name}.int", "is missing", "coefficients are stored as integer codes")
            if not isinstance(v["int"], list):
                raise GQAError(f"{name}.int", "must be a list of integer codes")
        if "entries" in d:
            n = d["entries"]
            if isinstance(n, bool) or not isinstance(n, int):
                raise GQAError("entries", f"must be an integer, got {n!r}")
            # slopes define the entries; breakpoints and intercepts are checked against them below
            if len(slopes["int"]) != n:
                raise GQAError("entries", f"is {n} but slopes.int holds {len(slopes['int'])}",
                               "the arrays and entries must agree")
        for key in ("provenance", "breakpoint_codes"):
            if key in d and not isinstance(d[key], dict):
                raise GQAError(key, "must be a JSON object")
        explicit = None
        if d.get("breakpoint_codes_explicit"):
            bc = d.get("breakpoint_codes")
            if not isinstance(bc, dict):
                raise GQAError("breakpoint_codes", "must map each scale to its codes")
            try:
                explicit = {int(e): c for e, c in bc.items()}
            except ValueError:
                raise GQAError("breakpoint_codes", "keys must be integer scales") from None
        table = cls(function=str(d["function"]), domain=d["domain"], datapath=dp, scales=d["scales"],
                    breakpoints=d["breakpoints"], slopes=slopes["int"], intercepts=icpts["int"],
                    explicit_codes=explicit, provenance=dict(d.get("provenance", {})))
        for name, v, fmt in (("slopes", slopes, dp.slope_format), ("intercepts", icpts, dp.icpt_format)):
            if "real" not in v:
                continue
            try:
                real = np.asarray(v["real"], dtype=np.float64)
            except (TypeError, ValueError):
                raise GQAError(f"{name}.real", "must be a list of numbers") from None
            if not np.array_equal(real, getattr(table, name) * fmt.resolution):
                raise GQAError(f"{name}.real", "disagrees with the integer codes", "the file was edited by hand?")
        if not explicit and "breakpoint_codes" in d:
            for e in table.scales:
                stored = d["breakpoint_codes"].get(str(e))
                if stored is not None and list(stored) != [int(c) for c in table.breakpoint_codes(e)]:
                    raise GQAError(f"breakpoint_codes.{e}", "disagrees with the real breakpoints")
        return table

    @classmethod
    def load(cls, path) -> "PWLTable":
        return cls.from_dict(read_json(path), source=str(path))
