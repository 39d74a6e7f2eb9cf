"""``gqa hw`` (area and power of a PWL unit, INT against FP32/INT32) and ``gqa rtl`` (Verilog).

    gqa hw gelu8.json                         # the table's unit at 28 nm, 500 MHz
    gqa hw --entries 16 --in-bits 8 --json    # a unit from widths alone
    gqa hw --entries 8 --segment-exponents 4:8,4:8   # per-segment exponents (s8 codes) from widths
    gqa hw gelu8_segexp.json                  # a table searched with --segment-exponents: its narrow unit
    gqa hw gelu8.json --synth                 # plus yosys cell and transistor counts
    gqa hw gelu8.json --synth sky130          # mapped onto SkyWater 130 nm cells, beside the model
    gqa hw --components --node 45             # the component table with its sources
    gqa rtl gelu8.json --scale 3 -o gelu8_e3.v --testbench gelu8_e3_tb.v
    gqa rtl gelu8.json -o gelu8.v             # the unit serving every scale (input e)
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from intsim import GQAError, PWLDatapath, PWLTable
from intsim.fileio import check_outputs
from intsim.table import parse_scales

DATAPATH_FIELDS = ("in_bits", "slope_bits", "slope_frac", "icpt_bits", "icpt_frac", "out_bits", "out_frac",
                   "out_rounding")


def _add_width_args(p):
    g = p.add_argument_group("datapath (with a table: overrides its widths; else defaults s8, s8.6, s8.6)")
    g.add_argument("--in-bits", type=int, default=None)
    g.add_argument("--slope-bits", type=int, default=None)
    g.add_argument("--slope-frac", type=int, default=None)
    g.add_argument("--icpt-bits", type=int, default=None)
    g.add_argument("--icpt-frac", type=int, default=None)
    g.add_argument("--out-bits", type=int, default=None, help="rounded output width (default: full precision)")
    g.add_argument("--out-frac", type=int, default=None)
    g.add_argument("--out-rounding", default=None, help="half_even | half_up | half_away | floor")


def _overrides(a) -> dict:
    return {f: getattr(a, f) for f in DATAPATH_FIELDS if getattr(a, f) is not None}


def _load_table(path, overrides: dict | None = None, segment_rule: str | None = None) -> PWLTable:
    import gqa_lut

    table = gqa_lut.load(path, segment_rule=segment_rule)
    if overrides:
        dp = dataclasses.replace(table.datapath, **overrides)
        # re-validates: coefficients that exceed the declared widths are refused with the field named
        table = PWLTable(function=table.function, domain=table.domain, datapath=dp, scales=table.scales,
                         breakpoints=table.breakpoints, slopes=table.slopes, intercepts=table.intercepts,
                         explicit_codes=table.explicit_codes, provenance=dict(table.provenance))
    return table


def _unit_config(a):
    """(UnitConfig, table or None) from the arguments of ``gqa hw``."""
    from hw_models import UnitConfig

    kw = dict(programmable=not a.fixed, pipeline=a.pipeline, io_registers=not a.no_io_registers)
    if a.table is not None:
        if a.entries is not None:
            raise GQAError("--entries", "given together with a table", "the table fixes the entry count; drop one")
        if a.scales is not None:
            raise GQAError("--scales", "given together with a table", "the table fixes its scale set; drop --scales")
        if a.segment_exponents:
            raise GQAError("--segment-exponents", "given together with a table",
                           "the table's provenance declares its coefficient format; drop --segment-exponents")
        table = _load_table(a.table, _overrides(a), a.segment_rule)
        return UnitConfig.from_table(table, None, **kw), table
    if a.entries is None:
        raise GQAError("table", "no table file and no --entries", "give a table file, or --entries N and the widths")
    scales = parse_scales(a.scales or "0:6")
    if a.segment_exponents:
        dp, fmt = _segexp_datapath(a)
        return UnitConfig.from_datapath(dp, a.entries, scales, segment_exponents=fmt, **kw), None
    dp = PWLDatapath(**_overrides(a))
    return UnitConfig.from_datapath(dp, a.entries, scales, **kw), None


def _segexp_datapath(a):
    """``(wide datapath, SegmentExponents)`` of ``--segment-exponents`` with --slope-bits/--icpt-bits (default 8)."""
    from .main import _segment_exponents

    for flag in ("slope_frac", "icpt_frac"):
        if getattr(a, flag) is not None:
            raise GQAError(f"--{flag.replace('_', '-')}", "given together with --segment-exponents, whose exponent "
                           "ranges set the fractions", "drop it")
    narrow = argparse.Namespace(segment_exponents=a.segment_exponents, slope_bits=a.slope_bits or 8,
                                icpt_bits=a.icpt_bits or 8)
    fmt = _segment_exponents(narrow)
    rest = {k: v for k, v in _overrides(a).items() if k not in ("slope_bits", "icpt_bits")}
    return fmt.wide_datapath(**rest), fmt


def _fmt_row(name, u) -> str:
    return f"{name:<6} {u.area_um2:>11.1f} {u.power_mw:>10.4f} {u.energy_pj:>11.4f} {u.leakage_mw * 1e3:>11.3f}"


def _print_sky130(sky):
    s = sky["synth"]
    print()
    print(f"sky130_fd_sc_hd ({s['tool']}; synth, dfflibmap, abc -liberty, stat -liberty; "
          f"Liberty from {s['library']['source'].split(' (')[0]}):")
    print(f"  synthesized {sky['area_um2']:.1f} um2, {sky['cells']} cells ({sky['flip_flops']} flip-flops), "
          f"depth {sky['depth']} cells (unit delay)")
    print(f"  model at 130 nm ({sky['model_structure']}): {sky['model_area_um2']:.1f} um2 "
          f"({sky['model_error_pct']:+.1f}%); x{sky['sky130_fit']:.3f} sky130 fit: {sky['model_fit_area_um2']:.1f} um2 "
          f"({sky['model_fit_error_pct']:+.1f}%)")
    print(f"  transistors: {sky['transistors_spice']} (cells' SPICE netlists), "
          f"{sky['transistors_yosys_cmos']} (yosys stat -tech cmos before mapping)")
    print("  model by component (the generated unit is one flat module):")
    for name, area in sky["model_breakdown"].items():
        print(f"    {name:<20} {area:>10.1f} um2")


def _print_report(cfg, result, a, synth):
    units, savings = result["units"], result["savings_pct"]
    cal = units["int"].calibration
    print(f"PWL unit at {units['int'].node_nm} nm, {a.freq_mhz:g} MHz, activity {a.activity:g}; calibration "
          f"{cal.name} (area x{cal.area:.3f}, energy x{cal.energy:.3f})")
    print(f"int unit: {cfg.describe()}")
    print()
    print(f"{'unit':<6} {'area um2':>11} {'power mW':>10} {'energy pJ':>11} {'leakage uW':>11}")
    for name in ("int", "fp32", "int32"):
        print(_fmt_row(name, units[name]))
    print()
    for ref in ("fp32", "int32"):
        s = savings[ref]
        print(f"int vs {ref}: area -{s['area_um2']:.1f}%, power -{s['power_mw']:.1f}%, energy -{s['energy_pj']:.1f}%")
    print()
    print("int unit breakdown:")
    total = units["int"].area_um2
    print(f"  {'component':<20} {'area um2':>10} {'share':>6} {'energy pJ':>10}  detail")
    for name, b in units["int"].breakdown().items():
        print(f"  {name:<20} {b['area_um2']:>10.1f} {100 * b['area_um2'] / total:>5.1f}% {b['energy_pj']:>10.4f}  "
              f"{b['detail']}")
    if synth is not None:
        print()
        print(f"yosys ({synth['tool']}; synth -top {synth['top']}; stat -tech cmos) on the generated Verilog:")
        print(f"  cells {synth['cells']}, transistors {synth['transistors']}")
        print(f"  model, same structure ({synth['model']['structure']}): {synth['model']['gate_equivalents']:.0f} GE "
              f"~ {synth['model']['transistors']:.0f} transistors (4 per NAND2 GE); "
              f"model / yosys = {synth['model']['transistors'] / synth['transistors']:.2f}")


def _synth(table, pipeline: int) -> dict:
    from hw_models import UnitConfig, generate
    from hw_models.pwl_unit import model_gate_equivalents
    from hw_models.synth import synthesize

    if table is None:
        raise GQAError("--synth", "needs a table file", "the Verilog is generated from a table's coefficients")
    unit = generate(table, None, pipeline=pipeline)
    res = synthesize(unit.text, unit.name).to_dict()
    cfg = UnitConfig.from_table(table, None, programmable=False, pipeline=pipeline, io_registers=False, align=True)
    ge = model_gate_equivalents(cfg)
    res["model"] = {"structure": "fixed coefficients, all scales, no I/O registers", "gate_equivalents": ge,
                    "transistors": 4 * ge}
    return res


def _sky130(table, pipeline: int) -> dict:
    from hw_models.synth import unit_on_sky130

    if table is None:
        raise GQAError("--synth", "needs a table file", "the Verilog is generated from a table's coefficients")
    return unit_on_sky130(table, None, pipeline)


def cmd_hw(a) -> int:
    from hw_models import compare
    from hw_models.scaling import ComponentLibrary

    if a.components:
        rows = ComponentLibrary(a.node).table()
        if a.json:
            print(json.dumps({"node_nm": a.node, "components": rows}, indent=2))
        else:
            print(f"components at {a.node} nm (area um2, energy pJ per operation; full sources: --json)")
            for r in rows:
                print(f"  {r['component']:<16} {r['params']:<14} {r['area_um2']:>10.2f} {r['energy_pj']:>9.4f}  "
                      f"{r['cite']}")
        return 0
    cfg, table = _unit_config(a)
    result = compare(cfg, node=a.node, freq_mhz=a.freq_mhz, activity=a.activity, calibration=a.calibration)
    synth = _synth(table, a.pipeline) if a.synth == "cmos" else None
    sky = _sky130(table, a.pipeline) if a.synth == "sky130" else None
    if a.json:
        out = {name: result["units"][name].to_dict() for name in ("int", "fp32", "int32")}
        out.update({"savings_pct": result["savings_pct"], "node_nm": result["units"]["int"].node_nm,
                    "freq_mhz": a.freq_mhz, "activity": a.activity,
                    "calibration": result["units"]["int"].calibration.to_dict()})
        if synth is not None:
            out["synth"] = synth
        if sky is not None:
            out["sky130"] = sky
        print(json.dumps(out, indent=2))
    else:
        _print_report(cfg, result, a, synth)
        if sky is not None:
            _print_sky130(sky)
    return 0


def _parse_scale(text: str):
    if text is None or text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise GQAError("--scale", f"{text!r} is not an integer scale exponent or 'all'") from None


def cmd_rtl(a) -> int:
    from hw_models.verilog import check_name, generate, write_testbench

    if a.name is not None:
        check_name(a.name, "--name")
    check_outputs({"--output": a.output, "--testbench": a.testbench})
    table = _load_table(a.table, segment_rule=a.segment_rule)
    unit = generate(table, _parse_scale(a.scale), name=a.name, pipeline=a.pipeline)
    p = unit.plan
    unit.write(a.output)
    ports = (["clk"] if a.pipeline else []) + ([f"e[{p.e_bits - 1}:0]"] if p.multi else []) + \
        [f"x s{p.in_bits}", f"y s{p.y_bits}"]
    print(f"wrote {a.output}: module {unit.name} ({', '.join(ports)}), y_frac_bits = {p.y_frac}, "
          f"{'latency 1' if a.pipeline else 'combinational'}, "
          + (f"scales {[s.e for s in p.scales]} (e = index)" if p.multi else f"scale e = {p.scales[0].e}"))
    if a.testbench:
        written = write_testbench([unit], a.testbench)
        print(f"wrote {written[0]} and {', '.join(str(w) for w in written[1:])} "
              f"(run the simulator in {written[0].parent or '.'}; it prints PASS or FAIL)")
    return 0


def register(sub) -> None:
    """Add ``hw`` and ``rtl`` to the ``gqa`` subcommands."""
    from .main import SEGMENT_RULE_FOR_FILES, add_segment_rule_arg

    h = sub.add_parser("hw", help="area and power of a PWL unit against its FP32 and INT32 counterparts")
    h.add_argument("table", nargs="?", help="table file (gqa-sim or GQA-LUT JSON); or give --entries")
    h.add_argument("--entries", "-n", type=int, default=None, help="LUT entries, without a table")
    _add_width_args(h)
    h.add_argument("--scales", default=None, help="scale set without a table: A:B or A,B,C (default 0:6)")
    h.add_argument("--segment-exponents", metavar="S_LO:S_HI,T_LO:T_HI", default=None,
                   help="without a table: per-segment exponents, --slope-bits/--icpt-bits narrow codes (default 8)")
    h.add_argument("--fixed", action="store_true", help="hard-wired coefficients (default: programmable registers)")
    h.add_argument("--pipeline", type=int, default=0, choices=(0, 1), help="register stage after the multiplier")
    h.add_argument("--no-io-registers", action="store_true", help="leave out the input/output registers")
    h.add_argument("--node", type=int, default=28, help="technology node in nm (28: interpolated)")
    h.add_argument("--freq-mhz", type=float, default=500.0)
    h.add_argument("--activity", type=float, default=1.0, help="fraction of cycles that evaluate (1.0)")
    h.add_argument("--calibration", default="paper", choices=("paper", "none"),
                   help="paper: fitted on the GQA-LUT INT8 unit; none: component data as published")
    h.add_argument("--json", action="store_true", help="print a JSON object (keys int, fp32, int32, ...)")
    h.add_argument("--synth", nargs="?", const="cmos", default=None, choices=("cmos", "sky130"),
                   help="also run yosys on the generated Verilog (needs a table): cmos (default) = generic cells "
                        "and transistor estimate; sky130 = mapped onto the SkyWater 130 nm high-density cells")
    add_segment_rule_arg(h, None, SEGMENT_RULE_FOR_FILES)
    h.add_argument("--components", action="store_true",
                   help="print the component table at --node and exit (published, derived and structural FP rows)")
    h.set_defaults(run=cmd_hw)

    r = sub.add_parser("rtl", help="synthesizable Verilog of a table's integer PWL unit")
    r.add_argument("table", help="table file (gqa-sim or GQA-LUT JSON)")
    r.add_argument("--scale", default="all", help="scale exponent E, or 'all' for the unit with an e input (default)")
    r.add_argument("-o", "--output", required=True, help="Verilog file")
    r.add_argument("--name", default=None, help="module name (default pwl_<function>_<entries>[_e<E>])")
    r.add_argument("--pipeline", type=int, default=0, choices=(0, 1), help="1: register after the multiplier")
    r.add_argument("--testbench", default=None,
                   help="also write a self-checking testbench here, with its vectors (.hex) beside it")
    add_segment_rule_arg(r, None, SEGMENT_RULE_FOR_FILES)
    r.set_defaults(run=cmd_rtl)
