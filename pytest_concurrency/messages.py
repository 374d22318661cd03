"""User-facing text, as constants the tests import and check."""

from __future__ import annotations

MARKER_CONCURRENT = (
    "concurrent(workers=4, runs=100, mode='threads', seed=None, timeout=60, perturb=True, "
    "clock='virtual', budget=None, start_method='auto'): run the test body in `workers` workers "
    "at once, `runs` times; fixtures are set up once and shared. mode is threads, processes or "
    "asyncio (implied by async def); clock is asyncio's, virtual or real."
)
MARKER_NOT_CONCURRENT = (
    "not_concurrent(reason=...): never run this test concurrently, even under "
    "--concurrency-all; it runs once, normally, and the summary says why."
)
POSITIONAL_MARKER_ARGS = (
    "pytest-concurrency: @pytest.mark.concurrent takes keyword arguments only, "
    "e.g. @pytest.mark.concurrent(workers=8, runs=100); got {args!r} on {nodeid}"
)
NOT_A_FUNCTION = (
    "pytest-concurrency: {nodeid} is not a plain test function, so it cannot run concurrently"
)
MARKER_SCALING = (
    "scaling(workers=None, modes=('threads', 'processes'), expect=None, min_efficiency=None, "
    "rounds=None, budget=None, force=False): measure the test body as a unit of work at 1..N "
    "workers and give a verdict (scales, gil-bound, io-bound, contended, serial, "
    "environment-limited, inconclusive); expect= and min_efficiency= fail the test when not met."
)
OVERSUBSCRIBED = (
    "concurrency: pytest-xdist -n {xdist_workers}: up to {xdist_workers} x {workers_per_test} = "
    "{busy} busy workers on {usable_cores} usable cores ({ratio}x oversubscribed; timings "
    "and scaling are unreliable, race hunting is not)"
)
PLOT_FAILED = "scaling charts were not written to {directory}: {error}"
PLOT_WRITTEN = "scaling charts: {count} written to {directory} (open {index})"
SEED_LAST_MISSING = (
    "pytest-concurrency: --concurrency-seed=last found no seed from an earlier run "
    "(the pytest cache is empty or disabled); pass a number, e.g. --concurrency-seed=12345"
)
BARRIER_OUTSIDE_RUN = (
    "concurrency.barrier() was called outside a concurrent run: it is only defined inside a "
    "body run by @pytest.mark.concurrent or inside a callable given to run(...) of "
    "concurrency.runs()"
)
WORKER_OUTSIDE_RUN = (
    "concurrency.{name} is only defined inside a concurrent run (a body run by "
    "@pytest.mark.concurrent, or a callable given to run(...) of concurrency.runs())"
)
NESTED_RUN = (
    "pytest-concurrency: run(...) was called from inside a concurrent worker; concurrent runs "
    "cannot be nested. Call run(...) from the test body, between runs"
)
RUN_NEEDS_CALLABLES = (
    "pytest-concurrency: run(...) needs a callable: run(fn, workers=8) calls fn in 8 workers at "
    "once; run(f, g) runs one worker per callable"
)
RUN_WORKERS_WITH_ACTORS = (
    "pytest-concurrency: run(f, g, ...) runs one worker per callable; workers= only goes with "
    "a single callable, e.g. run(fn, workers=8)"
)
RUN_AFTER_LOOP = (
    "pytest-concurrency: this run object belongs to a finished iteration of concurrency.runs(); "
    "call it inside the for loop that produced it"
)
BARRIER_ABORTED = (
    "concurrency.barrier() was abandoned: another worker of this run failed or timed out "
    "before reaching it"
)
COLLATERAL_LINE = (
    "  and {count} {calls} gave up at concurrency.barrier() because of {it} ({workers}): "
    "consequences, not causes"
)
SERIAL_NOT_CONCURRENT = "marked not_concurrent"
SERIAL_UNSAFE_FIXTURE = "uses thread-unsafe fixture {names}"
SERIAL_WARNINGS = "uses {name} (warning filters are process-global)"
SERIAL_NOT_FUNCTION = "not a plain test function"
SERIAL_DOCTEST = "a doctest (doctest's runner swaps sys.stdout and the debugger for its run)"
UNSAFE_MOCK_PATCH = "uses unittest.mock.patch (it swaps a name every worker sees)"
UNSAFE_TRACE = "sets a tracer or profiler (sys.settrace: the perturbation's own)"
UNSAFE_CHDIR = "changes the working directory (process-wide)"
UNSAFE_ENVIRON = "changes os.environ (process-wide)"
UNSAFE_DOCTEST = "runs doctests (doctest swaps sys.stdout and the debugger)"
UNSAFE_REDIRECT = "redirects sys.stdout or sys.stderr (process-wide)"
UNSAFE_SYS_MODULES = "changes sys.modules or reloads a module (process-wide)"
UNSAFE_SYS_PATH = "changes sys.path (process-wide)"
UNSAFE_WARNING_FILTERS = "changes the warning filters (process-wide)"
UNSAFE_RANDOM_SEED = "seeds the process-wide random generator (random.seed)"
UNSAFE_LOGGING = "captures or configures logging (a handler on a process-wide logger)"
UNSAFE_PROCESS_SETTING = "changes a process-wide setting (locale, signal, recursion limit...)"
UNSAFE_CTYPES = "uses ctypes (native code, out of the perturbation's sight)"
UNSAFE_HYPOTHESIS = "uses hypothesis @given (its engine is not thread-safe)"
UNSAFE_TMP_PATH = "writes into tmp_path (one folder, shared by every worker)"
UNSAFE_CONFIGURED = "uses {name} (listed in concurrency_unsafe_names)"
SERIAL_FAILED_PLAIN = "failed in its plain single-worker run (the test's own failure, not a race)"
SERIAL_SKIPPED_PLAIN = "skipped or xfailed in its plain run"
OWN_FAILURE_NOTE = (
    "pytest-concurrency: this test failed in its plain single-worker run, before any "
    "concurrent run: the failure is the test's own (it fails without concurrency), not a race"
)
CONCURRENT_FAILURE_NOTE = (
    "  only concurrently: the plain single-worker run of this test passed; the origins above "
    "are where the concurrent runs failed"
)
NOT_REPEATABLE_NOTE = (
    "  not repeatable: the plain run before the concurrent runs passed, and a plain run after "
    "them failed too: the test depends on state its first run changes (an import, a registry, "
    "a file), the test's own failure rather than a race"
)
UNDER_TEST_NOTE = "  it failed inside the code under test at {where}"
OUTSIDE_UNDER_TEST_NOTE = (
    "  it never entered the packages under test: state the test itself shares between its "
    "workers (a module global, a fixture value, a file) is the likelier cause"
)
INTERNAL_FAILURE_NOTE = (
    "  pytest-concurrency: an internal error (raised inside the plugin at {origin}), not a race "
    "in your code; please report it"
)
RUN_POSITION_AUDIT = "of its audit"
HEADER_AUDIT_COST = (
    "concurrency: audit: each test once plainly, then concurrently ({workers} workers) for up to "
    "{cost:g}x its plain cost ({quiet:g}x if it meets no shared state); "
    "--concurrency-audit-cost=N, --concurrency-budget=SECONDS for the session, or "
    "--concurrency-runs=N for a fixed count"
)
HEADER_DEFAULTS_AUDIT_COST = "{workers} workers, runs within {cost:g}x each test's plain cost"
"""The first header line's defaults under the audit (not a run count: the ledger's multiple)."""
HEADER_DEFAULTS_AUDIT_BUDGET = "{workers} workers, runs within a {budget:g}s session budget"
HEADER_AUDIT_BUDGET = (
    "concurrency: audit: a session budget of {budget:g}s spread over the audited tests (one "
    "that touches shared state gets 4x a quiet one's share); each test once plainly first, then "
    "concurrently ({workers} workers)"
)
SUMMARY_AUDIT_COST = (
    "audit: {tests} tests audited ({shared} touched shared state), {runs} concurrent runs "
    "(per test: min {low}, median {median:g}, max {high}); plain runs {plain:.2f}s, concurrent "
    "runs {spent:.2f}s: about {multiple:.1f}x the plain cost"
)
AUDIT_COST_EXPECTED = "expected a multiple of the plain run, at least 1, e.g. 10"
SUMMARY_MODULES_TITLE = "per module:"
SUMMARY_MODULE_LINE = (
    "  {module}: {concurrent} concurrently, {races} with races{internal}; {once} once{reasons}"
)

# -- process mode (runners/processes.py) ----------------------------------------------------
START_METHOD_DEFAULT = (
    "processes start with {method} (the default; --concurrency-start-method or "
    "start_method= to change)"
)
START_METHOD_CHOSEN = "processes start with {method} (chosen)"
UNPICKLABLE = (
    "pytest-concurrency: {what} ({type}) cannot be sent to a worker process: {error}.\n"
    "In mode='processes' (start method {method}) the body, its fixture values and its "
    "arguments are pickled into every worker process.\n"
    "Fix: {fix}"
)
UNPICKLABLE_FUNCTION_FIX = (
    "define the function at module level of an importable module (not inside the test, not a "
    "lambda), or use start_method='fork' (POSIX only), whose workers inherit it"
)
UNPICKLABLE_VALUE_FIX = (
    "make the fixture or argument return something that pickles: a path or plain settings "
    "instead of an open handle (file, connection, socket, lock), and open the handle inside "
    "the body, one per process; or use start_method='fork' (POSIX only), whose workers "
    "inherit it"
)
UNPICKLABLE_RESULT = (
    "pytest-concurrency: worker {worker} returned a {type} that cannot be sent back from its "
    "process: {error}. Fix: return plain data (numbers, strings, tuples, dicts) from a "
    "callable run in mode='processes'"
)
CHILD_TRACEBACK = "Traceback in worker process {worker}:"
WORKER_CRASHED = "worker {worker} (pid {pid}) {how} during run {run}; the worker pool was restarted"
CRASH_SIGNAL = "was killed by signal {signal} ({number})"
CRASH_EXIT = "exited with code {code} (os._exit() in the body or in code it calls?)"
CRASH_NO_ANSWER = "stopped answering"

# -- crash-safe runs: a concurrent test isolated in a supervised child (plugin/isolation.py) --
HEADER_ISOLATED = (
    "concurrency: each concurrent test runs isolated in a supervised child process "
    "(--concurrency-isolate): a crash is that test's failure"
)
TEST_CRASHED = (
    "CRASHED: the interpreter running {nodeid} died during its {phase}: {how} (isolated in "
    "child process {pid}; {where}); the session goes on"
)
TEST_CRASH_SIGNAL = "killed by signal {signal} ({number})"
TEST_CRASH_EXIT = (
    "exited with code {code} before reporting (os._exit() or sys.exit() in the body, a fixture "
    "or code they call?)"
)
TEST_CRASH_WHERE = "{mode}, {workers} workers, seed {seed}"
TEST_CRASH_STACKS = "The stack of every thread when it died (faulthandler):"
TEST_CRASH_ONE_STACK = (
    "The stack of the thread that crashed (faulthandler; with the GIL disabled it cannot walk "
    "the other threads):"
)
TEST_CRASH_NO_STACKS = (
    "No stack was written: the process was killed from outside (the OOM killer, SIGKILL) or "
    "exited without a fatal error."
)
CRASH_HOW_UNKNOWN = "its pytest-xdist worker died"
TEST_CRASH_SUMMARY = "  {nodeid}: crashed ({how}) during its {phase} ({mode}, {workers} workers)"
ISOLATED_CUT_SHORT = (
    "pytest-concurrency: the isolated child process {pid} running {nodeid} was stopped and "
    "reaped: {error}"
)
ISOLATE_FORK_FAILED = (
    "pytest-concurrency: could not fork a child to isolate this test ({error}); it ran in the "
    "session's own process, where a crash ends the session"
)
ISOLATE_UNAVAILABLE = (
    "pytest-concurrency: {nodeid} asks to run isolated (isolate=true), but this platform has "
    "no os.fork(); run it without isolate, or on Linux or macOS"
)
CRASH_NOTE = (
    "<pytest-concurrency was running {nodeid} here ({where}). If the interpreter died: "
    "--concurrency-isolate reports a crash as that test's failure and the session goes on. "
    "Reproduce: {reproduce}>"
)
"""The file name of a frame on the main thread's stack while an in-process series runs: a
crash's faulthandler dump then names the test, its seed, the fix and the reproduction line."""
XDIST_CRASH_NOTE = (
    "pytest-concurrency: the worker died while {nodeid} ran concurrently ({where}); "
    "--concurrency-isolate reports a crash as that test's failure, with every thread's stack.\n"
    "  reproduce: {reproduce}"
)
WORKER_DIED_AT_START = (
    "pytest-concurrency: worker process {worker} {how} before it was ready to run the test.\n"
    "{stack}"
)
WORKER_LOAD_FAILED = (
    "pytest-concurrency: worker process {worker} could not load the test body (its module "
    "must be importable in a fresh process):\n{text}"
)
WORKER_START_TIMEOUT = (
    "pytest-concurrency: worker processes {workers} did not get ready within {seconds:g}s"
)

# -- asyncio mode (runners/aio.py) ----------------------------------------------------------
SYNC_BODY_IN_ASYNCIO = (
    "pytest-concurrency: {nodeid} runs in mode='asyncio' but its body is a plain def. "
    "Fix: make it `async def`, or choose mode='threads' for synchronous code"
)
ASYNC_BODY_IN_OTHER_MODE = (
    "pytest-concurrency: {nodeid} is `async def` but runs in mode={mode!r}, where nothing "
    "would await it. Fix: leave mode= out (async def implies mode='asyncio')"
)
SYNC_CALL_IN_ASYNCIO = (
    "pytest-concurrency: in mode='asyncio' every callable given to run(...) must return an "
    "awaitable; {name} returned {type}. Fix: pass an `async def` function (or a lambda that "
    "returns a coroutine), or use the threads mode for synchronous code"
)
RUN_NOT_AWAITED = (
    "pytest-concurrency: run(...) in an async test returns an awaitable: write "
    "`await run(fn, workers=8)`"
)
FOREIGN_EVENT_LOOP = (
    "pytest-concurrency: asyncio runs need the plugin's own event loop (it orders ready tasks "
    "from the seed), but this code runs on another loop ({loop}). Let the plugin run the test: "
    "mark it @pytest.mark.concurrent or request the `concurrency` fixture, and do not wrap it "
    "in asyncio.run() or another plugin's loop"
)
LOOP_BLOCKED = (
    "the event loop was blocked for {seconds:g}s by a synchronous call (time.sleep, a blocking "
    "socket or lock, a busy loop) in worker {worker}: it is abandoned with its thread"
)
RUNS_BAD_MODE = "pytest-concurrency: concurrency.runs(mode={mode!r}): mode must be one of {modes}"

# -- the controlled scheduler, deadlocks and lock order (issue 5) ------------------------------

HEADER_SCHEDULE = (
    "concurrency: controlled schedule {schedule} for thread tests; lock-order inversions: "
    "{lock_order}"
)
SCHEDULE_NEEDS_THREADS = (
    "pytest-concurrency: schedule={schedule!r} controls threads only, but {nodeid} runs in "
    "mode={mode!r}; drop schedule= or use mode='threads' (asyncio already replays by seed)"
)
SCHEDULE_NOTE = (
    "  controlled schedule ({strategy}): {points} scheduling points, {decisions} decisions; "
    "interleaving {fingerprint}"
)
SCHEDULE_EXACT = "  the reproduce line below replays this interleaving step for step"
SCHEDULE_DETACHED = (
    "  replay may differ: {count} step(s) left Python (asleep in C code, I/O or an untracked "
    "lock for {blocked:g}s, or busy for {seconds:g}s without a scheduling point) and ran "
    "uncontrolled"
)
SCHEDULE_STEPS_TITLE = "  interleaving, the last {shown} of {total} steps {what}:"
SCHEDULE_BEFORE_FAILURE = "up to worker {worker} raising {error}"
SCHEDULE_BEFORE_HANG = "before the run hung"
SCHEDULE_BEFORE_CHECK = "of the run whose check failed"
SCHEDULE_STATE_DETACHED = "left the scheduler's control (C code, I/O or an untracked lock)"
SCHEDULE_STATE_RUNNING = "holds the token and reached no scheduling point for {seconds:.1f}s"
SCHEDULE_SUMMARY_PCT = (
    "controlled schedule (pct): {nodeid}: n={workers} workers, k={steps} decisions per run "
    "(measured), d={depth}, m={clean_runs} clean runs: a depth-{depth} bug was missed with "
    "probability <= {miss_bound:.4g} (each run finds it with probability >= 1/{inverse:.0f}; "
    "{runs_for_95} clean runs for 95%)"
)
SCHEDULE_SUMMARY_NO_BOUND = (
    "controlled schedule ({strategy}): {nodeid}: {runs} runs, up to {points} scheduling points "
    "and {decisions} decisions per run; {why}"
)
SCHEDULE_FOUND = (
    "controlled schedule ({strategy}): {nodeid}: found a failure in run {run} (its "
    "interleaving and the line that replays it are in the report)"
)
SCHEDULE_NO_BOUND_RANDOM = "random choices state no bound (use schedule='pct' for one)"
SCHEDULE_NO_BOUND_PCT = (
    "no run counts towards the bound yet (the first run measures k; failed runs and runs "
    "with detached steps do not count)"
)
DEADLOCK_CONTROLLED_HEADLINE = (
    "DEADLOCK in run {run} (controlled schedule, step {step}): every worker is blocked and "
    "none can go on"
)
DEADLOCK_PLAIN_HEADLINE = (
    "DEADLOCK: these threads wait for each other for ever (seen by the lock watchdog for "
    "{seconds:g}s)"
)
DEADLOCK_WAIT_LINE = (
    "  {who} waits for {what} at {site}; it is held by {holder}, who took it at {taken_at}"
)
DEADLOCK_NO_HOLDER_LINE = (
    "  {who} waits for {what} at {site}; nobody holds it, and no worker is left running that "
    "could set, release or notify it"
)
DEADLOCK_CYCLE_LINE = "  cycle: {cycle}"
DEADLOCK_PLAIN_VICTIM = (
    "  {who} was stopped with this error to break the cycle; fix: take the locks in one "
    "global order"
)
INVERSION_HEADLINE = (
    "LOCK-ORDER INVERSION (potential deadlock): {locks} are taken in opposite orders; two "
    "workers running these paths at once can each take one lock and wait for ever on the other"
)
INVERSION_EDGE = (
    "  {who} took {second} at {second_site} while holding {first} (taken at {first_site})"
)
INVERSION_REPEATED = (
    "  (seen {count} times: with new locks made at the same lines, e.g. once per run)"
)
INVERSION_FIX = "  fix: take these locks in one global order everywhere (or under one outer lock)"
INVERSION_WARN_HINT = "(a warning: --concurrency-lock-order=warn; fail makes it a failure)"
INVERSION_FAIL_HINT = (
    "(--concurrency-lock-order=warn makes this a warning, off stops lock tracking)"
)
INVERSION_SUMMARY = "lock-order inversions: {nodeid}: {count} ({outcome})"

# -- data races: conflicting accesses nothing orders (issue 18) -------------------------------

HEADLINE_DATA_RACE = (
    "DATA RACE in run {run} {of} ({where}): {count} unsynchronized access pair(s) on shared "
    "state, although every call passed"
)
DATA_RACE_HEADER = (
    "  data races ({count}): two workers touched the same location, one wrote, and no lock, "
    "wait, queue or barrier ordered them (whether or not this run broke):"
)
DATA_RACE_STALE_READ = (
    "  {location}: read-then-write: worker {reader} read it and wrote it at {acted}, unordered "
    "with worker {other}'s {op} (a lost update, or an act on a stale check)"
)
DATA_RACE_ITERATION = (
    "  {location}: iterate-while-mutate: worker {reader} iterated it while worker {other} "
    "changed it, unordered"
)
DATA_RACE_TORN_READ = (
    "  {location}: torn-read: worker {reader} read it and then {also}, while worker {other} "
    "changed both in that order, unordered (it can see a half-done update)"
)
DATA_RACE_ACCESS = "    worker {worker} {op} at {site}{path} (holding {locks})"
DATA_RACE_PATH = " in {path}"
DATA_RACE_NO_LOCK = "no lock"
DATA_RACE_MORE = "  ... and {count} more (see --concurrency-json)"
DATA_RACE_FAIL_HINT = (
    "  (data_races='warn' (--concurrency-data-races=warn) only reports them, 'off' stops "
    "tracking; --concurrency-data-race-allow=LOCATION,... allows a benign one)"
)
DATA_RACE_WARN_HINT = "  (a warning: --concurrency-data-races=warn; fail makes it a failure)"
DATA_RACE_WARNING = "data races, reported as a warning (data_races='warn'):\n{text}"
DATA_RACE_MESSAGE = "data race on {location} ({kind})"
DATA_RACE_ALLOW_EXPECTED = (
    "expected locations separated by commas, e.g. Stats.hits,_cache[*] (shell patterns)"
)
DATA_RACE_SUMMARY = "data races: {nodeid}: {count} ({outcome}): {locations}"

# -- reliability: hangs, crashes, leaks (issue 7) ---------------------------------------------

HANG_WAITS_ON_LOCK = (
    "  waits for {what} at {site}; it is held by {holder}, who took it at {taken_at}"
)
HANG_WAITS_ON_FREE_LOCK = "  waits for {what} at {site}; nobody holds it now"
HANG_WAITS_ON_UNTRACKED_HOLDER = (
    "  waits for {what} at {site}; it is held through a reference taken before the test began"
)
LEAK_MESSAGE = (
    "{nodeid} left {what} running after its teardown: {names}. Join threads, reap processes "
    "and await or cancel tasks in the test or its fixtures (--concurrency-leaks=off silences "
    "this)"
)
# -- the GIL coming back on a free-threaded build (engine/gilstate.py, issue 16) ---------------
GIL_CAUSE_MODULES = "extension modules first imported meanwhile: {modules}"
GIL_CAUSE_UNKNOWN = "no extension module was first imported meanwhile: the cause is not known"
GIL_BACK_IN_TEST = (
    "the GIL came back during {nodeid} ({cause}); its threads, and every later test's, ran "
    "held by the GIL"
)
GIL_BACK_IN_COLLECTION = (
    "the GIL came back during collection ({cause}); the concurrent tests run held by the GIL"
)
GIL_BACK_BETWEEN_TESTS = (
    "the GIL came back between concurrent tests, before {nodeid} ({cause}); from there on they "
    "run held by the GIL"
)
GIL_WARN_HINT = "(--concurrency-gil=fail makes this a failure)"
GIL_FAIL_HINT = (
    "(a failure under --concurrency-gil=fail: import that module under PYTHON_GIL=0 at your own "
    "risk, or audit it with the GIL on)"
)
GIL_SUMMARY_STATE = "interpreter at the end: {interpreter} (the GIL was disabled at the start)"
GIL_REPORT_SECTION = "concurrency: GIL"
"""The title of the report section a test whose run brought the GIL back carries."""
INVALID_SETTING = "pytest-concurrency: invalid {where}: {expected}"
"""A bad value for a setting: ``where`` names the source as the user wrote it (the marker
argument, the command-line option, the environment variable or the ini key)."""
# -- the output paths, --concurrency-json and --concurrency-plot (engine/outputs.py) ------------
# Each is the ``expected`` part of INVALID_SETTING at start-up: what is wrong, then the fix.
PATH_NOT_A_FILE = "{path} is {kind}, not a file; give a file path"
PATH_IS_STREAM = "{path} is a stream of this process, not a file; give a file path"
PATH_NOT_A_DIRECTORY = (
    "{path} is {kind}, not a directory; give a directory path (missing directories are created)"
)
PATH_PARENT_NOT_A_DIRECTORY = (
    "{path} is {kind}, not a directory; give a path under a directory (missing directories "
    "are created)"
)
PATH_NOT_WRITABLE = (
    "directory {path} is not writable; give a path under a directory you can write to"
)
PATH_UNCHECKABLE = "{path} cannot be checked ({error}); give a path you can write to"
PATH_LEFT_ALONE = "{path} is {kind}, not a file, and was left alone"
"""At the end: something that is not a regular file appeared at the path during the session."""
JSON_NOT_WRITTEN = "pytest-concurrency: warning: the JSON report was not written to {path}: {error}"
"""At the end, when writing fails anyway (disk full, a directory replaced by a file)."""
UNKNOWN_MARKER_ARGUMENT = (
    "pytest-concurrency: unknown argument {key}= in {where}.{hint} Known arguments: {known}"
)
UNPRINTABLE_EXCEPTION = "<unprintable {exc_type} object: str() raised {error}>"
"""The text of an exception whose ``__str__`` raised (engine/outcomes.exception_text)."""
INTERRUPTED_SUMMARY = (
    "  {nodeid}: interrupted after {runs_done} runs ({mode}, {workers} workers): {interrupted}"
)

# -- marker edges (issue 14, case 7) -----------------------------------------------------------
UNITTEST_METHOD = (
    "pytest-concurrency: {nodeid} is a unittest.TestCase method: it cannot run concurrently, "
    "because unittest itself calls setUp, the method and tearDown, once, on one instance that "
    "every worker would share. Fix: move the body to a plain pytest function (fixtures in "
    "place of setUp and tearDown) and mark that, or mark the method or its class not_concurrent"
)
SERIAL_UNITTEST_SKIPPED = "a unittest.TestCase method that unittest skips"
SERIAL_UNITTEST_EXPECTED_FAILURE = "a unittest.TestCase method marked expectedFailure"
SERIAL_UNITTEST_ASYNC = "a coroutine unittest.TestCase method (its loop is unittest's)"
SERIAL_GETFIXTUREVALUE = (
    "calls request.getfixturevalue (fixtures must be resolved before the workers start)"
)
GETFIXTUREVALUE_IN_BODY = (
    "pytest-concurrency: {nodeid} calls request.getfixturevalue() in its concurrent body, and "
    "pytest's fixture setup is not thread-safe: the workers broke it ({error}; pytest's, not a "
    "race in your code). Fix: resolve the fixture before the workers start: request it as an "
    "argument of the test, or call request.getfixturevalue() in a fixture that the test "
    "requests; or mark the test not_concurrent"
)
WARNING_CHECKS_NOT_THREAD_SAFE = (
    "  {names}: not thread-safe in a concurrent body: it swaps the process-wide warning "
    "filters, and the first worker to leave it restores them under the others (the failure "
    "above may be just that). Fix: check warnings once, outside the concurrent body, or mark "
    "the test not_concurrent"
)


# -- the failing-seed memory (engine/memory.py, issue 14) --------------------------------------
HEADER_MEMORY = (
    "concurrency: failing-seed memory: {count} {tests} failed in an earlier session; "
    "each is tried first with the seed it failed with, when it runs with no seed of its own "
    "(--concurrency-remember=false turns this off)"
)
REMEMBERED_FOUND_AGAIN = (
    "  found again with the seed remembered from an earlier session's failure in run {run} "
    "(its session seed {session_seed}; the failing-seed memory, --concurrency-remember=false "
    "turns it off)"
)


# -- the code under test (engine/undertest.py, issue 15) ----------------------------------------
HEADER_UNDER_TEST = "concurrency: code under test: {what}"
INSTALLED_AT = "{name} (installed at {location})"
PACKAGES_IN_MARKER = "packages= in @pytest.mark.concurrent on {nodeid}"
PACKAGES_EXPECTED = (
    "expected import names of packages or modules, comma-separated, e.g. cachetools,"
    "sortedcontainers (or none, to leave out the project's own installed packages)"
)
UNKNOWN_PACKAGE = (
    "pytest-concurrency: invalid {where}: no package or module named {name!r} can be imported "
    "here; give import names (the name after import, e.g. sortedcontainers), installed in "
    "this environment"
)


# -- pytest-asyncio fixtures (issue 14, case 4) --
ASYNCIO_FIXTURES_HEADER = (
    "concurrency: pytest-asyncio: an async concurrent test that uses its async fixtures runs "
    "its tasks on their event loop, in the seeded task order"
)
ASYNCIO_FIXTURES_LOOP_NOTE = (
    "  the tasks ran on pytest-asyncio's event loop of loop_scope {scope!r}, which ran the "
    "async fixture(s) {names}, {order}"
)
ASYNCIO_LOOP_LEFT_BLOCKED = (
    "  that loop is still blocked in the plugin's thread: pytest-asyncio cannot run the "
    "teardown of the fixtures on it (the errors of that teardown come from this block)"
)
ASYNCIO_STEPS_HEADER = (
    "  steps of run {run}, in the order they ran (the last {shown} of {total}, a worker's "
    "repeated steps folded):"
)
ASYNCIO_STEP_LINE = "{who}: {start} -> {end}"
ASYNCIO_WORKER = "worker {worker}"
ASYNCIO_CHILD_TASK = "worker {worker}, task {task}"
ASYNCIO_STEP_START = "(start)"
ASYNCIO_STEP_END = "(end)"
ASYNCIO_TIMER_LINE = "timer set at {where} fired at t={when:.4f} s ({late:.4f} s late)"
FAILS_WITHOUT_REORDERING = (
    "  fails without reordering: rerun once in asyncio's own FIFO order on the real clock, "
    "every timer on time and nothing injected, it failed too ({failure})"
)
PASSES_WITHOUT_REORDERING = (
    "  passes without reordering: rerun once in asyncio's own FIFO order on the real clock, "
    "every timer on time and nothing injected, it passed: the failure needs {changes}"
)
FAILS_IN_PLAIN_RUN = (
    "  fails without reordering: this run kept asyncio's FIFO order on the real clock, every "
    "timer on time and nothing injected, as plain asyncio runs it"
)
FAILS_IN_PLAIN_VIRTUAL_RUN = (
    "  fails without reordering, judged from this run on the virtual clock (FIFO order, every "
    "timer on time, nothing injected): not rerun on the real clock, {why}"
)
PASSED_IN_RUN_ZERO = (
    "  not rerun in FIFO order on the real clock, {why}; judged from run 0 instead, which kept "
    "FIFO order with every timer on time and nothing injected on the {clock} clock, and passed: "
    "the failure needs {changes}"
)
RERUN_SKIPPED_HARNESS = "a run of concurrency.runs() (its calls share the state the run left)"
RERUN_SKIPPED_LONG = (
    "the failing run took {seconds:.3g} s on the loop's clock, more than the {bound:g} s a "
    "rerun may take"
)
RERUN_SKIPPED_HUNG = "the failing run hung"
RERUN_SKIPPED_ERROR = "the rerun itself raised {error}"
RERUN_FAILURE_HUNG = "it hung"
CHANGE_VIRTUAL_CLOCK = "the virtual clock"
CHANGE_TASK_ORDER = "the seeded task order"
CHANGE_LATE_TIMERS = "late timers"
CHANGE_INJECTIONS = "the injections"
INJECTED_CANCEL = "  injected: worker {worker} cancelled at {where}"
INJECTED_TIMEOUT = (
    "  injected: the timeout set at {where} expired early, after {after:.4g} s of {delay:.4g} s"
)
INJECTED_AT_UNKNOWN = "(no line of the code under test)"
ASYNCIO_ORDER_SEEDED = "in the seeded task order"
ASYNCIO_ORDER_UNPERTURBED = "in FIFO order (perturbation off)"
ASYNCIO_ORDER_FIFO = (
    "in FIFO order: its loop ({loop}) cannot be told an order, so the seed orders no task"
)
ASYNCIO_FIXTURES_ON_SEVERAL_LOOPS = (
    "pytest-concurrency: {nodeid} uses pytest-asyncio async fixtures on more than one event "
    "loop ({fixtures}), and a concurrent body runs its tasks on one loop: what a fixture made "
    "on one loop (a server, a future, a lock) cannot be awaited on another. Fix: give them one "
    'loop_scope, e.g. @pytest_asyncio.fixture(loop_scope="{scope}") on each (or the ini '
    "option asyncio_default_fixture_loop_scope), or make all but one of them sync"
)
ASYNCIO_FIXTURES_LOOP_UNUSABLE = (
    "pytest-concurrency: {nodeid}: the event loop on which pytest-asyncio ran the async "
    "fixture(s) {names} is {state}, so the concurrent body cannot run its tasks there. Fix: "
    "leave that loop to pytest-asyncio (a fixture must neither close it nor run it itself), or "
    "make the fixture(s) sync"
)
ASYNCIO_LOOP_CLOSED = "closed"
ASYNCIO_LOOP_RUNNING = "already running (in another thread)"
ASYNCIO_FIXTURES_LOOP_NOT_FOUND = (
    "pytest-concurrency: {nodeid}: cannot find the event loop on which pytest-asyncio ran the "
    "async fixture(s) {names} (loop_scope {scope!r}), and a concurrent body would run its tasks "
    "on another loop, where what those fixtures made cannot be awaited. Fix: upgrade "
    "pytest-asyncio to 1.0 or later, or make the fixture(s) sync"
)
