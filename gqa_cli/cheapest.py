"""``gqa cheapest``: the least-cost PWL unit whose table meets an error target (:func:`gqa_sweep.cheapest`).

    gqa cheapest gelu --max-mse 1e-4
    gqa cheapest reciprocal --max-mse 1e-4 --max-abs 0.05 --entries 4,8,16 --objective power
    gqa cheapest exp --max-mse 1e-5 --plot exp_front.png --workers 2
"""

from __future__ import annotations

from intsim import GQAError
from intsim.fileio import check_writable


def _ints(text: str, name: str) -> list[int]:
    """``A:B`` (inclusive) or ``A,B,C``."""
    try:
        values = [int(v) for v in text.split(":" if ":" in text else ",")]
    except ValueError:
        raise GQAError(name, f"{text!r} is not A:B or A,B,C", "e.g. 4,8,16 or 6:10") from None
    if ":" not in text:
        return values
    if len(values) != 2:
        raise GQAError(name, f"{text!r} is not A:B or A,B,C", "e.g. 4,8,16 or 6:10")
    if values[0] > values[1]:
        raise GQAError(name, f"{text!r} is an empty range (contradictory bounds)", "give A:B with A <= B")
    return list(range(values[0], values[1] + 1))


def _formats(text: str, name: str) -> list[tuple[int, int]]:
    """``BITS.FRAC,...`` (e.g. 8.6,9.6)."""
    try:
        return [tuple(int(v) for v in part.split(".")) for part in text.split(",")]
    except ValueError:
        raise GQAError(name, f"{text!r} is not BITS.FRAC,...", "e.g. 8.6,9.6,10.7") from None


def cmd_cheapest(a) -> int:
    from gqa_sweep import cheapest
    from gqa_sweep.cheapest import DEFAULT_FORMATS

    from .main import _segment_exponents, _summary

    if a.plot:
        check_writable(a.plot, "--plot")
    if a.workers is not None and a.scheduler is not None:
        raise GQAError("--workers", "given together with --scheduler", "the cluster decides its workers; drop one")
    segexp = []
    if a.segment_exponents:
        a.slope_bits, a.icpt_bits = a.segexp_bits, a.segexp_bits
        segexp = [_segment_exponents(a)]
    kw = {}
    if a.scales is not None:
        kw["scales"] = a.scales
    res = cheapest(a.function, max_mse=a.max_mse, max_abs=a.max_abs, domain=tuple(a.domain) if a.domain else None,
                   entries=_ints(a.entries, "--entries"), in_bits=_ints(a.in_bits, "--in-bits"),
                   slope_formats=_formats(a.slope_formats, "--slope-formats") if a.slope_formats else DEFAULT_FORMATS,
                   icpt_formats=_formats(a.icpt_formats, "--icpt-formats") if a.icpt_formats else DEFAULT_FORMATS,
                   segment_exponents=segexp, objective=a.objective, runners_up=a.runners_up,
                   max_configs=a.max_configs, workers=a.workers, scheduler=a.scheduler,
                   progress=False if a.quiet else None, **kw)
    print(res.summary())
    print()
    print("winner's table:")
    print(_summary(res.winner.table))
    if a.plot:
        res.plot(a.plot)
        print(f"wrote {a.plot}")
    return 0


def register(sub) -> None:
    """Add ``cheapest`` to the ``gqa`` subcommands."""
    from gqa_sweep.cheapest import MAX_CONFIGS, OBJECTIVES

    s = sub.add_parser("cheapest", help="the least-cost unit (entries, widths) whose table meets an error target")
    s.add_argument("function", help="gelu, silu, exp, reciprocal, rsqrt, ... (gqa search's functions)")
    s.add_argument("--max-mse", type=float, default=None, help="target: mean MSE over the scale set")
    s.add_argument("--max-abs", type=float, default=None, help="target: largest |error| over every scale and code")
    s.add_argument("--scales", default=None, help="power-of-two input scale exponents: A:B or A,B,C (0:6)")
    s.add_argument("--domain", type=float, nargs=2, metavar=("LO", "HI"), help="override the function's domain")
    s.add_argument("--entries", default="4,8,16", help="entry counts: A:B or A,B,C (4,8,16)")
    s.add_argument("--in-bits", default="8", help="input widths: A:B or A,B,C (8)")
    s.add_argument("--slope-formats", default=None, help="slope formats BITS.FRAC,... (default: 6..10 bits with 2 "
                   "or 3 integer bits)")
    s.add_argument("--icpt-formats", default=None, help="intercept formats BITS.FRAC,... (same default)")
    s.add_argument("--segment-exponents", metavar="S_LO:S_HI,T_LO:T_HI", default=None,
                   help="also units whose segments pick their own exponents in these ranges (codes of --segexp-bits)")
    s.add_argument("--segexp-bits", type=int, default=8, help="narrow code width with --segment-exponents (8)")
    s.add_argument("--objective", default="area", choices=OBJECTIVES, help="cost to minimise (area)")
    s.add_argument("--runners-up", type=int, default=3, help="report the next N units that meet the target (3)")
    s.add_argument("--max-configs", type=int, default=MAX_CONFIGS,
                   help=f"refuse a space of more configurations ({MAX_CONFIGS})")
    s.add_argument("--plot", default=None, help="PNG: error against area of the searched units, with the target")
    s.add_argument("--workers", type=int, default=None, help="local worker processes (default: in this process)")
    s.add_argument("--scheduler", default=None, help="a dask.distributed scheduler address (tcp://HOST:PORT)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_cheapest)
