"""Synthesizable Verilog-2005 of the integer PWL unit, and a self-checking testbench from intsim.

The generated module computes exactly :mod:`hw_models.plan`'s unit, i.e. intsim's canonical
datapath (:meth:`intsim.PWLTable.output_codes`), bit for bit:

- ``input signed [IN-1:0] x``: the input code; ``output signed [OUT-1:0] y``;
- one scale (``scale=e``): comparator constants ``P_j(e)`` and shifts are constants; ``y`` has
  ``F(e)`` fractional bits at full precision, ``out_frac`` with ``out_bits``;
- the whole scale set (``scale=None``): an unsigned input ``e`` holds the *index* of the scale
  in the table's (ascending) scale set, ``ceil(log2 S)`` bits wide (for the default set 0..6
  the index equals the exponent); indices past the set use the last scale. At full precision
  every scale is aligned to the common ``Fc = max F(e)`` fractional bits;
- comparators ``x >= P_j(e)`` or, with the datapath's ``segment_rule="gt"``, ``x > P_j(e)``;
- ``pipeline=1``: one register stage after the multiplier (product, intercept and ``e``),
  a ``clk`` input, latency one cycle (``y`` follows ``x`` after one rising edge);
- per-segment exponents (a table whose provenance declares :mod:`intsim.segexp`'s format): the
  case table holds each segment's narrow codes ``k``, ``b`` and shifts ``ks``, ``bs``; the unit
  multiplies the narrow ``k`` and shifts ``k*x`` and ``b`` onto the wide grid
  (:mod:`hw_models.plan`), which is intsim's evaluation of the wide table bit for bit.

The header comment ``// y_frac_bits = N`` gives the output's fractional bits. The same table
gives the same bytes.

Rounding modes: all of :data:`intsim.fixedpoint.ROUNDING_MODES` (floor, half_up, half_away,
half_even), as ``floor(acc / 2**t) + inc`` with ``inc`` from the dropped bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intsim import GQAError
from intsim.datapath import SEGMENT_RULES
from intsim.fileio import atomic_write_text, check_writable
from intsim.fixedpoint import ROUNDING_MODES

from intsim.segexp import segment_codes

from .plan import UnitPlan, plan_table

# Verilog-2005 (IEEE 1364) and SystemVerilog-2017 (IEEE 1800) reserved words: Verilator parses
# .v files with the SystemVerilog keyword set, so a module name must avoid both.
_V2005 = """always and assign automatic begin buf bufif0 bufif1 case casex casez cell cmos config deassign
default defparam design disable edge else end endcase endconfig endfunction endgenerate endmodule
endprimitive endspecify endtable endtask event for force forever fork function generate genvar highz0
highz1 if ifnone incdir include initial inout input instance integer join large liblist library localparam
macromodule medium module nand negedge nmos nor noshowcancelled not notif0 notif1 or output parameter pmos
posedge primitive pull0 pull1 pulldown pullup pulsestyle_onevent pulsestyle_ondetect rcmos real realtime reg
release repeat rnmos rpmos rtran rtranif0 rtranif1 scalared showcancelled signed small specify specparam strong0
strong1 supply0 supply1 table task time tran tranif0 tranif1 tri tri0 tri1 triand trior trireg unsigned use
uwire vectored wait wand weak0 weak1 while wire wor xnor xor"""
_SV2017 = """accept_on alias always_comb always_ff always_latch assert assume before bind bins binsof bit break
byte chandle checker class clocking const constraint context continue cover covergroup coverpoint cross dist
do endchecker endclass endclocking endgroup endinterface endpackage endprogram endproperty endsequence enum
eventually expect export extends extern final first_match foreach forkjoin global iff ignore_bins
illegal_bins implements implies import inside int interconnect interface intersect join_any join_none let
local logic longint matches modport nettype new nexttime null package packed priority program property
protected pure rand randc randcase randsequence ref reject_on restrict return s_always s_eventually
s_nexttime s_until s_until_with sequence shortint shortreal soft solve static string strong struct super
sync_accept_on sync_reject_on tagged this throughout timeprecision timeunit type typedef union unique unique0
until until_with untyped var virtual void wait_order weak wildcard with within"""
RESERVED = frozenset(_V2005.split()) | frozenset(_SV2017.split())
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")
MAX_NAME = 200


def check_name(name, field: str = "name") -> str:
    """A Verilog module name: a simple identifier, not a reserved word."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise GQAError(field, f"{name!r} is not a Verilog identifier",
                       "use letters, digits, _ and $, starting with a letter or _")
    if name in RESERVED:
        raise GQAError(field, f"{name!r} is a Verilog/SystemVerilog reserved word", "choose another module name")
    if len(name) > MAX_NAME:
        raise GQAError(field, f"is {len(name)} characters long", f"use at most {MAX_NAME}")
    return name


def default_name(table, scale=None) -> str:
    fn = re.sub(r"[^A-Za-z0-9_]", "_", str(table.function)) or "f"
    base = f"pwl_{fn}_{table.entries}"
    if scale is None:
        return base
    return f"{base}_e{scale}" if scale >= 0 else f"{base}_em{-scale}"


# --- literal and expression helpers -------------------------------------------------------------

def _lit(value: int, width: int, signed: bool = True) -> str:
    """Sized hex literal of ``value`` in ``width``-bit two's complement."""
    v = int(value)
    lo = -(1 << (width - 1)) if signed else 0
    hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    if not lo <= v <= hi:
        raise GQAError("value", f"{v} does not fit {width} {'signed' if signed else 'unsigned'} bits")
    digits = max(1, (width + 3) // 4)
    return f"{width}'{'s' if signed else ''}h{v & ((1 << width) - 1):0{digits}x}"


def _sext(sig: str, w_from: int, w_to: int) -> str:
    """``sig`` (``w_from`` bits) sign-extended to ``w_to`` bits, as a signed expression."""
    if w_to < w_from:
        raise AssertionError(f"cannot sign-extend {sig} from {w_from} to {w_to} bits")
    if w_to == w_from:
        return sig
    return f"$signed({{{{{w_to - w_from}{{{sig}[{w_from - 1}]}}}}, {sig}}})"


def _ubits(max_value: int) -> int:
    return max(1, int(max_value).bit_length())


@dataclass(frozen=True)
class VerilogUnit:
    """A generated module: its name, text, structure and the table it came from."""

    name: str
    text: str
    plan: UnitPlan
    pipeline: int
    table: object

    @property
    def latency(self) -> int:
        return self.pipeline

    def vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(e_index, x, y)`` for every input code at every scale, from intsim."""
        codes = self.table.datapath.codes()
        es, xs, ys = [], [], []
        for k, s in enumerate(self.plan.scales):
            y = np.asarray(self.table.output_codes(codes, s.e), dtype=np.int64) << np.int64(s.y_shift)
            es.append(np.full(codes.shape, k, dtype=np.int64))
            xs.append(codes)
            ys.append(y)
        e, x, y = np.concatenate(es), np.concatenate(xs), np.concatenate(ys)
        lim = 1 << (self.plan.y_bits - 1)
        if np.any(y < -lim) or np.any(y >= lim):
            raise AssertionError(f"{self.name}: an intsim output exceeds the {self.plan.y_bits}-bit port")
        return e, x, y

    def vector_hex(self) -> str:
        """One word per line, ``{e, x, y}`` (``{x, y}`` for one scale), hex, two's complement."""
        p = self.plan
        e, x, y = self.vectors()
        wx, wy, we = p.in_bits, p.y_bits, p.e_bits
        digits = (wx + wy + we + 3) // 4
        if wx + wy + we <= 62:
            word = (e << np.int64(wx + wy)) | ((x & np.int64((1 << wx) - 1)) << np.int64(wy)) | \
                (y & np.int64((1 << wy) - 1))
            return "".join(f"{w:0{digits}x}\n" for w in word.tolist())
        return "".join(f"{(ei << (wx + wy)) | ((xi & ((1 << wx) - 1)) << wy) | (yi & ((1 << wy) - 1)):0{digits}x}\n"
                       for ei, xi, yi in zip(e.tolist(), x.tolist(), y.tolist()))

    def write(self, path) -> Path:
        return atomic_write_text(path, self.text, "--output")


# --- the module -----------------------------------------------------------------------------------

def _header(table, plan: UnitPlan, name: str, pipeline: int) -> list[str]:
    dp = table.datapath
    lines = [f"// {name}: integer PWL unit generated by gqa-sim (hw_models.verilog) from intsim's datapath; do not edit",
             f"// function {table.function} on [{table.domain[0]:g}, {table.domain[1]:g}], {plan.entries} entries, "
             f"method {table.provenance.get('method', '?')}",
             f"// datapath: {dp.describe()}"]
    if plan.segexp is not None:
        f = plan.segexp
        lines.append(f"// per-segment exponents: slope s{f.slope_bits} with exponent {f.slope_fracs[0]}..{f.slope_fracs[1]}"
                     f", intercept s{f.icpt_bits} with exponent {f.icpt_fracs[0]}..{f.icpt_fracs[1]}; "
                     f"K_i*x = (k_i*x) <<< ks_i, B_i = b_i <<< bs_i (ks_i = {f.slope_fracs[1]} - s_i, "
                     f"bs_i = {f.icpt_fracs[1]} - t_i)")
    if plan.multi:
        mapping = ", ".join(f"{k}->{s.e}" for k, s in enumerate(plan.scales))
        lines.append(f"// scales: input e is the scale index (e=k: x = q * 2**-scales[k]); {mapping}; "
                     f"indices past the set use the last scale")
    else:
        lines.append(f"// scale: e = {plan.scales[0].e} (x = q * 2**-{plan.scales[0].e})")
    lines.append(f"// segment i = #{{j : x {_cmp(plan)} P_j(e)}} (segment rule {plan.segment_rule}); "
                 "acc = (K_i * x) <<< SK(e) + B_i <<< SB(e)"
                 + ("" if plan.out_bits is None else f"; y = saturate(round_{plan.rounding}(acc >>> T(e)))"))
    if plan.out_bits is None and plan.aligned:
        lines.append("// output: full precision, every scale aligned to the common fraction Fc = max F(e)")
    elif plan.out_bits is None:
        lines.append("// output: full precision accumulator")
    else:
        lines.append(f"// output: s{plan.out_bits}.{plan.out_frac}, rounding {plan.rounding}, saturating")
    lines.append("// latency: " + ("1 cycle (register after the multiplier; y follows x one rising clk edge later)"
                                   if pipeline else "0 (combinational)"))
    lines.append(f"// y_frac_bits = {plan.y_frac}")
    return lines


def _cmp(plan: UnitPlan) -> str:
    """The comparator of the datapath's segment rule (Verilog spells it as Python does)."""
    return SEGMENT_RULES[plan.segment_rule].comparator


def _per_scale(plan: UnitPlan, name: str, values: list[int], sel: str, decl: list[str], cases: dict) -> str:
    """A per-scale constant: a localparam if equal at every scale, else a reg set in a case on ``sel``."""
    if len(set(values)) == 1:
        decl.append(f"  localparam integer {name.upper()} = {values[0]};")
        return name.upper()
    w = _ubits(max(values))
    decl.append(f"  reg [{w - 1}:0] {name};")
    cases.setdefault(sel, []).append((name, [_lit(v, w, signed=False) for v in values]))
    return name


def _case_block(sel: str, width: int, assigns: list[tuple[str, list[str]]], n: int) -> list[str]:
    out = ["  always @(*) begin", f"    case ({sel})"]
    for k in range(n):
        label = "default" if k == n - 1 else _lit(k, width, signed=False)
        body = " ".join(f"{nm} = {vals[k]};" for nm, vals in assigns)
        out.append(f"      {label}: begin {body} end")
    out += ["    endcase", "  end"]
    return out


def _round_stage(plan: UnitPlan, tt: str) -> list[str]:
    """acc -> y: round_shift by T(e) (after the constant pre-shift L), then saturate."""
    acc_w, rw, rb, out = plan.acc_bits, plan.round_width, plan.rounded_bits, plan.out_bits
    pre = plan.round_pre_shift
    body = [f"  // output: round ({plan.rounding}) by {tt} after a left shift by {pre}, then saturate to {out} bits"]
    ext = _sext("acc", acc_w, rw - pre)
    body.append(f"  wire signed [{rw - 1}:0] accl = " + (f"$signed({{{ext}, {pre}'d0}});" if pre else f"{ext};"))
    tmin = min(s.t for s in plan.scales) + pre
    fw = rw - tmin  # the floor quotient's width: bits below the smallest shift never reach it
    shift = "" if tt[0].isupper() else f" >>> ({tt} - {_ubits(plan.round_shift_max)}'d{tmin})"
    body.append(f"  wire signed [{fw - 1}:0] fq = $signed(accl[{rw - 1}:{tmin}]){shift};")
    if plan.rounding == "floor":
        inc = "1'b0"
    else:
        body.append(f"  wire [{rw - 1}:0] lowmask = ~({{{rw}{{1'b1}}}} << {tt});")
        body.append(f"  wire [{rw - 1}:0] rem = accl & lowmask;")
        body.append("  wire rhalf = |(rem & (lowmask & ~(lowmask >> 1)));  // the bit just below the cut")
        if plan.rounding == "half_up":
            inc = "rhalf"
        else:
            body.append("  wire rsticky = |(rem & (lowmask >> 1));          // any bit below it")
            inc = {"half_away": f"rhalf & (rsticky | ~accl[{rw - 1}])",
                   "half_even": "rhalf & (rsticky | fq[0])"}[plan.rounding]
    body.append(f"  wire inc = {inc};")
    body.append(f"  wire signed [{rb - 1}:0] r = {_sext('fq', fw, rb)} + $signed({{{rb - 1}'d0, inc}});")
    if rb > out:
        body.append(f"  wire [{rb - out}:0] top = r[{rb - 1}:{out - 1}];")
        body.append("  wire ovf = ~((&top) | ~(|top));  // the dropped high bits are not all sign copies")
        body.append(f"  assign y = ovf ? (r[{rb - 1}] ? {_lit(-(1 << (out - 1)), out)} : {_lit((1 << (out - 1)) - 1, out)})"
                    f" : r[{out - 1}:0];")
    else:
        body.append(f"  assign y = {_sext('r', rb, out)};")
    return body


def _module(table, plan: UnitPlan, name: str, pipeline: int) -> str:
    n, nb, S = plan.entries, plan.entries - 1, len(plan.scales)
    IN, KW, BW, PW, ACC, OUT = plan.in_bits, plan.slope_bits, plan.icpt_bits, plan.prod_bits, plan.acc_bits, plan.y_bits
    EW, IW, CB = plan.e_bits, plan.idx_bits, plan.bp_bits
    lines = _header(table, plan, name, pipeline)
    ports = (["  input clk,"] if pipeline else []) + ([f"  input [{EW - 1}:0] e,"] if plan.multi else [])
    ports += [f"  input signed [{IN - 1}:0] x,", f"  output signed [{OUT - 1}:0] y"]
    lines += [f"module {name} (", *ports, ");"]

    # comparator constants
    decl, cases = [], {}
    lines.append(f"  // comparator constants P_j(e), {CB} bits (" + (
        "one past the largest code reaches no segment above)" if plan.segment_rule == "ge" else
        "one below the smallest code sends every code above)"))
    if plan.multi:
        for j in range(nb):
            lines.append(f"  reg signed [{CB - 1}:0] p{j};")
        cases["e"] = [(f"p{j}", [_lit(s.bp[j], CB) for s in plan.scales]) for j in range(nb)]
        bp_names = [f"p{j}" for j in range(nb)]
    else:
        bp = plan.scales[0].bp
        for j in range(nb):
            lines.append(f"  localparam signed [{CB - 1}:0] P{j} = {_lit(bp[j], CB)};  // {bp[j]}")
        bp_names = [f"P{j}" for j in range(nb)]
    # per-scale shifts (read in stage 2)
    sel2 = "e_s" if plan.multi else ""
    sk = _per_scale(plan, "sk", [s.sk for s in plan.scales], sel2, decl, cases)
    sb = _per_scale(plan, "sb", [s.sb for s in plan.scales], sel2, decl, cases)
    tt = None
    if plan.out_bits is not None:
        tt = _per_scale(plan, "tt", [s.t + plan.round_pre_shift for s in plan.scales], sel2, decl, cases)
    if "e" in cases:
        lines += _case_block("e", EW, cases["e"], S)

    # comparators, index, coefficient select, multiplier
    lines.append(f"  wire signed [{CB - 1}:0] xc = {_sext('x', IN, CB)};")
    for j in range(nb):
        lines.append(f"  wire c{j} = (xc {_cmp(plan)} {bp_names[j]});")
    terms = " + ".join(f"{{{IW - 1}'d0, c{j}}}" if IW > 1 else f"c{j}" for j in range(nb))
    lines.append(f"  wire [{IW - 1}:0] idx = {terms};  // i = #{{j : x {_cmp(plan)} P_j}}")
    lines += _coefficients(table, plan)

    # stage boundary
    if pipeline:
        regs = [f"  reg signed [{PW - 1}:0] prod_s;", f"  reg signed [{BW - 1}:0] b_s;"]
        assign = ["prod_s <= prod;", "b_s <= b;"]
        if plan.multi:
            regs.append(f"  reg [{EW - 1}:0] e_s;")
            assign.append("e_s <= e;")
        lines += ["  // pipeline register after the multiplier", *regs,
                  f"  always @(posedge clk) begin {' '.join(assign)} end"]
    else:
        lines += [f"  wire signed [{PW - 1}:0] prod_s = prod;", f"  wire signed [{BW - 1}:0] b_s = b;"]
        if plan.multi:
            lines.append(f"  wire [{EW - 1}:0] e_s = e;")
    lines += decl
    if sel2 in cases:
        lines += _case_block(sel2, EW, cases[sel2], S)

    # accumulator and output
    lines.append(f"  wire signed [{ACC - 1}:0] acc = ({_sext('prod_s', PW, ACC)} <<< {sk}) + ({_sext('b_s', BW, ACC)} <<< {sb});")
    if plan.out_bits is None:
        lines.append("  assign y = acc;")
    else:
        lines += _round_stage(plan, tt)
    lines += ["endmodule", ""]
    return "\n".join(lines)


def _coefficients(table, plan: UnitPlan) -> list[str]:
    """The index-to-coefficient table and the multiplier: ``prod`` (``K_i * x``, prod_bits) and
    ``b`` (``B_i``, icpt_bits) on the wide grid."""
    n, IN, IW, KW, BW, PW = plan.entries, plan.in_bits, plan.idx_bits, plan.slope_bits, plan.icpt_bits, plan.prod_bits
    if plan.segexp is None:
        out = [f"  reg signed [{KW - 1}:0] k;", f"  reg signed [{BW - 1}:0] b;", "  always @(*) begin", "    case (idx)"]
        for i in range(n):
            label = "default" if i == n - 1 else _lit(i, IW, signed=False)
            kk, bb = int(table.slopes[i]), int(table.intercepts[i])
            out.append(f"      {label}: begin k = {_lit(kk, KW)}; b = {_lit(bb, BW)}; end  // K={kk} B={bb}")
        out += ["    endcase", "  end"]
        out.append(f"  wire signed [{PW - 1}:0] prod = {_sext('k', KW, PW)} * {_sext('x', IN, PW)};")
        return out
    f, NK, NB, KS, BS, NP = plan.segexp, plan.k_bits, plan.b_bits, plan.ks_bits, plan.bs_bits, plan.narrow_prod_bits
    out = [f"  // per segment: narrow codes k, b and their shifts onto the wide grid", f"  reg signed [{NK - 1}:0] k;",
           f"  reg signed [{NB - 1}:0] bn;"]
    out += [f"  reg [{KS - 1}:0] ks;"] if KS else []
    out += [f"  reg [{BS - 1}:0] bs;"] if BS else []
    out += ["  always @(*) begin", "    case (idx)"]
    for i, (g, kk, bb) in enumerate(zip(segment_codes(table, f), table.slopes, table.intercepts)):
        label = "default" if i == n - 1 else _lit(i, IW, signed=False)
        body = [f"k = {_lit(g['slope'], NK)};", f"bn = {_lit(g['icpt'], NB)};"]
        body += [f"ks = {_lit(f.slope_fracs[1] - g['slope_frac'], KS, signed=False)};"] if KS else []
        body += [f"bs = {_lit(f.icpt_fracs[1] - g['icpt_frac'], BS, signed=False)};"] if BS else []
        out.append(f"      {label}: begin {' '.join(body)} end  // {g['slope']}*2^-{g['slope_frac']}, "
                   f"{g['icpt']}*2^-{g['icpt_frac']} (K={int(kk)} B={int(bb)})")
    out += ["    endcase", "  end"]
    out.append(f"  wire signed [{NP - 1}:0] kx = {_sext('k', NK, NP)} * {_sext('x', IN, NP)};  // narrow multiplier")
    # k << ks fits the wide slope code, so (k*x) << ks fits prod_bits; b << bs fits icpt_bits
    out.append(f"  wire signed [{PW - 1}:0] prod = {_sext('kx', NP, PW)}" + (" <<< ks;" if KS else ";"))
    out.append(f"  wire signed [{BW - 1}:0] b = {_sext('bn', NB, BW)}" + (" <<< bs;" if BS else ";"))
    return out


def generate(table, scale=None, name: str | None = None, pipeline: int = 0) -> VerilogUnit:
    """Verilog of ``table``'s unit for one scale ``scale``, or (``None``) for its whole scale set."""
    if isinstance(pipeline, bool) or pipeline not in (0, 1):
        raise GQAError("pipeline", f"must be 0 or 1, got {pipeline!r}",
                       "0: combinational, 1: one register stage after the multiplier")
    if table.datapath.out_rounding not in ROUNDING_MODES:
        raise GQAError("out_rounding", f"{table.datapath.out_rounding!r} is not supported by the generator")
    plan = plan_table(table, scale, align=True)
    if plan.y_bits > 62 or plan.acc_bits > 62 or plan.round_width > 62:
        raise GQAError("datapath", f"needs a {max(plan.y_bits, plan.acc_bits, plan.round_width)}-bit internal value",
                       "the testbench vectors are int64; narrow the formats or the scale set")
    name = check_name(name if name is not None else default_name(table, scale))
    return VerilogUnit(name=name, text=_module(table, plan, name, pipeline), plan=plan, pipeline=pipeline, table=table)


# --- the testbench ---------------------------------------------------------------------------------

def vector_file(unit: VerilogUnit) -> str:
    return f"{unit.name}.hex"


def testbench(units, name: str = "pwl_tb") -> tuple[str, dict[str, str]]:
    """A self-checking testbench for one or several units, and its vector files.

    Returns ``(verilog_text, {file_name: hex_text})``. The testbench reads each unit's
    vectors (``{e, x, y}`` words, see :meth:`VerilogUnit.vector_hex`) with ``$readmemh`` from
    the current directory, applies every one, compares ``y`` with ``!==`` and prints
    ``UNIT <name> errors=N vectors=M`` per unit, then ``RESULT errors=N vectors=M`` and
    ``PASS`` or ``FAIL``. Verilog-2005 with ``#`` delays: iverilog, or Verilator ``--binary``.
    """
    if isinstance(units, VerilogUnit):
        units = [units]
    units = list(units)
    if not units:
        raise GQAError("units", "is empty", "give at least one generated unit")
    name = check_name(name, "testbench name")
    names = [u.name for u in units]
    if len(set(names)) != len(names) or name in names:
        raise GQAError("units", "module names must be distinct (and differ from the testbench's)")
    files = {vector_file(u): u.vector_hex() for u in units}
    L = [f"// {name}: self-checking testbench generated by gqa-sim (hw_models.verilog); do not edit",
         "// vectors: one .hex file per unit in the current directory, words {e, x, y} from intsim's "
         "PWLTable.output_codes",
         "// prints UNIT <name> errors=N vectors=M, then RESULT errors=N vectors=M and PASS or FAIL",
         f"module {name};", "  reg clk;", "  integer i, errors, uerr, total;"]
    run = ["  initial begin", "    clk = 1'b0; errors = 0; total = 0;"]
    for u_i, u in enumerate(units):
        p = u.plan
        nv = len(p.scales) * (1 << p.in_bits)
        vw = p.e_bits + p.in_bits + p.y_bits
        L.append(f"  // unit {u_i}: {u.name}")
        if p.multi:
            L.append(f"  reg [{p.e_bits - 1}:0] e_{u_i};")
        L += [f"  reg signed [{p.in_bits - 1}:0] x_{u_i};", f"  wire signed [{p.y_bits - 1}:0] y_{u_i};",
              f"  reg signed [{p.y_bits - 1}:0] want_{u_i};", f"  reg [{vw - 1}:0] vec_{u_i} [0:{nv - 1}];"]
        conns = ([".clk(clk)"] if u.pipeline else []) + ([f".e(e_{u_i})"] if p.multi else [])
        conns += [f".x(x_{u_i})", f".y(y_{u_i})"]
        L.append(f"  {u.name} u_{u_i} ({', '.join(conns)});")
        lhs = ", ".join(([f"e_{u_i}"] if p.multi else []) + [f"x_{u_i}", f"want_{u_i}"])
        step = "#1 clk = 1'b1; #1 clk = 1'b0; #1;" if u.pipeline else "#1;"
        shown_e = "e=%0d " if p.multi else ""
        shown_args = f"e_{u_i}, " if p.multi else ""
        run += [f"    $readmemh(\"{vector_file(u)}\", vec_{u_i});", "    uerr = 0;",
                f"    for (i = 0; i < {nv}; i = i + 1) begin",
                f"      {{{lhs}}} = vec_{u_i}[i];",
                f"      {step}",
                f"      if (y_{u_i} !== want_{u_i}) begin",
                "        uerr = uerr + 1;",
                f"        if (uerr <= 10) $display(\"MISMATCH {u.name} {shown_e}x=%0d y=%0d want=%0d\", "
                f"{shown_args}x_{u_i}, y_{u_i}, want_{u_i});",
                "      end",
                "    end",
                f"    $display(\"UNIT {u.name} errors=%0d vectors=%0d\", uerr, {nv});",
                f"    errors = errors + uerr; total = total + {nv};"]
    run += ["    $display(\"RESULT errors=%0d vectors=%0d\", errors, total);",
            "    if (errors == 0) $display(\"PASS\"); else $display(\"FAIL\");", "    $finish;", "  end"]
    L += run + ["endmodule", ""]
    return "\n".join(L), files


def write_testbench(units, path, name: str | None = None) -> list[Path]:
    """Write the testbench to ``path`` and its vector files beside it (atomically); returns the paths."""
    p = check_writable(path, "--testbench")
    text, files = testbench(units, name or check_name(re.sub(r"[^A-Za-z0-9_]", "_", p.stem) or "pwl_tb",
                                                       "testbench name"))
    for fname in files:
        check_writable(p.parent / fname, "--testbench")
    written = [atomic_write_text(p, text, "--testbench")]
    for fname, content in sorted(files.items()):
        written.append(atomic_write_text(p.parent / fname, content, "--testbench"))
    return written
