"""Runners for the real tools: yosys (size), iverilog and Verilator (bit-exact simulation).

Each runner finds its tool on ``PATH``; a missing tool raises :class:`ToolMissing` (a
:class:`intsim.GQAError` naming the tool and how to install it), so callers can skip with the
reason. Debian packages: ``yosys``, ``iverilog``, ``verilator``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from intsim import GQAError

from . import components as _components
from .verilog import VerilogUnit, check_name, testbench

DEBIAN_PACKAGE = {"yosys": "yosys", "iverilog": "iverilog", "vvp": "iverilog", "verilator": "verilator"}


class ToolMissing(GQAError):
    """An external tool is not installed."""

    def __init__(self, tool: str):
        self.tool = tool
        super().__init__(tool, "is not installed (not found on PATH)",
                         f"install it, e.g. apt-get install {DEBIAN_PACKAGE.get(tool, tool)}")


def find_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(tool)
    return path


def missing_tools(*tools: str) -> list[str]:
    """The tools among ``tools`` that are not installed (for skip reasons)."""
    return [t for t in tools if shutil.which(t) is None]


def tool_version(tool: str) -> str:
    flag = {"iverilog": "-V", "yosys": "-V", "verilator": "--version"}.get(tool, "--version")
    out = subprocess.run([find_tool(tool), flag], capture_output=True, text=True, timeout=60)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else tool


def _run(cmd: list[str], cwd, timeout: int, what: str) -> str:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} timed out after {timeout} s: {' '.join(cmd)}") from None
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {out.returncode}): {' '.join(cmd)}\n{log[-4000:]}")
    return log


# --- yosys -----------------------------------------------------------------------------------------

@dataclass
class SynthResult:
    """yosys ``synth`` + ``stat -tech cmos`` of one module."""

    top: str
    cells: int
    transistors: int
    cell_types: dict[str, int]
    version: str

    def to_dict(self) -> dict:
        return {"tool": self.version, "top": self.top, "cells": self.cells, "transistors": self.transistors,
                "cell_types": dict(self.cell_types)}


def parse_stat(log: str) -> tuple[int, int, dict[str, int]]:
    """Cell count, transistor estimate and cell types of the last ``stat -tech cmos`` in a yosys log."""
    start = log.rfind("Number of cells:")
    if start < 0:
        raise RuntimeError("yosys printed no 'Number of cells' (stat did not run?)")
    tail = log[start:]
    cells = int(re.match(r"Number of cells:\s+(\d+)", tail).group(1))
    m = re.search(r"Estimated number of transistors:\s+(\d+)", tail)
    if m is None:
        raise RuntimeError("yosys printed no transistor estimate (stat -tech cmos)")
    types = {k: int(v) for k, v in re.findall(r"^\s+(\$\S+)\s+(\d+)\s*$", tail[:m.start()], re.M)}
    return cells, int(m.group(1)), types


def synthesize(verilog_text: str, top: str, timeout: int = 600) -> SynthResult:
    """``read_verilog; synth -top TOP; stat -tech cmos`` in a temporary directory."""
    top = check_name(top, "top")
    exe = find_tool("yosys")
    with tempfile.TemporaryDirectory(prefix="gqa_yosys_") as tmp:
        src = Path(tmp) / f"{top}.v"
        src.write_text(verilog_text)
        log = _run([exe, "-p", f"read_verilog {src.name}; synth -top {top}; stat -tech cmos"], tmp, timeout, "yosys")
    cells, transistors, types = parse_stat(log)
    return SynthResult(top, cells, transistors, types, tool_version("yosys"))


# --- yosys onto a standard-cell library (sky130) ------------------------------------------------------

@dataclass
class MappedResult:
    """yosys ``synth; dfflibmap; abc -liberty; stat -liberty`` of one design onto ``sky130_fd_sc_hd``.

    ``depth``: cells on the longest combinational path (unit delay: every cell counts 1; the
    Liberty file has no timing), from a primary input or flip-flop output to a primary output
    or flip-flop input. ``transistors``: the MOSFETs of the mapped cells (their SPICE netlists);
    ``cmos_transistors``: yosys' ``stat -tech cmos`` estimate of the generic netlist before mapping.
    ``modules``: the mapped area of each module of the hierarchy (one entry for a flat design).
    """

    top: str
    area_um2: float
    cells: int
    cell_types: dict[str, int]
    depth: int
    transistors: int
    cmos_transistors: int
    flip_flops: int
    modules: dict[str, float]
    version: str
    library: dict
    netlist: str = field(default="", repr=False)

    def to_dict(self) -> dict:
        return {"tool": self.version, "top": self.top, "area_um2": self.area_um2, "cells": self.cells,
                "depth": self.depth, "depth_model": "unit delay (cells on the longest combinational path)",
                "flip_flops": self.flip_flops, "transistors_spice": self.transistors,
                "transistors_yosys_cmos": self.cmos_transistors, "modules": dict(self.modules),
                "cell_types": dict(self.cell_types), "library": dict(self.library)}


def _yosys_error(log: str) -> str:
    m = re.search(r"^ERROR: (.*)$", log, re.M)
    return m.group(1).strip() if m else log.strip().splitlines()[-1] if log.strip() else "no output"


def _chip_areas(stat: str) -> tuple[float, dict[str, float]]:
    """Total mapped area and the area of each module from a ``stat -liberty`` report."""
    modules = {m: float(a) for m, a in re.findall(r"Chip area for module '\\?([^']+)':\s+([0-9.]+)", stat)}
    top = re.search(r"Chip area for top module '\\?[^']+':\s+([0-9.]+)", stat)
    if top is None and len(modules) != 1:
        raise RuntimeError(f"yosys stat printed no chip area:\n{stat[-2000:]}")
    return (float(top.group(1)) if top else next(iter(modules.values()))), modules


def logic_depth(netlist: dict, top: str, lib) -> int:
    """Cells on the longest combinational path of a flat mapped netlist (yosys ``write_json``)."""
    mod = netlist["modules"][top]
    driver, sinks = {}, []
    for name, c in mod["cells"].items():
        cell = lib.cells.get(c["type"])
        if cell is None:
            raise RuntimeError(f"mapped netlist has a cell {c['type']!r} that is not in the library")
        outs = c["connections"][cell.output]
        ins = [b for p in cell.inputs for b in c["connections"].get(p, [])]
        for b in outs:
            driver[b] = (cell.sequential, [] if cell.sequential else ins)
        if cell.sequential:
            sinks += c["connections"].get("D", [])
    for port in mod["ports"].values():
        if port["direction"] == "output":
            sinks += port["bits"]
    depth: dict = {}

    def level(bit) -> int:
        if isinstance(bit, str) or bit not in driver or driver[bit][0]:
            return 0    # a constant, a primary input or a flip-flop output
        if bit not in depth:
            stack = [bit]
            while stack:   # iterative depth-first: deep netlists exceed Python's recursion limit
                b = stack[-1]
                pending = [i for i in driver[b][1] if not isinstance(i, str) and i in driver
                           and not driver[i][0] and i not in depth]
                if pending:
                    stack += pending
                    continue
                stack.pop()
                depth[b] = 1 + max((depth.get(i, 0) for i in driver[b][1] if not isinstance(i, str)
                                    and i in driver and not driver[i][0]), default=0)
        return depth[bit]

    return max((level(b) for b in sinks), default=0)


def synthesize_sky130(verilog_text: str, top: str, timeout: int = 900, keep_netlist: bool = False) -> MappedResult:
    """Map ``top`` onto the sky130 high-density cells (the generated Liberty of :mod:`hw_models.sky130`).

    ``read_verilog; synth -top TOP; stat -tech cmos; dfflibmap -liberty L; abc -liberty L;
    opt_clean; stat -liberty L; flatten; write_json``. A design yosys cannot read or synthesize
    is refused with yosys' error message.
    """
    import json as _json

    from .sky130 import library

    top = check_name(top, "top")
    exe = find_tool("yosys")
    lib = library()
    L = str(lib.path)
    script = (f"read_verilog src.v; hierarchy -check -top {top}; synth -top {top}; tee -q -o cmos.txt stat -tech cmos; "
              f"dfflibmap -liberty {L}; abc -liberty {L}; opt_clean; tee -q -o hier.txt stat -liberty {L}; "
              f"flatten; opt_clean; tee -q -o stat.txt stat -liberty {L}; write_json net.json"
              + ("; write_verilog -noattr mapped.v" if keep_netlist else ""))
    with tempfile.TemporaryDirectory(prefix="gqa_sky130_") as tmp:
        (Path(tmp) / "src.v").write_text(verilog_text)
        try:
            out = subprocess.run([exe, "-q", "-p", script], cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GQAError("verilog", f"yosys did not finish synthesizing {top} in {timeout} s",
                           "synthesize a smaller unit or raise the timeout") from None
        if out.returncode != 0:
            raise GQAError("verilog", f"yosys could not synthesize module {top}: {_yosys_error(out.stdout + out.stderr)}",
                           "check the Verilog (yosys read_verilog; synth) and the module name")
        t = Path(tmp)
        cmos, hier, stat = (t / "cmos.txt").read_text(), (t / "hier.txt").read_text(), (t / "stat.txt").read_text()
        net = _json.loads((t / "net.json").read_text())
        netlist = (t / "mapped.v").read_text() if keep_netlist else ""
    _, cmos_transistors, _ = parse_stat(cmos)
    area, _ = _chip_areas(stat)
    _, modules = _chip_areas(hier)
    start = stat.rfind("Number of cells:")
    cells = int(re.match(r"Number of cells:\s+(\d+)", stat[start:]).group(1))
    types = {k: int(v) for k, v in re.findall(r"^\s+(sky130_fd_sc_hd__\S+)\s+(\d+)\s*$", stat[start:], re.M)}
    if sum(types.values()) != cells:
        raise RuntimeError(f"yosys mapped {cells} cells but {sum(types.values())} are library cells:\n{stat[-2000:]}")
    return MappedResult(top=top, area_um2=area, cells=cells, cell_types=types, depth=logic_depth(net, top, lib),
                        transistors=lib.transistors(types), cmos_transistors=cmos_transistors,
                        flip_flops=sum(n for c, n in types.items() if lib.cells[c].sequential),
                        modules=modules, version=tool_version("yosys"), library=dict(lib.provenance),
                        netlist=netlist)


# --- simulation ------------------------------------------------------------------------------------

@dataclass
class SimResult:
    """Outcome of a generated testbench: mismatches per unit and in total."""

    simulator: str
    errors: int
    vectors: int
    units: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (errors, vectors)
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.errors == 0 and "PASS" in self.output


def parse_sim_output(simulator: str, text: str) -> SimResult:
    units = {m.group(1): (int(m.group(2)), int(m.group(3)))
             for m in re.finditer(r"^UNIT (\S+) errors=(\d+) vectors=(\d+)", text, re.M)}
    m = re.search(r"^RESULT errors=(\d+) vectors=(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"{simulator}: the testbench printed no RESULT line:\n{text[-4000:]}")
    return SimResult(simulator, int(m.group(1)), int(m.group(2)), units, text)


def write_sources(units: list[VerilogUnit], workdir, tb_name: str = "pwl_tb") -> list[str]:
    """Write every unit, the testbench and the vectors into ``workdir``; returns the Verilog files."""
    workdir = Path(workdir)
    tb_text, files = testbench(units, tb_name)
    sources = []
    for u in units:
        (workdir / f"{u.name}.v").write_text(u.text)
        sources.append(f"{u.name}.v")
    (workdir / f"{tb_name}.v").write_text(tb_text)
    for fname, content in files.items():
        (workdir / fname).write_text(content)
    return [f"{tb_name}.v"] + sources


def run_iverilog(units: list[VerilogUnit], workdir, tb_name: str = "pwl_tb", timeout: int = 600,
                 extra_sources=(), flags=()) -> SimResult:
    """Compile with ``iverilog -g2005`` and run with ``vvp``.

    ``extra_sources`` (e.g. cell models of a mapped netlist) and ``flags`` (``-I``, ``-D``) go to iverilog.
    """
    iverilog, vvp = find_tool("iverilog"), find_tool("vvp")
    sources = write_sources(units, workdir, tb_name)
    _run([iverilog, "-g2005", *flags, "-s", tb_name, "-o", f"{tb_name}.vvp", *sources, *map(str, extra_sources)],
         workdir, timeout, "iverilog")
    out = _run([vvp, "-n", f"{tb_name}.vvp"], workdir, timeout, "vvp")
    return parse_sim_output("iverilog", out)


def run_verilator(units: list[VerilogUnit], workdir, tb_name: str = "pwl_tb", timeout: int = 900,
                  jobs: int | None = None, optimize: bool = False) -> SimResult:
    """Build with ``verilator --binary`` (timing: the testbench uses # delays) and run.

    ``optimize=False`` compiles the C++ at -O0: the vectors run in well under a second either
    way, and the build is about a fifth faster.
    """
    verilator = find_tool("verilator")
    sources = write_sources(units, workdir, tb_name)
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    opt = [] if optimize else ["-MAKEFLAGS", "OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0"]
    _run([verilator, "--binary", "-j", str(jobs), *opt, "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module",
          tb_name, "-o", f"{tb_name}_sim", *sources], workdir, timeout, "verilator")
    out = _run([str(Path(workdir) / "obj_dir" / f"{tb_name}_sim")], workdir, timeout, "verilated simulation")
    return parse_sim_output("verilator", out)


def lint_verilator(verilog_text: str, top: str, timeout: int = 120) -> str:
    """``verilator --lint-only -Wall`` of one module; returns the (empty when clean) warnings."""
    verilator = find_tool("verilator")
    with tempfile.TemporaryDirectory(prefix="gqa_lint_") as tmp:
        (Path(tmp) / f"{top}.v").write_text(verilog_text)
        out = subprocess.run([verilator, "--lint-only", "-Wall", "--top-module", top, f"{top}.v"], cwd=tmp,
                             capture_output=True, text=True, timeout=timeout)
    return (out.stdout + out.stderr).strip()


# --- the unit on sky130 against the model ---------------------------------------------------------------

SKY130_NODE_NM = 130
SKY130_FIT = _components.SKY130_FIT


def unit_on_sky130(table, scale=None, pipeline: int = 0, name: str | None = None) -> dict:
    """Synthesize the Verilog ``gqa rtl`` emits for ``table`` onto sky130 and set the model beside it.

    The model is the same structure (fixed coefficients, ``scale`` or every scale, ``pipeline``,
    no I/O registers) priced by :func:`hw_models.pwl_unit.estimate` at 130 nm with the component
    data as published (no paper fit: the fit belongs to TSMC 28 nm). Returns the keys of
    ``gqa hw --synth sky130 --json``'s ``sky130`` object: ``area_um2`` (synthesized),
    ``model_area_um2``, ``cells``, ``depth``, and more (``model_fit_area_um2``: the model times
    :data:`hw_models.components.SKY130_FIT`, the one area factor fitted on the benchmark's training
    configurations; ``model_breakdown``, transistor counts, ``synth``: :meth:`MappedResult.to_dict`).
    """
    from .pwl_unit import UnitConfig, estimate
    from .verilog import generate

    unit = generate(table, scale, name=name, pipeline=pipeline)
    res = synthesize_sky130(unit.text, unit.name)
    cfg = UnitConfig.from_table(table, scale, programmable=False, pipeline=pipeline, io_registers=False, align=True)
    est = estimate(cfg, node=SKY130_NODE_NM, calibration="none")
    fit = SKY130_FIT["area"]
    return {"area_um2": res.area_um2, "model_area_um2": est.area_um2, "cells": res.cells, "depth": res.depth,
            "model_error_pct": 100.0 * (est.area_um2 / res.area_um2 - 1), "sky130_fit": fit,
            "model_fit_area_um2": fit * est.area_um2, "model_fit_error_pct": 100.0 * (fit * est.area_um2 / res.area_um2 - 1),
            "flip_flops": res.flip_flops,
            "transistors_spice": res.transistors, "transistors_yosys_cmos": res.cmos_transistors,
            "model_structure": cfg.describe() + f", {SKY130_NODE_NM} nm, no paper fit",
            "model_breakdown": {k: v["area_um2"] for k, v in est.breakdown().items()},
            "synth": res.to_dict()}
