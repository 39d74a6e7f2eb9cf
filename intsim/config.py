"""The integer datapath configuration of the encoder: bits per tensor, the kernel and LUT per op,
weight-scale granularity, residual-stream width, outlier handling.

A config is a flat mapping (a JSON or TOML file, or keyword arguments); every key is checked,
unknown keys and impossible values are refused with the field named. The allowed kernels and
methods are those of :mod:`intsim.registry`. ``gelu``/``gelu_table`` are the FFN activation
slot's kernel and table: files may also call them ``activation``/``activation_table``. Tables are given by the
name of an embedded default (``intsim/tables/NAME.json``), a table file path, or a
:class:`~intsim.table.PWLTable` object (Python API).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import GQAError
from .registry import choices
from .table import PWLTable

TABLE_DIR = Path(__file__).resolve().parent / "tables"

ALIASES = {"activation": "gelu", "activation_table": "gelu_table"}   # slot names of the gelu* fields
TABLE_SLOTS = {"gelu_table": "gelu", "exp_table": "exp", "recip_table": "reciprocal",  # table field -> the
               "rsqrt_table": "rsqrt"}                                                # function it holds
TABLE_KEYS = tuple(TABLE_SLOTS)


@dataclass
class SimConfig:
    act_bits: int = 8               # GEMM operands (activations), signed
    weight_bits: int = 8            # weights, signed, symmetric
    weight_scales: str = "per_channel"
    embed_bits: int = 8             # embedding tables (lookups, not GEMM operands), per-row scales
    act_scales: str = "dyadic"      # activation scales: absmax/(2**(b-1)-1), or rounded up to a power of two
    residual_bits: int = 16         # the residual stream (LayerNorm inputs, residual copies)
    gelu: str = "pwl"
    gelu_table: object = "gelu16"
    softmax: str = "pwl"
    exp_table: object = "exp16"
    reciprocal: str = "pwl"         # softmax normalisation: range-reduced PWL reciprocal or an integer divider
    recip_table: object = "recip_mantissa16"
    layernorm: str = "pwl"          # rsqrt by range-reduced PWL, or I-BERT's Newton isqrt + divider
    rsqrt_table: object = "rsqrt_mantissa16"
    ln_d_bits: int = 16             # LayerNorm's centred values after width reduction
    outliers: str = "smooth+per_token"  # smooth: LayerNorm-output outliers migrate into the weights;
    #                                 per_token: dynamic power-of-two scale per token for the GELU output and context
    smooth_alpha: float = 0.7
    calib_percentile: float = 99.99  # static GEMM-operand ranges: this percentile of |x| (residual: always max)
    pwl_input_exp: dict = field(default_factory=dict)  # {"blocks.3.gelu": e}: fixed GELU input scales
    gemm_backend: str = "auto"

    def __post_init__(self):
        for k, allowed in choices().items():   # from intsim.registry: a registration adds a choice
            if getattr(self, k) not in allowed:
                raise GQAError(k, f"{getattr(self, k)!r} is not an option", f"use one of {', '.join(allowed)}")
        for k, lo, hi in (("act_bits", 2, 8), ("weight_bits", 2, 8), ("embed_bits", 2, 16), ("residual_bits", 8, 32), ("ln_d_bits", 4, 24)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise GQAError(k, f"{v!r} is impossible", f"an integer in [{lo}, {hi}]")
        if not 0.0 <= float(self.smooth_alpha) <= 1.0:
            raise GQAError("smooth_alpha", f"{self.smooth_alpha!r} is outside [0, 1]", "SmoothQuant uses 0.5")
        if not 90.0 <= float(self.calib_percentile) <= 100.0:
            raise GQAError("calib_percentile", f"{self.calib_percentile!r} is outside [90, 100]")
        if not isinstance(self.pwl_input_exp, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in self.pwl_input_exp.values()):
            raise GQAError("pwl_input_exp", "must map module names to integer exponents",
                           'e.g. {"blocks.0.gelu": 3}')
        for k in TABLE_KEYS:
            setattr(self, k, load_table(getattr(self, k), k))

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "SimConfig":
        if not isinstance(d, dict):
            raise GQAError(source, "is not a mapping of option names to values")
        known = {f.name for f in fields(cls)}
        d = dict(d)
        for alias, name in ALIASES.items():
            if alias in d:
                if name in d and d[name] != d[alias]:
                    raise GQAError(f"{source}: {alias}", f"is another name of {name}, which is given too",
                                   f"give one of {alias} and {name}")
                d[name] = d.pop(alias)
        unknown = sorted(set(d) - known)
        if unknown:
            raise GQAError(f"{source}: {unknown[0]}", "is not a config option", f"known options: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def load(cls, path) -> "SimConfig":
        p = Path(path)
        if not p.is_file():
            raise GQAError("--config", f"{p} does not exist", "give a JSON or TOML config file")
        text = p.read_text()
        try:
            if p.suffix == ".toml":
                try:
                    import tomllib
                except ImportError:  # Python 3.10
                    import tomli as tomllib
                d = tomllib.loads(text)
            else:
                d = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
            raise GQAError(str(p), f"cannot be parsed: {exc}", "write valid JSON (or TOML with a .toml suffix)") from None
        return cls.from_dict(d, source=str(p))

    @property
    def activation(self) -> str:
        """The FFN activation slot's kernel (the ``gelu`` field)."""
        return self.gelu

    @property
    def activation_table(self) -> PWLTable:
        return self.gelu_table

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in TABLE_KEYS:
            t = getattr(self, k)
            d[k] = t.provenance.get("default_table") or f"{t.function}{t.entries}"
        return d

    def describe(self) -> str:
        g = f"{self.gelu}" + (f"({self.gelu_table.entries})" if self.gelu == "pwl" else "")
        s = f"{self.softmax}" + (f"(exp {self.exp_table.entries}, {self.reciprocal})" if self.softmax == "pwl" else "")
        return (f"W{self.weight_bits}A{self.act_bits} {self.weight_scales}, residual {self.residual_bits}b, "
                f"gelu {g}, softmax {s}, layernorm {self.layernorm}, outliers {self.outliers}")


def load_table(spec, field_name: str) -> PWLTable:
    if isinstance(spec, PWLTable):
        return spec
    if not isinstance(spec, (str, Path)):
        raise GQAError(field_name, f"{spec!r} is neither a table name nor a path", "e.g. 'gelu16' or 'my_table.json'")
    builtin = TABLE_DIR / f"{spec}.json"
    if builtin.is_file():
        return PWLTable.load(builtin)
    p = Path(spec)
    if p.is_file():
        return PWLTable.load(p)
    names = sorted(q.stem for q in TABLE_DIR.glob("*.json"))
    raise GQAError(field_name, f"{spec!r} is neither an embedded table nor a file",
                   f"embedded tables: {', '.join(names)}; or give a table file (gqa search ... -o FILE)")
