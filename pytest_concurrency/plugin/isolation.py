"""Crash-safe runs: a concurrent test, setup to teardown, in a supervised child process.

With ``--concurrency-isolate`` (or ``isolate=True`` on the marker) the session forks at the
test's protocol. The child runs the whole pytest item (setup, call, teardown) with
faulthandler writing every thread's stack to a file, and writes, as JSON lines to another
file, each phase's report as soon as it is made and the facts of each series before it starts
(seed, reproduction line). The parent waits for the child, reaps it, and logs the reports it
wrote. When the child died before its last report (a segfault, an abort, a fatal error,
``os._exit``), the parent makes the failed report of the phase it died in: the signal, the
stacks, the seed and the reproduction line, with an entry (``crashed``, ``signal``...) for the
summary and the JSON report; the session goes on with the next test.

Why fork, not a fresh ``python -m pytest NODEID``: the child is this session as it stands
(collected items, options, seed, the fixtures of wider scope already set up, the same output
capture) for the cost of a fork, where a new interpreter pays for importing pytest, the
plugins and the test module again, and its command line would have to be rebuilt without the
other tests' paths. The price: POSIX only; a fixture of wider scope first set up inside a
child is set up again by the next test that needs it (the child's copy goes with the child).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import importlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from typing import IO, TYPE_CHECKING, Any, NoReturn

import pytest
from _pytest.runner import runtestprotocol

from pytest_concurrency import messages
from pytest_concurrency.engine.crashes import Crash, SeriesFacts, crash_text, crashed_entry
from pytest_concurrency.engine.report import junit_properties
from pytest_concurrency.engine.settings import Settings
from pytest_concurrency.plugin.entries import REPORT_ATTRIBUTE
from pytest_concurrency.plugin.items import SERIES_NOTE_KEY

if TYPE_CHECKING:
    from pytest_concurrency.plugin.session import ConcurrencySession

PHASES = ("setup", "call", "teardown")
WRITER_NAME = "concurrency-isolated-child"
STOP_GRACE = 5.0
"""Seconds a child stopped with SIGABRT (pytest-timeout, Ctrl-C) has to write its stacks."""
CHILD_FAILED = 70  # the child's own exit code when something outside the test broke


def available() -> bool:
    return hasattr(os, "fork")


def run_isolated(
    session: ConcurrencySession, item: pytest.Item, nextitem: pytest.Item | None
) -> None:
    """The protocol of one test in a forked child, whose reports this process logs."""
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    started = time.time()
    shared_basetemp(item.config)
    warm_up(session, item)
    with tempfile.TemporaryFile() as records, tempfile.TemporaryFile() as stacks:
        try:
            pid = fork_child(session, item, nextitem, records.fileno(), stacks.fileno())
        except OSError as error:  # no fork to be had (process limit, memory): run it here
            item.warn(pytest.PytestWarning(messages.ISOLATE_FORK_FAILED.format(error=error)))
            runtestprotocol(item, nextitem=nextitem)
            ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return
        returncode, cut_short = supervise(pid)
        written = read_records(records)
        stacks.seek(0)
        stack_text = stacks.read().decode("utf-8", "replace")
    reports = [rebuild_report(item.config, data) for data in written if "report" in data]
    series = [SeriesFacts.from_json(data["series"]) for data in written if "series" in data]
    if cut_short is not None or not any("done" in data for data in written):
        crash = Crash(
            pid=pid, phase=crashed_phase(reports), returncode=returncode, stacks=stack_text
        )
        reports = with_crash_report(
            session, item, reports, crash, series, cut_short=cut_short, started=started
        )
    for data in written:
        if "state" in data:
            session.abandoned_threads.extend(data["state"]["abandoned_threads"])
            session.leaked.extend(data["state"]["leaked"])
            for warning in data["state"]["warnings"]:
                warn_again(warning)
    for report in reports:
        for entry in getattr(report, REPORT_ATTRIBUTE, None) or ():
            entry["isolated"] = True
        ihook.pytest_runtest_logreport(report=report)
    keep_setup_state(item, nextitem)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    if isinstance(cut_short, (KeyboardInterrupt, pytest.exit.Exception)):
        raise cut_short  # Ctrl-C, pytest.exit(): the child is reaped, the report logged


WARM_MODULES = (
    "pytest_concurrency.driver.series",
    "pytest_concurrency.driver.harness",
    "pytest_concurrency.engine.report",
    "pytest_concurrency.engine.leaks",
    "pytest_concurrency.races.perturb",
    "pytest_concurrency.races.tracked",
    "pytest_concurrency.races.primitives",
    "pytest_concurrency.races.tracker",
    "pytest_concurrency.races.lockgraph",
    "pytest_concurrency.races.codefilter",
    "pytest_concurrency.races.scheduler",
    "pytest_concurrency.races.runreport",
    "pytest_concurrency.engine.undertest",
    "multiprocessing.forkserver",
    "multiprocessing.resource_tracker",
)
warmed: set[str] = set()  # the modes whose machinery this process has imported


def warm_up(session: ConcurrencySession, item: pytest.Item) -> None:
    """Import the machinery a child would import again for every test (the parent runs no
    series itself) and fill the session's caches (usable cores, packages under test), once
    per mode: a child then pays for its fork, not for a cold start."""
    from pytest_concurrency.plugin.calls import harness_config
    from pytest_concurrency.runners import RUNNERS

    settings = settings_of(session, item)
    if settings.mode in warmed:
        return
    warmed.add(settings.mode)
    try:
        for name in (*WARM_MODULES, RUNNERS[settings.mode]):
            importlib.import_module(name)
        harness_config(session, item, settings)
        session.roots(item, settings)
        warm_lock_watch(item, settings)
    except Exception:  # only a head start: the child meets the same error and reports it
        return


def warm_lock_watch(item: pytest.Item, settings: Settings) -> None:
    """The lock watch's answers to "is this module the user's?" (one per imported module,
    asked when its window opens), found here so that each child inherits them."""
    from pytest_concurrency.plugin.lockwatch import LOCKWATCH_NAME, LockWatch

    watch = item.config.pluginmanager.get_plugin(LOCKWATCH_NAME)
    if not isinstance(watch, LockWatch):
        return
    is_user_file = watch.user_file_filter(item, settings)
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if isinstance(filename, str):
            is_user_file(filename)


def settings_of(session: ConcurrencySession, item: pytest.Item) -> Settings:
    settled = session.marked_settings(item)
    return settled if isinstance(settled, Settings) else session.settings


def shared_basetemp(config: pytest.Config) -> None:
    """Make pytest's base temporary folder here, before the fork: made first in a child, it
    would be made again (and a given ``--basetemp`` wiped) by this process later."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        with contextlib.suppress(OSError):
            factory.getbasetemp()


def fork_child(
    session: ConcurrencySession,
    item: pytest.Item,
    nextitem: pytest.Item | None,
    records: int,
    stacks: int,
) -> int:
    pid = -1
    gc.freeze()  # the child's collections leave the session's objects alone: fewer copied pages
    try:
        with warnings.catch_warnings():  # 3.12+: "multi-threaded, use of fork() may deadlock"
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    finally:
        if pid != 0:
            gc.unfreeze()
    if pid == 0:
        run_child(session, item, nextitem, records, stacks)
    return pid


def supervise(pid: int) -> tuple[int, BaseException | None]:
    """Wait for the child and reap it; if this process is interrupted while waiting
    (pytest-timeout, Ctrl-C), kill the child first. Its return code (as subprocess gives it:
    -N for signal N) and what interrupted the wait, if anything.

    Ctrl-C is this function's own from the start: the first one ends the wait, the next ones
    (two workers of the test may send one each) are held until the child is reaped. Installed
    only once the first had arrived, the holding left a moment in which a second one cut the
    reaping short."""
    interrupts = [0]

    def on_interrupt(signum: int, frame: object) -> None:
        interrupts[0] += 1
        if interrupts[0] == 1:
            raise KeyboardInterrupt

    previous = hold_interrupts(on_interrupt)
    try:
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException as error:  # whatever it is, the child must not stay
            return stop_and_reap(pid), error
        return os.waitstatus_to_exitcode(status), None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def hold_interrupts(handler: Any) -> Any:
    """Ctrl-C goes to ``handler`` until the child is reaped: the previous handler, to put
    back; None where this thread cannot change it."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def stop_and_reap(pid: int) -> int:
    """Stop the child: SIGABRT first, so that its faulthandler writes where every thread is,
    then SIGKILL if it is still there after a grace period (or at a second interruption, a
    second Ctrl-C); reap it. Its return code."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGABRT)
    try:
        stopped = wait_a_while(pid)
    except BaseException:  # interrupted again: no more grace
        stopped = None
    if stopped is not None:
        return stopped
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while True:  # SIGKILL cannot be refused: this wait is short, and never given up
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return -signal.SIGKILL
        except BaseException:  # a third Ctrl-C: the child still must be reaped
            continue
        return os.waitstatus_to_exitcode(status)


def wait_a_while(pid: int) -> int | None:
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    return None


def read_records(records: IO[bytes]) -> list[dict[str, Any]]:
    records.seek(0)
    found = []
    for line in records.read().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            break  # cut off mid-line by the crash: what came before stands
    return found


def rebuild_report(config: pytest.Config, data: dict[str, Any]) -> pytest.TestReport:
    report = config.hook.pytest_report_from_serializable(config=config, data=data["report"])
    assert isinstance(report, pytest.TestReport)
    return report


def crashed_phase(reports: list[pytest.TestReport]) -> str:
    """The phase the child died in: the first one that made no report."""
    made = {report.when: report for report in reports}
    setup = made.get("setup")
    if setup is None:
        return "setup"
    if setup.passed and "call" not in made:
        return "call"
    return "teardown"


def with_crash_report(
    session: ConcurrencySession,
    item: pytest.Item,
    reports: list[pytest.TestReport],
    crash: Crash,
    series: list[SeriesFacts],
    *,
    cut_short: BaseException | None,
    started: float,
) -> list[pytest.TestReport]:
    """The reports the child made, then the failed report of the phase it died in (and a
    passed teardown if that was not the teardown)."""
    facts = series[-1] if series else facts_from_settings(session, item)
    kept = [report for report in reports if report.when != crash.phase]
    if cut_short is not None:
        text = messages.ISOLATED_CUT_SHORT.format(
            pid=crash.pid, nodeid=item.nodeid, error=describe(cut_short)
        )
        text += "\n" + crash_text(item.nodeid, crash, facts).split("\n", 1)[1]
    else:
        text = crash_text(item.nodeid, crash, facts)
    failed = phase_report(item, crash.phase, "failed", text, started)
    failed.sections.extend(captured_sections(item.config, crash.phase))
    interrupted = None if cut_short is None else describe(cut_short)
    entry = crashed_entry(item.nodeid, crash, facts, interrupted=interrupted)
    setattr(failed, REPORT_ATTRIBUTE, [entry])
    failed.user_properties.extend(junit_properties(entry))  # --junitxml <property> elements
    expect_crash(item, failed)
    kept.append(failed)
    if crash.phase != "teardown":  # junitxml takes a test's properties from its teardown
        teardown = phase_report(item, "teardown", "passed", None, time.time())
        teardown.user_properties = list(failed.user_properties)
        kept.append(teardown)
    return kept


def expect_crash(item: pytest.Item, report: pytest.TestReport) -> None:
    """A test marked ``xfail`` (with no ``raises=``: a crash is no exception) that crashed is
    xfailed, as pytest makes a failure of it: its own makereport never saw this report."""
    from _pytest.skipping import evaluate_xfail_marks

    if item.config.option.runxfail:
        return
    xfailed = evaluate_xfail_marks(item)
    if xfailed is not None and xfailed.raises is None:
        report.outcome = "skipped"
        report.wasxfail = xfailed.reason


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def phase_report(
    item: pytest.Item, when: str, outcome: str, longrepr: str | None, started: float
) -> pytest.TestReport:
    now = time.time()
    return pytest.TestReport(
        nodeid=item.nodeid,
        location=item.location,
        keywords=dict.fromkeys(item.keywords, 1),
        outcome=outcome,  # type: ignore[arg-type]
        longrepr=longrepr,
        when=when,  # type: ignore[arg-type]
        sections=[],
        duration=now - started,
        start=started,
        stop=now,
        user_properties=list(item.user_properties),
    )


def captured_sections(config: pytest.Config, phase: str) -> list[tuple[str, str]]:
    """What the child wrote to the captured stdout and stderr before it died (the capture
    files are shared with it), taken here so that the next test does not get it."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None or not capman.is_globally_capturing():
        return []
    try:
        out, err = capman.read_global_capture()
    except (AssertionError, OSError, ValueError):
        return []
    return [
        (f"Captured {name} {phase}", text)
        for name, text in (("stdout", out), ("stderr", err))
        if text
    ]


def facts_from_settings(session: ConcurrencySession, item: pytest.Item) -> SeriesFacts:
    """The series facts when the child died before its first series (in the setup)."""
    from pytest_concurrency.plugin.calls import harness_config, series_facts

    return series_facts(harness_config(session, item, settings_of(session, item)))


def warning_data(warning: warnings.WarningMessage) -> dict[str, Any]:
    category = warning.category
    return {
        "message": str(warning.message),
        "module": category.__module__,
        "category": category.__qualname__,
        "filename": warning.filename,
        "lineno": warning.lineno,
    }


def warn_again(data: dict[str, Any]) -> None:
    """A warning the child recorded, issued again here, inside pytest's record of this test's
    warnings (the category found by name: the child is a fork, its classes are ours)."""
    category: Any = sys.modules.get(data["module"])
    for name in str(data["category"]).split("."):
        category = getattr(category, name, None)
    if not (isinstance(category, type) and issubclass(category, Warning)):
        category = UserWarning
    warnings.warn_explicit(data["message"], category, data["filename"], data["lineno"])


def keep_setup_state(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """This process set up nothing for the test (its child did), but what it had set up for
    earlier tests and the next one does not need is torn down here, as pytest would; a failing
    teardown is reported as the test's teardown error."""
    call = pytest.CallInfo.from_call(
        lambda: item.session._setupstate.teardown_exact(nextitem), when="teardown"
    )
    if call.excinfo is not None:
        report = item.ihook.pytest_runtest_makereport(item=item, call=call)
        item.ihook.pytest_runtest_logreport(report=report)


# -- the child -------------------------------------------------------------------------------


class ChildRecords:
    """In the child: each phase's report, written as soon as it is made, and each series's
    facts, written before it starts; one JSON line each, unbuffered."""

    def __init__(self, config: pytest.Config, fd: int) -> None:
        self.config = config
        self.fd = fd

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, default=repr) + "\n").encode())

    def series(self, facts: SeriesFacts) -> None:
        self.write({"series": facts.to_json()})

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item) -> Any:
        report = yield
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.write({"report": data})
        return report


def run_child(
    session: ConcurrencySession,
    item: pytest.Item,
    nextitem: pytest.Item | None,
    records: int,
    stacks: int,
) -> NoReturn:
    """The forked child: run the test's protocol, write what happened, and leave at once."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent kills and reaps it
        faulthandler.enable(file=stacks, all_threads=True)
        writer = ChildRecords(item.config, records)
        item.config.pluginmanager.register(writer, WRITER_NAME)
        item.stash[SERIES_NOTE_KEY] = writer.series
        with warnings.catch_warnings(record=True) as caught:  # the session's filters stay
            runtestprotocol(item, nextitem=nextitem, log=False)
        state = {
            "abandoned_threads": session.abandoned_threads,
            "leaked": session.leaked,
            "warnings": [warning_data(warning) for warning in caught],
        }
        writer.write({"state": state})
        writer.write({"done": True})
    except BaseException:  # the parent reports it as the crash of a phase
        import traceback

        os.write(stacks, traceback.format_exc().encode("utf-8", "replace"))
        code = CHILD_FAILED
    finally:
        os._exit(code)
