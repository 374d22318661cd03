"""Scaling charts: one PNG per test (speedup against workers) and an index page linking them.

Drawn with matplotlib, the optional ``plot`` extra, imported only when a chart is asked for.
The charts use matplotlib's object API on an Agg canvas (no ``pyplot``, no global backend
switch), so drawing is safe inside a test session. Every file is written atomically and never
over anything but a regular file (engine/outputs.py). Input is the ``to_json()`` dicts of
:class:`pytest_concurrency.scaling.report.ScalingReport`, each with the ``nodeid`` the caller added.

Pure module: no pytest import.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_concurrency.engine.outputs import write_atomically
from pytest_concurrency.errors import PlotUnavailableError
from pytest_concurrency.scaling import messages as scaling_messages

INDEX_TITLE = "pytest-concurrency: scaling"
INDEX_NAME = "index.html"
MODE_STYLES = {
    "threads": {"color": "#1f77b4", "marker": "o"},
    "processes": {"color": "#d62728", "marker": "s"},
}
MACHINE = "machine"
MODE_OFFSETS = (-0.04, 0.04)
"""Each mode is drawn a little to one side so that interval bars at one count don't overlap."""
FIGURE_SIZE = (6.4, 4.4)
DPI = 100
MAX_STEM = 80


def _figure_class() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailableError(scaling_messages.SCALING_PLOT_EXTRA_MISSING) from exc
    return Figure, FigureCanvasAgg


def chart_file_name(nodeid: str) -> str:
    """A file name for a test's chart: readable, filesystem-safe and unique per node id."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_.")[:MAX_STEM] or "test"
    digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]
    return f"{stem}-{digest}.png"


def _unique(names: Sequence[str]) -> list[str]:
    """Number repeated names (a test that measured twice): ``a.png``, ``a-2.png``, ..."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        stem = name.removesuffix(".png")
        unique.append(name if seen[name] == 1 else f"{stem}-{seen[name]}.png")
    return unique


def _mode_series(entry: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    source = entry.get("machine_reference") or [] if mode == MACHINE else entry.get("levels", [])
    levels = [level for level in source if level.get("mode") == mode]
    return sorted(levels, key=lambda level: level["workers"])


def _draw_reference(axes: Any, entry: dict[str, Any]) -> None:
    """What the machine delivered to perfectly parallel CPU work: the bar for CPU-bound work."""
    levels = _mode_series(entry, MACHINE)
    if len(levels) < 2:
        return
    axes.plot(
        [level["workers"] for level in levels],
        [level["speedup"]["median"] for level in levels],
        color="#9467bd",
        linestyle="-.",
        linewidth=1.2,
        label="machine (reference CPU work)",
    )


def _draw_mode(axes: Any, entry: dict[str, Any], mode: str, offset: float) -> None:
    levels = _mode_series(entry, mode)
    if not levels:
        return
    workers = [level["workers"] + offset for level in levels]
    median = [level["speedup"]["median"] for level in levels]
    below = [m - level["speedup"]["low"] for m, level in zip(median, levels, strict=True)]
    above = [level["speedup"]["high"] - m for m, level in zip(median, levels, strict=True)]
    style = MODE_STYLES.get(mode, {"color": "#2ca02c", "marker": "^"})
    axes.errorbar(
        workers,
        median,
        yerr=[below, above],
        label=mode,
        capsize=4,
        linewidth=1.8,
        **style,
    )


def draw_chart(entry: dict[str, Any], path: Path) -> Path:
    """Draw one test's chart to ``path``: speedup per mode, ideal line, usable-cores mark."""
    figure_class, canvas_class = _figure_class()
    figure = figure_class(figsize=FIGURE_SIZE, dpi=DPI)
    canvas_class(figure)
    axes = figure.add_subplot(1, 1, 1)
    top = max((level["workers"] for level in entry.get("levels", [])), default=1)
    axes.plot([1, top], [1, top], linestyle="--", color="#7f7f7f", label="ideal (x N)")
    cores = entry.get("usable_cores")
    if isinstance(cores, int):
        axes.axvline(cores, linestyle=":", color="#2ca02c", label=f"usable cores ({cores})")
    _draw_reference(axes, entry)
    for mode, offset in zip(MODE_STYLES, MODE_OFFSETS, strict=True):
        _draw_mode(axes, entry, mode, offset)
    axes.set_xlabel("workers")
    axes.set_ylabel("speedup C(N) = throughput(N) / throughput(1)")
    axes.set_xticks(range(1, top + 1) if top <= 16 else axes.get_xticks())
    axes.set_xlim(0.5, top + 0.5)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    gil = "GIL enabled" if entry.get("gil_enabled", True) else "GIL disabled"
    axes.set_title(f"{entry.get('nodeid', entry.get('unit', ''))}", fontsize=9)
    figure.suptitle(f"{entry.get('verdict', '?')}  ({gil}, bars: 90% interval)", fontsize=11)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_atomically(path, png.getvalue())
    return path


def _index_html(entries: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    items = []
    for entry, name in zip(entries, names, strict=True):
        nodeid = html.escape(str(entry.get("nodeid", "")))
        verdict = html.escape(str(entry.get("verdict", "?")))
        reasons = "".join(
            f"<li>{html.escape(str(reason))}</li>" for reason in entry.get("reasons", [])
        )
        items.append(
            f'<section><h2><a href="{html.escape(name)}">{nodeid}</a>: {verdict}</h2>'
            f'<img src="{html.escape(name)}" alt="scaling chart of {nodeid}">'
            f"<ul>{reasons}</ul></section>"
        )
    body = "\n".join(items) or "<p>No scaling measurements in this run.</p>"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{INDEX_TITLE}</title></head>\n<body><h1>{INDEX_TITLE}</h1>\n{body}\n"
        "</body></html>\n"
    )


def write_charts(entries: list[dict[str, Any]], directory: Path) -> list[Path]:
    """One PNG per scaling entry and an ``index.html`` linking them; returns the PNG paths."""
    directory = Path(directory)
    scaling = [entry for entry in entries if entry.get("kind", "scaling") == "scaling"]
    if scaling:
        _figure_class()
    directory.mkdir(parents=True, exist_ok=True)
    names = _unique(
        [chart_file_name(str(entry.get("nodeid", entry.get("unit", "")))) for entry in scaling]
    )
    paths = [
        draw_chart(entry, directory / name) for entry, name in zip(scaling, names, strict=True)
    ]
    write_atomically(directory / INDEX_NAME, _index_html(scaling, names).encode("utf-8"))
    return paths
