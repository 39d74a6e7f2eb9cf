"""Operation statistics of one integer forward: what the hardware would execute, and how wide.

Counts are per forward pass (all sentences of the batch, padding included: hardware computes
padded positions too). Kinds and their fields (``hw_models.model_energy`` reads this schema):

- ``mac``      ``{op, a_bits, b_bits, acc_bits, count}``    multiply-accumulates of the GEMMs
- ``lut``      ``{op, table, entries, in_bits, count}``     PWL unit evaluations
- ``add`` / ``shift`` / ``compare`` / ``div``  ``{op, bits, count}``
- ``mul``      ``{op, a_bits, b_bits, count}``

Accumulators: for every named register the largest ``|value|`` seen against its declared width,
and how many values overflowed it (counted, then saturated: never a silent wrap). Saturations of
output formats are counted separately (a clipped activation is a modelled effect, not an error).
"""

from __future__ import annotations

from collections import defaultdict

KINDS = ("mac", "lut", "add", "mul", "shift", "compare", "div")


class OpStats:
    def __init__(self):
        self._ops: dict[tuple, int] = defaultdict(int)
        self.accumulators: dict[str, dict] = {}
        self.saturations: dict[str, int] = defaultdict(int)

    def count(self, kind: str, op: str, n: int, **fields) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown op kind {kind!r}")
        key = (kind, op, tuple(sorted(fields.items())))
        self._ops[key] += int(n)

    def mac(self, op, n, a_bits=8, b_bits=8, acc_bits=32):
        self.count("mac", op, n, a_bits=a_bits, b_bits=b_bits, acc_bits=acc_bits)

    def lut(self, op, n, table, entries, in_bits):
        self.count("lut", op, n, table=table, entries=entries, in_bits=in_bits)

    def accumulator(self, name: str, peak: int, declared_bits: int, overflows: int = 0) -> None:
        """Record the largest |value| of a register and overflows of its declared signed width."""
        a = self.accumulators.setdefault(name, {"declared_bits": declared_bits, "peak_abs": 0, "overflows": 0})
        a["peak_abs"] = max(a["peak_abs"], int(peak))
        a["overflows"] += int(overflows)
        a["declared_bits"] = max(a["declared_bits"], declared_bits)

    def saturated(self, name: str, n: int) -> None:
        if n:
            self.saturations[name] += int(n)

    @property
    def overflows(self) -> int:
        return sum(a["overflows"] for a in self.accumulators.values())

    def to_dict(self) -> dict:
        out = {k: [] for k in KINDS}
        for (kind, op, fields), n in sorted(self._ops.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
            out[kind].append({"op": op, **dict(fields), "count": n})
        acc = {}
        for name, a in sorted(self.accumulators.items()):
            used = int(a["peak_abs"]).bit_length() + 1
            acc[name] = {**a, "used_bits": used, "headroom_bits": a["declared_bits"] - used}
        return {**out, "accumulators": acc, "saturations": dict(sorted(self.saturations.items())),
                "total_overflows": self.overflows}

    def totals(self) -> dict:
        t = defaultdict(int)
        for (kind, _, _), n in self._ops.items():
            t[kind] += n
        return dict(t)

