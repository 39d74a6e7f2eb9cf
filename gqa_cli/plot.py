"""Figure of a table: the function, the unit's output at every scale, and the error per scale."""

from __future__ import annotations

import io

import numpy as np

from intsim import PWLTable, scale_points
from intsim.fileio import atomic_write_bytes


STABLE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
                   "svg": {"Date": None, "Creator": None}}


def figure_format(path) -> str:
    """The figure format a file name asks for (its suffix, as matplotlib knows it), or a GQAError."""
    from pathlib import Path

    from matplotlib.backend_bases import FigureCanvasBase
    from intsim import GQAError

    known = FigureCanvasBase.get_supported_filetypes()
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in known:
        raise GQAError("--output", f"{Path(path).name!r} has no figure suffix matplotlib writes"
                       + (f" ({fmt!r})" if fmt else ""), f"end it in one of .{', .'.join(sorted(known))}")
    return fmt


def plot_table(table: PWLTable, path, title: str | None = None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fn = table.reference_function()
    lo, hi = table.domain
    x = np.linspace(lo, hi, 1000)
    fig, (ax_f, ax_e) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[3, 2])
    ax_f.plot(x, fn(x), color="black", lw=2.5, alpha=0.35, label=f"{fn.name} (float64)")
    cmap = plt.get_cmap("viridis")
    err = table.error()
    for i, e in enumerate(table.scales):
        q = scale_points(table.domain, e, table.datapath)
        xq = q * 2.0**-e
        y = table.evaluate(q, e)
        color = cmap(i / max(len(table.scales) - 1, 1))
        ax_f.plot(xq, y, ".-", ms=2, color=color, lw=0.6, label=f"e={e}")
        ax_e.plot(xq, y - fn(xq), ".", ms=3, color=color, label=f"e={e}: MSE {err.mse[i]:.2e}")
    for p in table.breakpoints:
        if lo <= p <= hi:
            ax_f.axvline(p, color="grey", lw=0.5, ls=":")
    ax_f.set_ylabel("output")
    ax_f.legend(fontsize=7, ncol=2)
    ax_e.axhline(0, color="black", lw=0.5)
    ax_e.set_xlabel("input x = q * 2**-e")
    ax_e.set_ylabel("error")
    ax_e.legend(fontsize=7, ncol=2)
    method = table.provenance.get("method", "?")
    ax_f.set_title(title or f"{fn.name}, {table.entries} entries ({method}), {table.datapath.describe()}\n"
                   f"mean MSE over scales {err.mean_mse:.3e}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fmt = figure_format(path)
    metadata = STABLE_METADATA.get(fmt, {})   # no dates or versions stamped in: same table, same bytes
    fig.savefig(buf, format=fmt, dpi=110, metadata=metadata)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue(), field="--output")
