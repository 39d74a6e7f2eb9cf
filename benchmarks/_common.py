"""Shared bits of the benchmark scripts: the machine line and the reference figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# DESIGN.md: the GQA-LUT reference trainer (DEAP, population 50, 500 generations, GELU,
# 8 entries) on the development machine (2 cores, AMD Zen 5).
REFERENCE_TRAINER_S = 72.0

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO.parent / "shared" / "reference" / "gqa_lut_pretrained"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        cap = f", torch {torch.__version__} CPU capability {torch.backends.cpu.get_cpu_capability()}"
    except ImportError:
        cap = ""
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}{cap}"
