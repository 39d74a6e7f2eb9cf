"""The integer datapath configuration of the encoder: bits per tensor, the kernel and LUT per op,
weight-scale granularity, residual-stream width, outlier handling.

A config is a flat mapping (a JSON or TOML file, or keyword arguments); every key is checked,
unknown keys and impossible values are refused with the field named. The allowed kernels and
methods are those of :mod:`intsim.registry`. ``gelu``/``gelu_table`` are the FFN activation
slot's kernel and table: files may also call them ``activation``/``activation_table``;
``silu``/``silu_table`` are the decoder's SwiGLU gate (a SiLU table only). Tables are given by the
name of an embedded default (``intsim/tables/NAME.json``), a table file path, or a
:class:`~intsim.table.PWLTable` object (Python API).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import GQAError
from .fileio import read_config_file
from .registry import OUTLIERS, choices
from .table import PWLTable

TABLE_DIR = Path(__file__).resolve().parent / "tables"

ALIASES = {"activation": "gelu", "activation_table": "gelu_table"}   # slot names of the gelu* fields
TABLE_SLOTS = {"gelu_table": "gelu", "silu_table": "silu", "exp_table": "exp",   # table field -> the
               "recip_table": "reciprocal", "rsqrt_table": "rsqrt"}             # function it holds
TABLE_KEYS = tuple(TABLE_SLOTS)
ACTIVATION_SLOTS = ("gelu_table", "silu_table")   # tables of activations (the others: exp, reciprocal, rsqrt)

# value ranges of the numeric fields ([lo, hi], inclusive) and the hint a refusal gives
RANGES = {"act_bits": (5, 8), "weight_bits": (2, 8), "embed_bits": (2, 16), "residual_bits": (8, 32),
          "ln_d_bits": (4, 24), "rope_bits": (4, 23), "prob_bits": (2, 16), "softmax_clip": (0.5, 64.0), "smooth_alpha": (0.0, 1.0),
          "ffn_smooth_alpha": (0.0, 1.0),
          "calib_percentile": (90.0, 100.0), "split_ratio": (1.0, 1e6), "token_mantissa_bits": (0, 8)}
HINTS = {"act_bits": "activations below 5 bits leave the requantizers' multipliers out of range",
         "rope_bits": "16 (15 fraction bits) is the default; act_bits + rope_bits must stay <= 31",
         "smooth_alpha": "SmoothQuant uses 0.5",
         "prob_bits": "8 gives UINT8 probabilities; above 8 the context GEMM takes them as two bytes",
         "ffn_smooth_alpha": "0 turns it off; the decoder uses 0.7",
         "token_mantissa_bits": "a per-token scale's fraction bits (3: the consumer multiplies by a 4-bit mantissa)",
         "split_ratio": "channels above split_ratio x the median channel range are split (8 is the default)"}
KINDS = {"int": "an integer", "float": "a number", "str": "a string"}


def coerce_value(name: str, value, kind: str, lo=None, hi=None, hint: str | None = None):
    """One configuration value of ``kind`` ('int', 'float' or 'str'), range-checked, or a GQAError naming it.

    Booleans are not numbers here; a float must be finite; an int is a float too (returned as float)."""
    rng = f" in [{lo}, {hi}]" if lo is not None else ""
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          "str": lambda v: isinstance(v, str)}[kind](value)
    if not ok:
        raise GQAError(name, f"{value!r} is not {KINDS[kind]}", f"give {KINDS[kind]}{rng}")
    if kind == "float":
        value = float(value)
    if lo is not None and not lo <= value <= hi:
        raise GQAError(name, f"{value!r} is outside [{lo}, {hi}]", hint or f"give {KINDS[kind]}{rng}")
    return value


def check_table_function(table: PWLTable, field_name: str) -> None:
    """A table serves only the function of its slot (an exp table in the GELU slot is a wrong result).

    The activation slot (``gelu_table``) takes any activation (a decoder's SiLU too); the model
    checks it is its own (:meth:`SimConfig.check_sites`). The other slots take exactly theirs."""
    want = TABLE_SLOTS[field_name]
    if field_name == "gelu_table":
        others = {f for k, f in TABLE_SLOTS.items() if k not in ACTIVATION_SLOTS}
        if table.function in others:
            raise GQAError(field_name, f"holds a {table.function} table, which is not an activation: this slot "
                           "computes the FFN activation", f"give an activation table (embedded: "
                           f"{', '.join(embedded_tables(want))})")
        return
    if table.function != want:
        raise GQAError(field_name, f"holds a {table.function} table, but this slot computes {want}",
                       f"give a {want} table (embedded: {', '.join(embedded_tables(want))})")


def embedded_tables(function: str | None = None) -> list[str]:
    import json

    names = sorted(q.stem for q in TABLE_DIR.glob("*.json"))
    if function is None:
        return names
    return [n for n in names if json.loads((TABLE_DIR / f"{n}.json").read_text()).get("function") == function]


@dataclass
class SimConfig:
    act_bits: int = 8               # GEMM operands (activations), signed
    weight_bits: int = 8            # weights, signed, symmetric
    weight_scales: str = "per_channel"
    weight_rounding: str = "gptq"   # or "nearest": GPTQ codes, chosen against each linear's own calibration operands
    embed_bits: int = 10            # embedding tables (lookups, not GEMM operands), per-row scales
    act_scales: str = "dyadic"      # activation scales: absmax/(2**(b-1)-1), or rounded up to a power of two
    residual_bits: int = 16         # the residual stream (LayerNorm inputs, residual copies)
    gelu: str = "pwl"
    gelu_table: object = "gelu16_in12"  # the GELU unit's input 12 bits (issue 15: +18% unit area, GEMMs stay INT8)
    silu: str = "pwl"               # the decoder's SwiGLU gate activation (ACTIVATIONS entries computing silu)
    silu_table: object = "silu16"
    softmax: str = "pwl"
    softmax_clip: float = 15.0      # I-LLM's DI-ClippedSoftmax: the score range kept below the row max
    exp_table: object = "exp16_c12"  # 12-bit coefficients (issue 15: exp unit +32% area, 1 - cos -4..10%)
    reciprocal: str = "pwl"         # softmax normalisation: range-reduced PWL reciprocal or an integer divider
    recip_table: object = "recip_mantissa16"
    prob_bits: int = 8              # softmax probabilities, the context GEMM's operand: unsigned, scale 2**-prob_bits
    layernorm: str = "pwl"          # rsqrt by range-reduced PWL, or I-BERT's Newton isqrt + divider
    rsqrt_table: object = "rsqrt_mantissa16"
    ln_d_bits: int = 16             # LayerNorm's centred values after width reduction
    rope_bits: int = 16             # RoPE's cos/sin constants, signed (rope_bits - 1 fraction bits)
    outliers: str = "smooth+per_token+act_offset+token_mantissa+norm_mantissa"  # smooth: LayerNorm-output
    #                                 outliers migrate into the weights; per_token: dynamic scale per token for the
    #                                 GEMM operands (token_mantissa: mu * 2**k, not only a power of two, for the GELU
    #                                 output and context; norm_mantissa: the same for the LayerNorm copies);
    #                                 act_offset: the GELU output an unsigned (uint8) operand, its offset in the bias
    token_mantissa_bits: int = 3    # outliers token_mantissa: the per-token scale mu * 2**k, mu = 1.m with m bits
    smooth_alpha: float = 0.7
    ffn_smooth_alpha: float = 0.0   # gated FFN: SmoothQuant on the down operand (factors in its requantizer); 0: off
    calib_percentile: float = 99.99  # static GEMM-operand ranges: this percentile of |x| (residual: always max)
    act_clip: str = "percentile"    # static GEMM-operand clipping: calib_percentile, or searched (mse, token)
    split_ratio: float = 8.0        # outliers "split": channels above this x the median channel range split
    site_bits: dict = field(default_factory=dict)  # {"blocks.*.ln1_out": 6}: a norm GEMM copy's own width
    pwl_input_exp: dict = field(default_factory=dict)  # {"blocks.3.gelu": e}: fixed GELU input scales
    gemm_backend: str = "auto"

    def __post_init__(self):
        for f in fields(self):                 # one coercion for every typed field: the field named
            if f.type in KINDS:
                lo, hi = RANGES.get(f.name, (None, None))
                setattr(self, f.name, coerce_value(f.name, getattr(self, f.name), f.type, lo, hi,
                                                   HINTS.get(f.name)))
        if isinstance(self.outliers, str):     # any order of the composable methods: the canonical one kept
            self.outliers = OUTLIERS.canonical(self.outliers)
        for k, allowed in choices().items():   # from intsim.registry: a registration adds a choice
            if getattr(self, k) not in allowed:
                raise GQAError(k, f"{getattr(self, k)!r} is not an option", f"use one of {', '.join(allowed)}")
        if not isinstance(self.pwl_input_exp, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in self.pwl_input_exp.values()):
            raise GQAError("pwl_input_exp", "must map module names to integer exponents",
                           'e.g. {"blocks.0.gelu": 3}')
        lo, hi = RANGES["act_bits"]
        if not isinstance(self.site_bits, dict) or not all(
                isinstance(p, str) and isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
                for p, v in self.site_bits.items()):
            raise GQAError("site_bits", f"must map site patterns to widths in [{lo}, {hi}]",
                           'e.g. {"blocks.*.ln1_out": 6} (fnmatch patterns over calibration site names)')
        for k in TABLE_KEYS:
            setattr(self, k, load_table(getattr(self, k), k))
            check_table_function(getattr(self, k), k)

    def check_sites(self, sites, activation: str | None = None) -> None:
        """Refuse ``pwl_input_exp`` keys that name no activation site of the model being built, and
        (``activation``: the model's activation function) an activation table of another function."""
        if activation is not None and self.gelu == "pwl" and self.gelu_table.function != activation:
            raise GQAError("gelu_table", f"holds a {self.gelu_table.function} table, but this model's "
                           f"activation is {activation}", f"give a {activation} table")
        unknown = sorted(set(self.pwl_input_exp) - set(sites))
        if unknown:
            raise GQAError(f"pwl_input_exp: {unknown[0]}", "is not an activation site of this model",
                           f"sites: {', '.join(sites)}")

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
        return cls.from_dict(read_config_file(path, "--config"), source=str(path))

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
        w = self.weight_scales + ("" if self.weight_rounding == "nearest" else f" {self.weight_rounding}")
        return (f"W{self.weight_bits}A{self.act_bits} {w}, residual {self.residual_bits}b, "
                f"gelu {g}, softmax {s}, layernorm {self.layernorm}, outliers {self.outliers}"
                + (f" (m={self.token_mantissa_bits})" if OUTLIERS.parse(self.outliers) & {"token_mantissa", "norm_mantissa"}
                   else ""))


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
    raise GQAError(field_name, f"{spec!r} is neither an embedded table nor a file",
                   f"embedded tables: {', '.join(embedded_tables())}; or give a table file (gqa search ... -o FILE)")
