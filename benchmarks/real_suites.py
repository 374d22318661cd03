"""Audit real projects' whole suites: plain pytest, ``--concurrency-all``, pytest-run-parallel.

For each suite (issue 17): ``pip download --no-binary :all: --no-deps NAME==VERSION`` fetches
the sdist, which is unpacked; a venv is made as tox makes one (``python -m venv``, then
``pip install <unpacked sdist>`` non-editable, its test dependencies, pytest,
pytest-run-parallel, and this plugin from the worktree, non-editable); then, from the unpacked
folder, three sessions run one after the other:

- plain: ``pytest TESTS -p no:run-parallel`` (our plugin loaded, unused: an unmarked suite);
- ours: ``pytest TESTS -p no:run-parallel --concurrency-all --concurrency-json=...``
  (the defaults: the audit costs about 10x the plain run);
- run-parallel: ``pytest TESTS -p no:concurrency --parallel-threads=4``.

Each session gets ``-p no:cacheprovider -p no:randomly -q``. Wall time is measured around the
whole ``pytest`` process. For ours, the JSON report says what ran concurrently, what ran once
and why, and how each failure is classified. Prints a markdown table and writes everything to
``--out`` (JSON).

    python benchmarks/real_suites.py                       # the default suites
    python benchmarks/real_suites.py --suites toolz,six    # some of them
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKTREE = Path(__file__).resolve().parent.parent
RUN_PARALLEL = "pytest-run-parallel==0.10.0"
SESSION_TIMEOUT = 1800.0
COMMON_ARGS = ("-p", "no:cacheprovider", "-p", "no:randomly", "-q")


@dataclass(frozen=True)
class Suite:
    name: str  # the distribution on PyPI
    version: str
    tests: tuple[str, ...]  # paths inside the unpacked sdist
    deps: tuple[str, ...] = ()  # test dependencies
    style: str = "pytest"


SUITES = {
    suite.name: suite
    for suite in (
        Suite("toolz", "1.2.0", ("toolz/tests",)),
        Suite("cachetools", "8.0.2", ("tests",), style="unittest.TestCase"),
        Suite("boltons", "26.2.0", ("tests",)),
        Suite("six", "1.17.0", ("test_six.py",)),
        Suite("more-itertools", "11.2.1", ("tests",), style="unittest.TestCase"),
    )
}
DEFAULT_SUITES = ("toolz", "cachetools", "boltons", "six")


@dataclass
class Session:
    arm: str
    command: list[str]
    seconds: float
    returncode: int
    counts: dict[str, int]
    tail: list[str] = field(default_factory=list)


def sh(command: list[str], cwd: Path | None = None, timeout: float = 900) -> None:
    subprocess.run(command, cwd=cwd, check=True, timeout=timeout, capture_output=True)


def unpack(suite: Suite, work: Path) -> Path:
    sdists = work / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    spec = f"{suite.name}=={suite.version}"
    sh([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
        spec, "-d", str(sdists)])  # fmt: skip
    prefix = re.sub(r"[-_.]+", "[-_.]", suite.name)
    (archive,) = [p for p in sdists.iterdir() if re.match(f"(?i){prefix}-{suite.version}", p.name)]
    target = work / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    (folder,) = [p for p in target.iterdir() if p.name.lower().startswith(archive.name[:4].lower())
                 and p.name.endswith(suite.version)]  # fmt: skip
    return folder


def make_venv(suite: Suite, folder: Path, work: Path) -> Path:
    venv = work / "venv"
    sh([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    sh([*pip, str(folder)])  # non-editable, as tox does
    sh([*pip, "pytest", RUN_PARALLEL, *suite.deps])
    sh([*pip, "--no-deps", "--force-reinstall", str(WORKTREE)])  # this plugin, non-editable
    return venv


COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")
SUMMARY_LINE = re.compile(r"^=*\s*\d+ \w+.* in [\d.]+s( \([\d:]+\))?\s*=*$")
"""pytest's last line: "187 passed, 1 skipped in 1.79s"; missing when the session crashed."""


def run_session(arm: str, venv: Path, folder: Path, suite: Suite, extra: list[str]) -> Session:
    command = [str(venv / "bin" / "pytest"), *suite.tests, *COMMON_ARGS, *extra]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=folder, capture_output=True, text=True, timeout=SESSION_TIMEOUT
        )
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        output, code = f"killed after {SESSION_TIMEOUT:g} s\n{expired.stdout or ''}", -9
    seconds = time.monotonic() - started
    lines = output.splitlines()
    counts: dict[str, int] = {}
    for line in reversed(lines):
        found = COUNT.findall(line)
        if found and SUMMARY_LINE.match(line.strip()):
            counts = {word.rstrip("s") if word.startswith("error") else word: int(n)
                      for n, word in found}  # fmt: skip
            break
    display = [str(part).replace(str(venv / "bin") + "/", "") for part in command]
    return Session(arm, display, round(seconds, 2), code, counts, lines[-40:])


def audit_details(report: Path) -> dict[str, Any]:
    """From our JSON report: run concurrently, run once (by reason), failures by class."""
    if not report.exists():
        return {"report": "missing"}
    document = json.loads(report.read_text())
    tests, serial = document["tests"], document["serial"]
    classes: collections.Counter[str] = collections.Counter()
    failures = []
    for entry in tests:
        if entry.get("failing_run") is not None or entry.get("outcome") == "failed":
            kind = entry.get("failure_class", "concurrent")
            classes[kind] += 1
            origins = ", ".join(f["origin"] for f in entry["failures"]) or "hang or check"
            failures.append({"nodeid": entry["nodeid"], "class": kind, "origins": origins,
                             "message": (entry["failures"] or [{}])[0].get("message", "")[:160]})  # fmt: skip
    for entry in serial:
        if entry.get("outcome") == "failed":
            kind = entry.get("failure_class", "failed when run once")
            classes[kind] += 1
            failures.append({"nodeid": entry["nodeid"], "class": kind, "origins": entry["reason"]})
    reasons = collections.Counter(entry["reason"] for entry in serial)
    audited = [entry["audit"] for entry in tests if "audit" in entry]
    return {
        "concurrent": len(tests),
        "once": len(serial),
        "once_reasons": dict(reasons.most_common()),
        "failure_classes": dict(classes),
        "failures": failures,
        "runs": sum(int(entry["runs_done"]) for entry in tests),
        "shared_state_tests": sum(1 for a in audited if a["shared_state"]),
    }


def audit_suite(suite: Suite, keep: Path | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"real-suite-{suite.name}-", dir=keep))
    try:
        folder = unpack(suite, work)
        venv = make_venv(suite, folder, work)
        report = work / "ours.json"
        sessions = [
            run_session("plain", venv, folder, suite, ["-p", "no:run-parallel"]),
            run_session(
                "ours",
                venv,
                folder,
                suite,
                ["-p", "no:run-parallel", "--concurrency-all", f"--concurrency-json={report}"],
            ),
            run_session(
                "run-parallel",
                venv,
                folder,
                suite,
                ["-p", "no:concurrency", "--parallel-threads=4"],
            ),
        ]
        details = audit_details(report)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "suite": f"{suite.name} {suite.version}",
        "style": suite.style,
        "sessions": [vars(session) for session in sessions],
        "ours": details,
    }


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {word}" for word, n in counts.items()) or "crashed (no summary line)"


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| suite | style | plain pytest | `--concurrency-all` (multiple) | run-parallel |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        plain, ours, other = result["sessions"]
        multiple = ours["seconds"] / plain["seconds"] if plain["seconds"] else 0.0
        lines.append(
            f"| {result['suite']} | {result['style']} | {describe(plain['counts'])}, "
            f"{plain['seconds']:.1f} s | {describe(ours['counts'])}, {ours['seconds']:.1f} s "
            f"({multiple:.1f}x) | {describe(other['counts'])}, {other['seconds']:.1f} s |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES))
    parser.add_argument("--out", default="real_suites.json")
    parser.add_argument("--keep", default=None, help="keep the work folders under this folder")
    args = parser.parse_args(argv)
    keep = Path(args.keep) if args.keep else None
    results = []
    for name in args.suites.split(","):
        started = time.strftime("%H:%M:%S")
        result = audit_suite(SUITES[name], keep)
        load = os.getloadavg()[0]
        result["started"], result["load_after"] = started, round(load, 2)
        results.append(result)
        print(json.dumps(result["ours"], indent=1), flush=True)
        print("\n".join(table([result])), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
