"""``gqa``: search, evaluate and plot PWL tables.

    gqa search gelu --entries 8 -o gelu8.json
    gqa eval gelu8.json
    gqa plot gelu8.json -o gelu8.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from intsim import GQAError, PWLDatapath
from intsim.datapath import SEGMENT_RULES
from intsim.fileio import check_outputs, check_writable
from intsim.table import parse_scales


def _add_datapath_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("datapath (defaults: the GQA-LUT reference's)")
    g.add_argument("--in-bits", type=int, default=8, help="signed input code width (8)")
    g.add_argument("--slope-bits", type=int, default=8)
    g.add_argument("--slope-frac", type=int, default=6)
    g.add_argument("--icpt-bits", type=int, default=8)
    g.add_argument("--icpt-frac", type=int, default=6)
    g.add_argument("--out-bits", type=int, default=None, help="round the output to this width (default: full precision)")
    g.add_argument("--out-frac", type=int, default=None)
    g.add_argument("--out-rounding", default="half_even", help="half_even | half_up | half_away | floor")
    add_segment_rule_arg(g, "ge", "segment comparator: ge (q >= P_j, the GQA-LUT trainer's) or gt (q > P_j, "
                         "the GQA-LUT torch operator's)")


def add_segment_rule_arg(p, default, help):
    """``--segment-rule`` (choices from intsim's registry); ``gqa hw``/``gqa rtl`` use it too."""
    p.add_argument("--segment-rule", default=default, choices=tuple(SEGMENT_RULES), help=help)


SEGMENT_RULE_FOR_FILES = ("comparator convention a GQA-LUT file's breakpoints are read with: ge (default, the "
                          "trainer's np.digitize) or gt (the torch operator's bucketize); gqa-sim files store theirs")


def _datapath(a) -> PWLDatapath:
    return PWLDatapath(in_bits=a.in_bits, slope_bits=a.slope_bits, slope_frac=a.slope_frac, icpt_bits=a.icpt_bits,
                       icpt_frac=a.icpt_frac, out_bits=a.out_bits, out_frac=a.out_frac, out_rounding=a.out_rounding,
                       segment_rule=a.segment_rule)


def _summary(table) -> str:
    prov = table.provenance
    lines = [f"table: {table.function} on [{table.domain[0]:g}, {table.domain[1]:g}], {table.entries} entries, "
             f"scales {list(table.scales)}",
             f"datapath: {table.datapath.describe()}",
             f"method: {prov.get('method', '?')}" + (f", seed {prov['seed']}" if "seed" in prov else "")]
    if prov.get("note"):
        lines.append(f"note: {prov['note']}")
    if prov.get("segment_rule"):  # what a GQA-LUT import assumed
        lines.append(f"segment rule: {prov['segment_rule']}")
    if prov.get("segments"):
        lines.append("per-segment exponents (slope, intercept as code*2^-frac): " + "; ".join(
            f"{g['slope']}*2^-{g['slope_frac']}, {g['icpt']}*2^-{g['icpt_frac']}" for g in prov["segments"]))
    lines.append(_optimum_line(prov.get("optimum")))
    lines.append("breakpoints: " + ", ".join(f"{p:g}" for p in table.breakpoints))
    lines.append("slopes:      " + ", ".join(f"{k:g}" for k in table.slopes_real))
    lines.append("intercepts:  " + ", ".join(f"{b:g}" for b in table.intercepts_real))
    return "\n".join(lines)


def _segment_exponents(a):
    """``--segment-exponents S_LO:S_HI,T_LO:T_HI`` with the narrow widths --slope-bits/--icpt-bits."""
    from gqa_lut.segexp import SegmentExponents

    try:
        s, t = (tuple(int(v) for v in part.split(":")) for part in a.segment_exponents.split(","))
    except ValueError:
        raise GQAError("--segment-exponents", f"{a.segment_exponents!r} is not S_LO:S_HI,T_LO:T_HI",
                       "e.g. 4:8,4:8") from None
    if len(s) != 2 or len(t) != 2:
        raise GQAError("--segment-exponents", f"{a.segment_exponents!r} is not S_LO:S_HI,T_LO:T_HI", "e.g. 4:8,4:8")
    return SegmentExponents(a.slope_bits, s, a.icpt_bits, t)


def _optimum_line(opt) -> str:
    """The provenance's optimum (or certified lower bound) and this table's gap to it."""
    if not isinstance(opt, dict) or "status" not in opt:
        return "optimum: not recorded (gqa search --method exact computes it)"
    if opt["status"] == "unavailable":
        return f"optimum ({opt.get('metric', '?')}): unavailable: {opt.get('reason', '')}"
    g = opt.get("gap")
    gap_txt = "gap n/a" if g is None else f"gap {100 * g:+.2f}%"
    if opt["status"] == "exact":
        return (f"optimum ({opt['metric']}): {opt['value']:.4e}, exact over {opt.get('candidates', '?')} breakpoint "
                f"candidates; this table: {gap_txt}")
    return (f"lower bound ({opt['metric']}): {opt['value']:.4e}, certified (exact over scales "
            f"{opt.get('relaxation', {}).get('exact_scales')}); this table: {gap_txt} at most; "
            f"why not exact: {opt.get('reason', '?')}")


def cmd_search(a) -> int:
    import gqa_lut
    from gqa_lut.gqa_json import save_gqa_json
    from gqa_lut.search import binding_hint

    from gqa_lut.budget import check_search_budget
    from intsim import get_function

    check_outputs({"--output": a.output, "--gqa-json": a.gqa_json})
    domain = tuple(a.domain) if a.domain else None
    scales = parse_scales(a.scales)
    datapath, segexp = _datapath(a), None
    if a.segment_exponents:
        segexp = _segment_exponents(a)
        datapath = PWLDatapath(in_bits=a.in_bits, out_bits=a.out_bits, out_frac=a.out_frac,
                               out_rounding=a.out_rounding, segment_rule=a.segment_rule)
    check_search_budget(get_function(a.function, domain).domain, a.entries, datapath, scales, a.method, a.population,
                        not a.no_dp_seed, a.max_memory_gb)
    t0 = time.perf_counter()
    table = gqa_lut.search(a.function, entries=a.entries, method=a.method, datapath=datapath,
                           segment_exponents=segexp,
                           scales=scales, domain=domain, metric=a.metric, coeffs=a.coeffs,
                           refine=not a.no_refine, population=a.population, generations=a.generations, seed=a.seed,
                           dp_seed=not a.no_dp_seed, exact_seed=not a.no_exact_seed,
                           max_candidates=a.max_candidates, time_limit=a.time_limit,
                           max_memory_gb=a.max_memory_gb, progress=None if not a.quiet else False)
    elapsed = time.perf_counter() - t0
    print(_summary(table))
    print(table.error().report())
    print(f"search time: {elapsed:.2f} s")
    hint = binding_hint(table)
    if hint:
        print(hint)
    if a.output:
        table.save(a.output)
        print(f"wrote {a.output}")
    if a.gqa_json:
        save_gqa_json(table, a.gqa_json)
        print(f"wrote {a.gqa_json} (GQA-LUT layout)")
    return 0


def cmd_eval(a) -> int:
    import gqa_lut

    table = gqa_lut.load(a.table, segment_rule=a.segment_rule)
    err = table.error()
    if a.json:
        print(json.dumps({"function": table.function, "entries": table.entries, **err.to_dict(),
                          "optimum": table.provenance.get("optimum")}, indent=2))
    else:
        print(_summary(table))
        print(err.report())
    return 0


def cmd_plot(a) -> int:
    import gqa_lut
    from .plot import plot_table

    from .plot import figure_format

    check_writable(a.output, "--output")
    figure_format(a.output)
    table = gqa_lut.load(a.table, segment_rule=a.segment_rule)
    plot_table(table, a.output)
    print(f"wrote {a.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gqa_lut import METHODS, __version__
    from gqa_lut.exact import MAX_CANDIDATES
    from gqa_lut.objective import METRICS
    from gqa_lut.fitting import COEFF_METHODS

    p = argparse.ArgumentParser(prog="gqa", description="gqa-sim: PWL LUT search and integer datapath tools")
    p.add_argument("--version", action="version", version=f"gqa-sim {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search a PWL table for a function")
    s.add_argument("function", help="gelu, gelu_tanh, hswish, sigmoid, tanh, silu, exp, reciprocal, rsqrt, softplus")
    s.add_argument("--entries", "-n", type=int, required=True, help="LUT entries (segments)")
    s.add_argument("--method", default="ga", choices=METHODS)
    _add_datapath_args(s)
    s.add_argument("--scales", default="0:6", help="power-of-two input scale exponents: A:B (inclusive) or A,B,C "
                   "(negative ones: --scales=-2:4)")
    s.add_argument("--max-memory-gb", type=float, default=None, help="refuse searches estimated to need more "
                   "(default 4, or GQA_MAX_SEARCH_GB)")
    s.add_argument("--domain", type=float, nargs=2, metavar=("LO", "HI"), help="override the function's domain")
    s.add_argument("--metric", default="mse", choices=METRICS)
    s.add_argument("--coeffs", default="lsq", choices=COEFF_METHODS, help="slope/intercept fit per segment")
    s.add_argument("--no-refine", action="store_true", help="round the fitted lines instead of the exact integer refit")
    s.add_argument("--population", type=int, default=50)
    s.add_argument("--generations", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-dp-seed", action="store_true", help="no per-scale optima or equal-width seeds for the GA")
    s.add_argument("--no-exact-seed", action="store_true", help="do not seed the GA with the exact optimum")
    s.add_argument("--max-candidates", type=int, default=MAX_CANDIDATES,
                   help=f"exact search: most breakpoint candidates ({MAX_CANDIDATES}); beyond it a certified bound")
    s.add_argument("--time-limit", type=float, default=None, help="exact search: seconds per solve (no limit)")
    s.add_argument("--segment-exponents", metavar="S_LO:S_HI,T_LO:T_HI",
                   help="exact search, per-segment exponents: each segment's slope (intercept) code of --slope-bits "
                        "(--icpt-bits) picks its own fraction bits in S_LO..S_HI (T_LO..T_HI)")
    s.add_argument("-o", "--output", help="write the table (gqa-sim JSON)")
    s.add_argument("--gqa-json", help="also write the GQA-LUT JSON layout")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_search)

    e = sub.add_parser("eval", help="error report of a table file (gqa-sim or GQA-LUT JSON)")
    e.add_argument("table")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    add_segment_rule_arg(e, None, SEGMENT_RULE_FOR_FILES)
    e.set_defaults(run=cmd_eval)

    pl = sub.add_parser("plot", help="plot function, approximation and error per scale")
    pl.add_argument("table")
    pl.add_argument("-o", "--output", required=True, help="figure file; its suffix picks the format (.png, .pdf, .svg)")
    add_segment_rule_arg(pl, None, SEGMENT_RULE_FOR_FILES)
    pl.set_defaults(run=cmd_plot)
    from . import hw as _hw, llm as _llm, sim as _sim
    _hw.register(sub)
    _sim.register(sub)
    _llm.register(sub)
    from . import sweep as _sweep
    _sweep.register(sub)
    from . import cheapest as _cheapest
    _cheapest.register(sub)
    return p


RANGE_OPTIONS = ("--scales",)    # options whose value may start with '-' (a negative scale range)


def join_negative_values(argv: list[str]) -> list[str]:
    """``--scales -2:4`` -> ``--scales=-2:4``: argparse would read ``-2:4`` as an option."""
    import re

    out, i = [], 0
    while i < len(argv):
        if argv[i] in RANGE_OPTIONS and i + 1 < len(argv) and re.fullmatch(r"-\d+([:,]-?\d+)*", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv=None) -> int:
    from .stdout import guarded_stdout

    parser = build_parser()
    args = parser.parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    with guarded_stdout():   # a closed or full stdout ends printing, not the command
        try:
            return args.run(args)
        except GQAError as exc:
            print(f"gqa {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"gqa {args.command}: interrupted; no output file was changed", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
