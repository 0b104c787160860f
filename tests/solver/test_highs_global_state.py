"""Regression (issue 13, bug 1): HiGHS's thread scheduler is process-global.

Once anything else in the process ran HiGHS with another thread count (``pulp.HiGHS(threads=...)``, plain
highspy), every run asking for one thread failed with status "Not Set", and ``solve`` returned a greedy answer
at 15x the optimum as ``feasible`` with gap None. The reproducer runs in a subprocess so that the changed global
state cannot leak into the other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from solver_testkit import large_problem, random_problem

from solver import solve
from solver.backends import LPOutcome, MIPOutcome
from solver.backends.cbc import CbcBackend
from solver.backends.fallback import FallbackBackend

pytest.importorskip("highspy")

ROOT = Path(__file__).resolve().parents[2]

_REPRO = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
import highspy
from solver_testkit import large_problem
from solver import solve

# someone else in the process runs HiGHS first, with another thread count
h = highspy.Highs()
h.silent()
h.setOptionValue("threads", 2)
h.addVar(0.0, 1.0)
h.changeColIntegrality(0, highspy.HighsVarType.kInteger)
h.changeColCost(0, 1.0)
h.run()
problem = large_problem(0, 74)
out = {{}}
for backend in ("highs", "auto"):
    r = solve(problem, time_limit=60, backend=backend)
    out[backend] = [r.status, r.objective, r.gap, r.backend, r.message]
print(json.dumps(out))
"""


def test_solve_is_immune_to_another_highs_thread_count():
    reference = solve(large_problem(0, 74), time_limit=60, backend="cbc")
    assert reference.status == "optimal"
    code = _REPRO.format(root=str(ROOT), tests=str(ROOT / "tests" / "solver"))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for backend, (status, objective, gap, used, message) in out.items():
        assert status == "optimal", (backend, message)
        assert gap == 0.0
        assert objective == pytest.approx(reference.objective, rel=1e-9), backend


class _BrokenBackend:
    """A primary backend whose every call fails (as HiGHS did with status "Not Set")."""

    name = "highs"

    def __init__(self):
        self.calls = 0

    def solve_lp(self, *args, **kwargs):
        self.calls += 1
        return LPOutcome("error", message="HiGHS LP status Not Set")

    def solve_mip(self, *args, **kwargs):
        self.calls += 1
        return MIPOutcome("error", message="HiGHS status Not Set")


def test_failed_backend_calls_are_repeated_on_cbc(monkeypatch):
    broken = _BrokenBackend()
    monkeypatch.setattr("solver.api.get_backend", lambda name: FallbackBackend(broken, CbcBackend))
    problem = large_problem(0, 74)
    r = solve(problem, time_limit=60)
    monkeypatch.undo()
    reference = solve(problem, time_limit=60, backend="cbc")
    assert broken.calls >= 1
    assert r.status == "optimal" and r.backend == "cbc"
    assert "highs LP failed (HiGHS LP status Not Set); cbc used instead" in r.message
    assert r.objective == pytest.approx(reference.objective, rel=1e-9)


def test_feasible_answers_always_carry_a_gap(monkeypatch):
    # even when every backend call fails, a feasible answer comes with a proven (if weak) gap
    broken = _BrokenBackend()
    monkeypatch.setattr("solver.api.get_backend", lambda name: broken)
    problem = random_problem(3, n_layers=30, tightness=0.3)
    r = solve(problem, time_limit=60)
    assert r.status == "feasible"
    assert r.gap is not None and 0.0 <= r.gap < 1.0
