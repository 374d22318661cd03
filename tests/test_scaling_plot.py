"""Scaling charts: one PNG per test and an index page; a clear message without matplotlib."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency.errors import PlotUnavailableError
from pytest_concurrency.scaling import messages as scaling_messages
from pytest_concurrency.scaling import plot
from pytest_concurrency.scaling.records import WorkerSample
from pytest_concurrency.scaling.report import analyze
from pytest_concurrency.scaling.stats import MeasurementContext, RoundRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def entry(nodeid: str) -> dict[str, Any]:
    records = []
    for r in range(5):
        for mode, levels in (("threads", (1, 2, 3, 4)), ("processes", (1, 2))):
            for n in levels:
                wall = 0.1 * n if mode == "threads" else 0.1
                samples = tuple(WorkerSample(0.0, wall, wall / n, 0.0) for _ in range(n))
                records.append(RoundRecord(mode, n, r, samples, 0.0))
    context = MeasurementContext(usable_cores=2, gil_enabled=True, unit="work")
    return {"kind": "scaling", "nodeid": nodeid, **analyze(records, context).to_json()}


def test_one_png_per_test_and_an_index_linking_them(tmp_path: Path) -> None:
    entries = [entry("tests/test_a.py::test_loop"), entry("tests/test_b.py::test_x[1-2]")]
    paths = plot.write_charts(entries, tmp_path / "charts")
    assert len(paths) == 2
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
    index = (tmp_path / "charts" / plot.INDEX_NAME).read_text()
    for path in paths:
        assert f'src="{path.name}"' in index
    assert "tests/test_b.py::test_x[1-2]" in index
    assert "gil-bound" in index


def test_file_names_are_safe_and_unique_per_node_id() -> None:
    first = plot.chart_file_name("tests/test_a.py::test_x[a/b]")
    second = plot.chart_file_name("tests/test_a.py::test_x[a_b]")
    assert first != second
    assert "/" not in first and first.endswith(".png")


def test_a_test_measured_twice_gets_two_charts(tmp_path: Path) -> None:
    paths = plot.write_charts([entry("t.py::test_a"), entry("t.py::test_a")], tmp_path)
    assert len({path.name for path in paths}) == 2


def test_no_entries_still_writes_an_index(tmp_path: Path) -> None:
    assert plot.write_charts([], tmp_path) == []
    assert "No scaling measurements" in (tmp_path / plot.INDEX_NAME).read_text()


def test_missing_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PlotUnavailableError) as caught:
        plot.write_charts([entry("t.py::test_a")], tmp_path)
    # The registry name pytest-concurrency is another project: the text never names it.
    assert (
        'pip install matplotlib, or from the project\'s source checkout pip install ".[plot]"'
        in str(caught.value)
    )
    assert "pytest-concurrency[" not in str(caught.value)
    assert str(caught.value) == scaling_messages.SCALING_PLOT_EXTRA_MISSING
