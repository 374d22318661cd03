"""The README cannot drift: its code runs, and its options table matches ``pytest --help``.

Every ```python block of README.md must appear verbatim in a file under ``examples/``, which
``pytest examples`` runs; every ``--concurrency-*`` option that ``pytest --help`` lists must be
in the README's options table, and the table must list no option that does not exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
OPTION = re.compile(r"--concurrency-[a-z][a-z-]*[a-z]")


def blocks(language: str) -> list[str]:
    """The README's fenced blocks in ``language``, less the indent of their fence (a block may
    sit in a list item); the code's own indentation is kept."""
    return [
        "".join(line.removeprefix(indent) for line in body.splitlines(keepends=True))
        for indent, lang, body in FENCE.findall(README.read_text())
        if lang == language
    ]


def example_sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text() for path in sorted(EXAMPLES.rglob("*.py"))
    }


def test_the_readme_has_python_snippets() -> None:
    assert len(blocks("python")) >= 3


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_every_python_snippet_is_in_an_example(index: int) -> None:
    snippet = blocks("python")[index]
    sources = example_sources()
    found = [name for name, text in sources.items() if snippet in text]
    assert found, (
        f"README.md python block {index + 1} is not verbatim in any file under examples/; "
        f"copy it from the example it shows (or update the example and the README together):\n"
        f"{snippet}"
    )


def readme_option_table() -> set[str]:
    text = README.read_text()
    section = text.split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--concurrency-")]
    return {OPTION.search(row).group(0) for row in rows}  # type: ignore[union-attr]


def test_the_options_table_matches_pytest_help() -> None:
    # examples/ has its own pytest.ini, so the plugin is on there (our own suite turns it off)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    in_help = set(OPTION.findall(result.stdout))
    in_readme = readme_option_table()
    assert in_help - in_readme == set(), "options missing from the README's table"
    assert in_readme - in_help == set(), "options in the README's table that pytest does not know"
