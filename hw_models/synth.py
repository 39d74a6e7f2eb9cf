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


def run_iverilog(units: list[VerilogUnit], workdir, tb_name: str = "pwl_tb", timeout: int = 600) -> SimResult:
    """Compile with ``iverilog -g2005`` and run with ``vvp``."""
    iverilog, vvp = find_tool("iverilog"), find_tool("vvp")
    sources = write_sources(units, workdir, tb_name)
    _run([iverilog, "-g2005", "-s", tb_name, "-o", f"{tb_name}.vvp", *sources], workdir, timeout, "iverilog")
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
