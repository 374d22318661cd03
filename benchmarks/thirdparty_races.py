"""Races inside third-party libraries used from threads without a lock (issue 15).

``benchmarks/races/thirdparty/`` holds one module per library, each a buggy test (the library's
object shared with no lock) and its locked twin, in the body form
(``@pytest.mark.concurrent(workers=4)``, the default 100 runs, the check after
``concurrency.barrier()``):

* ``cachetools.LRUCache``: stores of distinct keys from four workers, never evicting;
  ``currsize`` must equal ``len`` (the library's ``self.__currsize += 1``: no call in the
  window, so only a give-way inside the library shows it);
* ``sortedcontainers.SortedList``: ``add`` from four workers into a list that holds data; the
  length must count the items (the library's ``self._len += 1``, no call in the window either);
* ``boltons.setutils.IndexedSet``: ``add`` from four workers; every item must sit at its own
  index and none twice (``item_index_map[item] = len(item_list)`` then ``append``: a call in
  the window).

The test code itself is plain and correct: the races are in the libraries' own code, which the
perturbation leaves alone unless it is named. Arms, interleaved, ``--repetitions`` pytest
sessions each (every session runs the six tests, from ``benchmarks/races``, the corpus's
rootdir, in this interpreter's environment, where the ``bench`` extra installs the libraries):

* **named**: ``--concurrency-packages=cachetools,sortedcontainers,boltons`` (each test runs only
  its own library's code, so this is each library named for its test);
* **defaults**: nothing named: only the rootdir (the tests' own code) is under test;
* **perturbation off**: our runner's threads alone;
* **pytest-run-parallel**: ``--parallel-threads=4 --iterations=100``.

``-p no:cacheprovider`` in every session keeps the sessions independent (no failing-seed
memory). The buggy tests are non-strict xfails (without the library under test they may pass),
so a race is found when its buggy test xfails; a twin that fails is a false alarm.

    python benchmarks/thirdparty_races.py                   # 20 sessions per arm
    python benchmarks/thirdparty_races.py --repetitions 3   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import Arm, Case, found_counts, found_table, now_line, run_parallel_arm  # noqa: E402

RACES_DIR = HERE / "races"
WORKERS = 4
LIBRARIES = ("cachetools", "sortedcontainers", "boltons")
MODULES = (
    ("thirdparty/test_cachetools_lru.py", "`cachetools.LRUCache` stores"),
    ("thirdparty/test_sortedcontainers_add.py", "`sortedcontainers.SortedList.add`"),
    ("thirdparty/test_boltons_indexedset.py", "`boltons.setutils.IndexedSet.add`"),
)
CASES = tuple(
    Case(title, f"{module}::test_buggy", f"{module}::test_fixed") for module, title in MODULES
)
OURS = ("-p", "no:run-parallel")
ARMS = (
    Arm("named", (*OURS, "--concurrency-packages=" + ",".join(LIBRARIES))),
    Arm("defaults", OURS),
    Arm("perturbation off", (*OURS, "--concurrency-perturb=false")),
    run_parallel_arm(WORKERS),
)


def versions() -> str:
    import importlib.metadata

    names = (*LIBRARIES, "pytest", "pytest-run-parallel")
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--python", default=sys.executable)
    options = parser.parse_args(argv)
    started = time.perf_counter()
    begin = now_line()
    counts = found_counts(options.python, RACES_DIR, CASES, ARMS, options.repetitions)
    lines = [
        f"Started {begin}; ended {now_line()}; {time.perf_counter() - started:.0f} s in all. "
        f"{versions()}.",
        "",
        *found_table(counts, CASES),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
