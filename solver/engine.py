"""The exact pipeline: which algorithm solves a compiled problem.

1. Budgets that cannot be met even alone -> infeasible (no solver call).
2. If the least sensitive option of every group meets the budgets, it is optimal.
3. Separable problems (see :mod:`solver.decompose`) are split into a weight part and an activation part, each
   solved by this pipeline; the joined answer is kept when it meets the coupling budgets (e.g. ``bops``).
4. Otherwise :mod:`solver.general`: a single binding budget goes to the exact dynamic program
   (:mod:`solver.dp`); else LP relaxation, incumbent, reduced-cost fixing, then a small branch and bound or the
   MIP backend on what is left.

Choices in an :class:`Outcome` are option indices of the *unpruned* compiled groups.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .backends import Backend
from .compile import Compiled
from .decompose import Split, join, split_separable
from .general import Outcome, solve_general
from .numerics import fits, usage
from .prune import prune_dominated

__all__ = ["Outcome", "Prepared", "deadline_for", "fmt", "prepare_compiled", "solve_prepared"]


def fmt(x: float) -> str:
    """Numbers in messages: integers without a decimal point, others with up to 6 significant digits."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


@dataclass(frozen=True)
class Prepared:
    """A compiled problem with everything that does not depend on the limits done once."""

    raw: Compiled
    pruned: Compiled
    split: Split | None = None
    parts: tuple[Prepared, Prepared] | None = field(default=None, repr=False)

    def with_limits(self, limits: tuple[float, ...]) -> Prepared:
        parts = None
        if self.split is not None and self.parts is not None:
            w, a = self.parts
            parts = (
                w.with_limits(tuple(limits[k] for k in self.split.w_budgets)),
                a.with_limits(tuple(limits[k] for k in self.split.a_budgets)),
            )
        return Prepared(self.raw.with_limits(limits), self.pruned.with_limits(limits), self.split, parts)


def prepare_compiled(raw: Compiled, *, allow_split: bool = True, deadline: float | None = None) -> Prepared:
    """Prune dominated options and look for a weight/activation split. Both are only speed-ups: past
    ``deadline`` (a ``time.perf_counter()`` value) they stop, leaving groups unpruned or the problem unsplit."""
    split = split_separable(raw, deadline=deadline) if allow_split else None
    parts = None
    if split is not None:
        parts = (
            prepare_compiled(split.weight, allow_split=False, deadline=deadline),
            prepare_compiled(split.activation, allow_split=False, deadline=deadline),
        )
    return Prepared(raw, prune_dominated(raw, deadline), split, parts)


def _infeasible_alone(comp: Compiled) -> Outcome | None:
    bad = [k for k in range(len(comp.limits)) if not fits(comp.min_achievable[k], comp.limits[k])]
    if not bad:
        return None
    parts = [
        f"budget {comp.budget_names[k]!r} cannot be met: limit {fmt(comp.limits[k])} < minimum achievable "
        f"{fmt(comp.min_achievable[k])}"
        for k in bad
    ]
    return Outcome(
        "infeasible", message="; ".join(parts), infeasible_budgets=tuple(comp.budget_names[k] for k in bad)
    )


def _to_raw(prep: Prepared, out: Outcome) -> Outcome:
    if out.choice is not None:
        out.choice = [g.id(o) for g, o in zip(prep.pruned.groups, out.choice)]
    return out


def _from_raw(prep: Prepared, hint: Sequence[int] | None) -> list[int] | None:
    if hint is None or len(hint) != len(prep.pruned.groups):
        return None
    local = []
    for g, raw_id in zip(prep.pruned.groups, hint):
        ids = g.ids if g.ids is not None else range(len(g.sens))
        if raw_id not in ids:
            return None
        local.append(list(ids).index(raw_id))
    return local


def _solve_split(
    prep: Prepared, get_backend: Callable[[], Backend], deadline: float | None, mip_gap: float
) -> Outcome | None:
    """Solve the two parts; None when the joined answer breaks a coupling budget (or a part timed out)."""
    split = prep.split
    if split is None or prep.parts is None:
        return None
    outs = []
    for part in prep.parts:
        out = solve_prepared(part, get_backend, deadline=deadline, mip_gap=mip_gap)
        if out.status == "infeasible":
            names = ", ".join(repr(n) for n in part.raw.budget_names)
            return Outcome(
                "infeasible",
                backend=out.backend,
                message=f"budgets {names} cannot all be met at once (each alone can)",
            )
        if out.choice is None:
            return None
        outs.append(out)
    w_out, a_out = outs
    choice = join(split, w_out.choice, a_out.choice)
    raw = prep.raw
    used = usage(raw.groups, choice, len(raw.limits))
    if not all(fits(used[k], raw.limits[k]) for k in split.coupling):
        return None
    status = "optimal" if w_out.status == a_out.status == "optimal" else "feasible"
    bound = None
    if w_out.bound is not None and a_out.bound is not None:
        # each part's bound holds without the coupling budgets, so their sum bounds the whole problem
        bound = w_out.bound + a_out.bound
    backends = sorted({w_out.backend, a_out.backend} - {"none"})
    stats = {f"weight_{k}": v for k, v in w_out.stats.items()}
    stats.update({f"activation_{k}": v for k, v in a_out.stats.items()})
    stats["split"] = 1
    if status == "optimal":
        message = "optimal: weight and activation parts solved separately"
    else:
        message = (
            "not proven optimal (weight and activation parts solved separately): "
            f"weight part {w_out.status} ({w_out.message}); activation part {a_out.status} ({a_out.message})"
        )
    return Outcome(status, choice, bound, "+".join(backends) or "none", message, stats=stats)


def solve_prepared(
    prep: Prepared,
    get_backend: Callable[[], Backend],
    *,
    deadline: float | None,
    mip_gap: float,
    hint: Sequence[int] | None = None,
) -> Outcome:
    """Run the pipeline; ``get_backend`` is called only when an LP/MIP solver is needed. ``deadline`` is a
    ``time.perf_counter()`` value or None; ``hint``: a previous choice (raw option indices) to start from."""
    raw = prep.raw
    report = _infeasible_alone(raw)
    if report is not None:
        return report
    if prep.split is not None:
        out = _solve_split(prep, get_backend, deadline, mip_gap)
        if out is not None:
            return out
    out = solve_general(
        prep.pruned, get_backend, deadline=deadline, mip_gap=mip_gap, hint=_from_raw(prep, hint)
    )
    if out.status == "infeasible" and not out.message:
        names = ", ".join(repr(n) for n in raw.budget_names)
        out.message = f"budgets {names} cannot all be met at once (each alone can)"
    return _to_raw(prep, out)


def deadline_for(time_limit: float | None) -> float | None:
    """``time.perf_counter()`` value ``time_limit`` seconds from now (None: no limit)."""
    return None if time_limit is None else time.perf_counter() + time_limit
