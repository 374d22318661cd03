"""Our own suite runs pytest inside pytest (pytester); the outer run loads no concurrency plugin."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# pytest-run-parallel may be installed for benchmarks; it must not wrap the inner runs.
# pytest-asyncio is installed by the test extra; tests of our coexistence with it enable it.
ISOLATION_ARGS = ("-p", "no:run-parallel", "-p", "no:cacheprovider", "-p", "no:asyncio")


SLOW_FIXTURES = frozenset({"pytester", "run", "run_subprocess"})
"""Tests that run pytest inside pytest are the acceptance tests: marked ``slow``, so that
``pytest -m "not slow"`` is the quick loop of unit tests."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _inner_runs_format_as_on_a_desk(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest prints each failure's whole message in the short summary when ``CI`` or
    ``BUILD_NUMBER`` is set (``_pytest.terminal.running_on_ci``): the inner runs' output, which
    our tests count lines in, would then differ between a desk and CI."""
    for name in ("CI", "BUILD_NUMBER"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Run pytest in-process on the files written to ``pytester``, isolated from other plugins."""

    def runner(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*ISOLATION_ARGS, *args)

    return runner


@pytest.fixture
def run_subprocess(pytester: pytest.Pytester):
    def runner(*args: str, timeout: float = 120) -> pytest.RunResult:
        return pytester.runpytest_subprocess(*ISOLATION_ARGS, *args, timeout=timeout)

    return runner
