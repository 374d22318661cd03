"""Under pytest-xdist without isolation: which concurrent test a worker was running when it
died, for the controller's "worker crashed" report and the JSON report.

The controller makes a folder and gives it to each worker (``workerinput``); before each
in-process series a worker writes there, in a file named after itself, the test and its series
facts (one small write per concurrent test, only under xdist). When xdist reports a crashed
worker (``pytest_handlecrashitem``), the controller reads that worker's note: if it names the
test xdist names, the report gets the seed, the reproduction line and the fix, and the test an
entry that says it crashed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import pytest

from pytest_concurrency import messages
from pytest_concurrency.engine.crashes import SeriesFacts, worker_crash_entry
from pytest_concurrency.plugin.entries import REPORT_ATTRIBUTE

WORKERINPUT_KEY = "concurrency_crash_notes"


class CrashNotes:
    """The controller's folder of notes, made when the first worker is configured."""

    def __init__(self) -> None:
        self.folder: str | None = None

    def give_to(self, node: Any) -> None:
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="pytest-concurrency-crash-notes-")
        node.workerinput[WORKERINPUT_KEY] = self.folder

    def read(self, worker: str) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        try:
            with open(os.path.join(self.folder, worker + ".json"), encoding="utf-8") as file:
                found = json.load(file)
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def complete(self, nodeid: str, report: pytest.TestReport) -> None:
        """xdist's "worker crashed" report, with the test's seed, its reproduction line and
        the fix, and its entry; nothing when the worker was not in a concurrent series."""
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)
        note = self.read(str(worker)) if worker is not None else None
        if note is None or note.get("nodeid") != nodeid:
            return
        facts = SeriesFacts.from_json(note["series"])
        text = messages.XDIST_CRASH_NOTE.format(
            nodeid=nodeid, where=facts.where(), reproduce=facts.reproduce
        )
        report.longrepr = f"{report.longrepr}\n{text}"
        setattr(report, REPORT_ATTRIBUTE, [worker_crash_entry(nodeid, facts)])

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def leave_note(config: pytest.Config, nodeid: str, facts: SeriesFacts) -> None:
    """In a worker, before an in-process series: the test it runs, for the controller."""
    folder = getattr(config, "workerinput", {}).get(WORKERINPUT_KEY)
    worker = getattr(config, "workerinput", {}).get("workerid")
    if not folder or not worker:
        return
    path = os.path.join(folder, f"{worker}.json")
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as file:
            json.dump({"nodeid": nodeid, "series": facts.to_json()}, file)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # a note is a help, never a failure of the test
