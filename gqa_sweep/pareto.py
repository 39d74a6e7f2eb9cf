"""Pareto fronts of sweep rows."""

from __future__ import annotations

import math


def pareto_front(rows, x: str, y: str, minimize=(True, True)) -> list[dict]:
    """The rows no other row beats on both ``x`` and ``y`` (minimised unless told), sorted by ``x``.

    Rows missing either value are left out; of rows with equal ``(x, y)`` the first is kept.
    """
    sx = 1.0 if minimize[0] else -1.0
    sy = 1.0 if minimize[1] else -1.0
    cand = []
    for i, r in enumerate(rows):
        vx, vy = r.get(x), r.get(y)
        if vx is None or vy is None or vx == "" or vy == "":
            continue
        vx, vy = float(vx), float(vy)
        if math.isnan(vx) or math.isnan(vy):
            continue
        cand.append((sx * vx, sy * vy, i, r))
    cand.sort(key=lambda t: (t[0], t[1], t[2]))
    front, best = [], math.inf
    for _, vy, _, r in cand:
        if vy < best:
            front.append(r)
            best = vy
    return front
