"""PNG plots for the evaluation reports (matplotlib, headless).

Figures are `matplotlib.figure.Figure` objects saved through the Agg canvas: no pyplot, so importing this module
or plotting never switches the backend of the process (a notebook keeps its own), and matplotlib is loaded only
when a plot is drawn."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Sequence


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def heatmap(matrix: Sequence[Sequence[float]], path: str | Path, title: str, cbar: str,
            xlabel: str = "expert", ylabel: str = "layer", cmap: str = "viridis", center_zero: bool = False,
            labels: tuple[Sequence[str], Sequence[str]] | None = None, fmt: str | None = None,
            vmin: float | None = None, vmax: float | None = None) -> Path:
    """Rows x columns heatmap with one cell per (layer, expert); `labels` (rows, columns) name the ticks, `fmt`
    writes each cell's value in it."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    size = 0.9 if labels else 0.5
    fig = _figure((max(4.0, size * m.shape[1] + (2.5 if labels else 2)), max(3.0, (size if labels else 0.25) * m.shape[0] + 1.5)))
    ax = fig.subplots()
    kw: dict = {"vmin": vmin, "vmax": vmax}
    if center_zero:
        lim = float(np.nanmax(np.abs(m))) or 1.0
        kw = {"vmin": -lim, "vmax": lim}
    im = ax.imshow(m, aspect="auto", cmap=cmap, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if labels:
        ax.set_xticks(range(m.shape[1]), list(labels[1]), rotation=30, ha="right")
        ax.set_yticks(range(m.shape[0]), list(labels[0]))
    else:
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
    if fmt:
        lo, hi = im.get_clim()
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v):
                dark = (v - lo) / ((hi - lo) or 1.0)
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=9,
                        color="white" if dark > 0.75 or (cmap == "RdBu" and dark < 0.2) else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str,
          xlabel: str, ylabel: str, logx: bool = False) -> Path:
    """One line per named (x, y) series."""
    fig = _figure((6.4, 4.0))
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), marker="o", markersize=3, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def intervals(names: Sequence[str], values: Sequence[float], bounds: Sequence[Sequence[float]], path: str | Path,
              title: str, ylabel: str) -> Path:
    """A point per name with its interval (e.g. a rating and its bootstrap confidence interval)."""
    fig = _figure((max(4.0, 0.8 * len(names) + 2), 3.6))
    ax = fig.subplots()
    x = range(len(names))
    lo = [v - b[0] for v, b in zip(values, bounds)]
    hi = [b[1] - v for v, b in zip(values, bounds)]
    ax.errorbar(x, values, yerr=[lo, hi], fmt="o", capsize=4)
    ax.set_xticks(list(x), list(names), rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def data_uri(path: str | Path) -> str:
    """The PNG as a `data:` URI, so an HTML page carries its plots inline."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
