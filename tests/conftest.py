"""Our own suite runs pytest inside pytest (pytester); the outer run loads no concurrency plugin."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# pytest-run-parallel may be installed for benchmarks; it must not wrap the inner runs.
# pytest-asyncio is installed by the test extra; tests of our coexistence with it enable it.
ISOLATION_ARGS = ("-p", "no:run-parallel", "-p", "no:cacheprovider", "-p", "no:asyncio")


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
