"""Benchmark of solver/ on ViT/Swin-shaped bit-allocation problems (2-core CI-sized machine).

Run: ``.venv/bin/python bench/solver.py`` (several minutes on a loaded 2-core machine, ``--seeds 3`` about 10; the
1000-layer rows spend most of it in scipy milp's 60 s limit; ``--quick``: 2 seeds, no textbook CBC, no 1000-layer
optimality rows, about 2-3 minutes). Results: docs/benchmarks-solver.md.

Instances: every quantizable layer of timm ViT-S/16, ViT-B/16, ViT-L/16 (224 px) and Swin-B (window 7), plus a
1000-layer stress case (ViT-B blocks repeated). Linear layers get 6 weight bits {2,3,4,5,6,8} x 5 activation
bits {3,4,5,6,8} = 30 candidates; the attention matmuls (no weights, wbits placeholder 16) get 5. Costs come from
``solver.CostModel`` (size in bytes with float16 per-channel scales, BOPs, average activation bits); three
budgets at once: size, bops, abits, with limits drawn per instance (average weight bits 3.5-5.5, 25-50 % of the
W8A8 BOPs, average activation bits 4.5-6.5).

Sensitivities follow LampQ's additive model ``Omega_w(wbits) + Omega_a(abits)`` with per-type factors, a
log-normal per-layer scale and a roughly 4x drop per extra bit (2 bits worse still), with 10 % noise. The
``interacting`` family adds a weight/activation interaction term ``0.5 * sqrt(Omega_w * Omega_a) * U(0, 1)`` so
that the problem no longer separates into a weight part and an activation part (the harder, general case).

The comparison column is the textbook model: one binary per (layer, candidate) built in PuLP and solved by CBC
with a time limit, on the same instances. Every "optimal" the solver reports is checked against an independent
HiGHS solve of the same textbook model (highspy, unscaled, zero gap, its own time limit): the ``HiGHS check``
column counts matches, mismatches and instances HiGHS could not prove within its limit.

The ``scipy milp`` columns solve the same textbook model with plain ``scipy.optimize.milp`` (HiGHS inside, its
default options: relative gap 1e-4, all threads it wants; only a time limit set), the constraint matrix built
from the same :class:`solver.Problem` the solver gets: wall and cpu time including building the matrix (cpu time
counts every thread of the process, the fairer number on a shared machine), how many runs milp reported optimal, and how the objectives compare: ``agree`` counts instances where both are proven and
within milp's gap (1e-4 relative), ``max rel diff`` is the largest ``|ours - milp| / |milp|``, ``milp lower`` /
``ours lower`` count instances where one objective is lower by more than 1e-9 relative (expected only when one of
the two stopped at its time limit), and ``OURS WRONG`` flags any instance where milp found a strictly better
assignment than one our solver called optimal.

The time-limit table runs 1000- and 5000-layer instances with short limits and prints the overrun (wall time
minus the limit) against the allowance ``0.2 s + 20 %`` of the limit.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver import Candidate, CostModel, Layer, LayerFacts, Problem, pareto_sweep, solve

WBITS = (2, 3, 4, 5, 6, 8)
ABITS = (3, 4, 5, 6, 8)
TYPE_FACTOR = {
    "qkv": 1.0,
    "proj": 0.5,
    "fc1": 1.0,
    "fc2": 2.0,
    "matmul_qk": 0.5,
    "matmul_av": 1.0,
    "patch_embed": 3.0,
    "head": 2.0,
    "reduction": 1.0,
}


def _block(prefix: str, dim: int, mlp: int, tokens: int, heads: int, window: int | None) -> list[tuple]:
    """(name, type, n_params, out_channels, macs, n_activation_elements) for one transformer block."""
    ctx = tokens if window is None else window * window  # tokens each query attends to
    return [
        (f"{prefix}.attn.qkv", "qkv", dim * 3 * dim, 3 * dim, tokens * dim * 3 * dim, tokens * dim),
        (f"{prefix}.attn.matmul_qk", "matmul_qk", 0, 0, tokens * ctx * dim, 2 * tokens * dim),
        (
            f"{prefix}.attn.matmul_av",
            "matmul_av",
            0,
            0,
            tokens * ctx * dim,
            heads * tokens * ctx + tokens * dim,
        ),
        (f"{prefix}.attn.proj", "proj", dim * dim, dim, tokens * dim * dim, tokens * dim),
        (f"{prefix}.mlp.fc1", "fc1", dim * mlp, mlp, tokens * dim * mlp, tokens * dim),
        (f"{prefix}.mlp.fc2", "fc2", mlp * dim, dim, tokens * mlp * dim, tokens * mlp),
    ]


def vit(
    dim: int, depth: int, heads: int, patch: int = 16, img: int = 224, classes: int = 1000
) -> list[tuple]:
    tokens = (img // patch) ** 2 + 1
    k = 3 * patch * patch
    layers = [("patch_embed.proj", "patch_embed", dim * k, dim, (tokens - 1) * dim * k, 3 * img * img)]
    for b in range(depth):
        layers += _block(f"blocks.{b}", dim, 4 * dim, tokens, heads, None)
    layers.append(("head", "head", dim * classes, classes, dim * classes, dim))
    return layers


def swin_b(img: int = 224, classes: int = 1000) -> list[tuple]:
    dims, depths, heads = (128, 256, 512, 1024), (2, 2, 18, 2), (4, 8, 16, 32)
    side = img // 4
    layers = [("patch_embed.proj", "patch_embed", 128 * 48, 128, side * side * 128 * 48, 3 * img * img)]
    for s, (dim, depth, h) in enumerate(zip(dims, depths, heads)):
        tokens = side * side
        for b in range(depth):
            layers += _block(f"layers.{s}.blocks.{b}", dim, 4 * dim, tokens, h, 7)
        if s < 3:
            t4 = tokens // 4
            layers.append(
                (
                    f"layers.{s}.downsample.reduction",
                    "reduction",
                    4 * dim * 2 * dim,
                    2 * dim,
                    t4 * 4 * dim * 2 * dim,
                    t4 * 4 * dim,
                )
            )
            side //= 2
    layers.append(("head.fc", "head", 1024 * classes, classes, 1024 * classes, 1024))
    return layers


def stress(n: int = 1000) -> list[tuple]:
    """``n`` layers: ViT-B blocks repeated, then the head."""
    layers = vit(768, n // 6 + 1, 12)
    return layers[: n - 1] + [layers[-1]]


SHAPES = {
    "ViT-S": lambda: vit(384, 12, 6),
    "ViT-B": lambda: vit(768, 12, 12),
    "ViT-L": lambda: vit(1024, 24, 16),
    "Swin-B": swin_b,
    "stress-1000": stress,
}


def make_problem(shape: list[tuple], seed: int, *, interacting: bool = False) -> Problem:
    """A seeded instance on ``shape`` (see the module docstring)."""
    rng = random.Random(seed)
    model = CostModel([LayerFacts(name, p, oc, macs, act) for name, _, p, oc, macs, act in shape])
    layers = []
    for name, kind, n_params, _, _, n_act in shape:
        alpha = TYPE_FACTOR[kind]
        w_scale = alpha * rng.lognormvariate(0.0, 1.0) * math.sqrt(max(n_params, 1) / 1e6)
        a_scale = alpha * rng.lognormvariate(0.0, 1.0) * math.sqrt(n_act / 1e5)
        wbits = (16,) if n_params == 0 else WBITS
        omega_w = {
            w: 0.0
            if n_params == 0
            else w_scale * 4.0 ** (2 - w) * (2.0 if w == 2 else 1.0) * rng.lognormvariate(0, 0.1)
            for w in wbits
        }
        omega_a = {a: a_scale * 4.0 ** (3 - a) * rng.lognormvariate(0, 0.1) for a in ABITS}
        sens = {}
        for w in wbits:
            for a in ABITS:
                s = omega_w[w] + omega_a[a]
                if interacting:
                    s += 0.5 * math.sqrt(omega_w[w] * omega_a[a]) * rng.random()
                sens[(w, a)] = s
        layers.append(
            Layer(name, [Candidate(w, a, s, model.costs(name, w, a)) for (w, a), s in sens.items()])
        )
    size8 = sum(model.costs(name, 8, 8)["size"] for name, *_ in shape)
    bops88 = sum(model.costs(name, 16 if p == 0 else 8, 8)["bops"] for name, _, p, *_ in shape)
    budgets = {
        "size": size8 * rng.uniform(3.5, 5.5) / 8,
        "bops": bops88 * rng.uniform(0.25, 0.5),
        "abits": rng.uniform(4.5, 6.5),
    }
    return Problem(layers, budgets)


def textbook_cbc(problem: Problem, time_limit: float) -> tuple[float, str, float | None]:
    """The plain one-hot model in PuLP + CBC: (wall seconds incl. model building, status, objective)."""
    import warnings

    import pulp

    start = time.perf_counter()
    prob = pulp.LpProblem("textbook", pulp.LpMinimize)
    x = {}
    for li, layer in enumerate(problem.layers):
        for ci, _ in enumerate(layer.candidates):
            x[li, ci] = prob.add_variable(f"x_{li}_{ci}", 0, 1, cat=pulp.LpBinary)
    prob += pulp.lpSum(
        c.sensitivity * x[li, ci] for li, l in enumerate(problem.layers) for ci, c in enumerate(l.candidates)
    )
    for li, layer in enumerate(problem.layers):
        prob += pulp.lpSum(x[li, ci] for ci in range(len(layer.candidates))) == 1
    for name, limit in problem.budgets.items():
        prob += (
            pulp.lpSum(
                c.costs[name] * x[li, ci]
                for li, l in enumerate(problem.layers)
                for ci, c in enumerate(l.candidates)
            )
            <= limit
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, threads=1)
    prob.solve(cmd)
    elapsed = time.perf_counter() - start
    if prob.status == pulp.LpStatusOptimal and prob.sol_status == pulp.LpSolutionOptimal:
        status = "optimal"
    elif prob.sol_status == pulp.LpSolutionIntegerFeasible:
        status = "time limit"
    else:
        status = pulp.LpStatus[prob.status].lower()
    return elapsed, status, pulp.value(prob.objective)


def independent_highs(problem: Problem, time_limit: float) -> tuple[str, float | None]:
    """The textbook one-hot model solved by a fresh HiGHS instance (no scaling, zero gap): (status, objective)."""
    import highspy
    import numpy as np

    layers = list(problem.layers)
    names = list(problem.budgets)
    n_groups, m = len(layers), len(names)
    cost, start, index, value = [], [0], [], []
    for li, layer in enumerate(layers):
        for c in layer.candidates:
            cost.append(c.sensitivity)
            index.append(li)
            value.append(1.0)
            for k, name in enumerate(names):
                index.append(n_groups + k)
                value.append(c.costs.get(name, 0.0))
            start.append(len(index))
    n = len(cost)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, n_groups + m
    lp.col_cost_ = np.asarray(cost)
    lp.col_lower_, lp.col_upper_ = np.zeros(n), np.ones(n)
    lp.row_lower_ = np.concatenate([np.ones(n_groups), np.full(m, -highspy.kHighsInf)])
    lp.row_upper_ = np.concatenate([np.ones(n_groups), np.asarray([problem.budgets[k] for k in names])])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.asarray(start, dtype=np.int32)
    lp.a_matrix_.index_ = np.asarray(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.asarray(value)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n
    h = highspy.Highs()
    h.silent()
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 0.0)
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        return "optimal", h.getInfo().objective_function_value
    return h.modelStatusToString(status), None


#: milp's default relative MIP gap (HiGHS's ``mip_rel_gap``): objectives within it are the same optimum.
MILP_REL_GAP = 1e-4


def scipy_milp(problem: Problem, time_limit: float) -> tuple[float, float, str, float | None]:
    """The textbook one-hot model solved by plain ``scipy.optimize.milp``: (wall seconds incl. building the
    matrix, cpu seconds of this process, status, objective). One binary per (layer, candidate); a row per layer (exactly one candidate) and a
    row per budget (summed cost <= limit)."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    start, cpu = time.perf_counter(), time.process_time()
    names = list(problem.budgets)
    n_layers, m = len(problem.layers), len(names)
    cost, rows, cols, values = [], [], [], []
    for li, layer in enumerate(problem.layers):
        if layer.fixed is not None or layer.tie is not None:
            raise ValueError(f"layer {layer.name!r}: the milp comparison has no fixed or tied layers")
        for c in layer.candidates:
            j = len(cost)
            cost.append(c.sensitivity)
            rows.append(li)
            cols.append(j)
            values.append(1.0)
            for k, name in enumerate(names):
                if c.costs.get(name, 0.0):
                    rows.append(n_layers + k)
                    cols.append(j)
                    values.append(c.costs[name])
    n = len(cost)
    matrix = coo_array((values, (rows, cols)), shape=(n_layers + m, n)).tocsr()
    lower = np.concatenate([np.ones(n_layers), np.full(m, -np.inf)])
    upper = np.concatenate([np.ones(n_layers), [problem.budgets[name] for name in names]])
    result = milp(
        np.asarray(cost),
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
        constraints=LinearConstraint(matrix, lower, upper),
        options={"time_limit": float(time_limit)},
    )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if result.status == 0:
        return elapsed, cpu, "optimal", float(result.fun)
    if result.status == 1 and result.x is not None:
        return elapsed, cpu, "time limit", float(result.fun)
    return elapsed, cpu, result.message, None


def _milp_compare(r: dict) -> str:
    c = r["milp_cmp"]
    text = f"{c['agree']}/{len(r['milp_times'])} agree, max rel diff {c['max_rel']:.1e}"
    if c["milp_better"]:
        text += f", milp lower x{c['milp_better']}"
    if c["ours_better"]:
        text += f", ours lower x{c['ours_better']}"
    if c["worse"]:
        text += f", OURS WRONG x{c['worse']}"
    return text


def _path(result) -> str:
    stats = result.stats
    if stats.get("split"):
        return "split"
    if stats.get("dp"):
        return "dp"
    if stats.get("mip_called"):
        return "mip"
    if "Lagrangian dynamic program" in result.message:
        return "lagdp"
    if "search_nodes" in stats:
        return "bnb"
    return "fixing"


def _check(check: dict) -> str:
    text = f"{check['match']} match"
    if check["differ"]:
        text += f", {check['differ']} DIFFER"
    if check["unverified"]:
        text += f", {check['unverified']} unverified"
    return text


def _fmt_s(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} / {max(values):6.3f}"


def bench_shape(
    name: str,
    family: str,
    seeds: int,
    cbc_limit: float | None,
    time_limit: float,
    check_limit: float,
    milp_limit: float,
) -> dict:
    shape = SHAPES[name]()
    times, cpus, gaps, statuses, paths, cbc_times, cbc_status, mismatch = [], [], [], [], [], [], [], 0
    check = {"match": 0, "differ": 0, "unverified": 0}
    milp_times, milp_cpus, milp_status = [], [], []
    milp_cmp = {"agree": 0, "max_rel": 0.0, "worse": 0, "milp_better": 0, "ours_better": 0}
    cands = pruned = 0
    for seed in range(seeds):
        problem = make_problem(shape, seed, interacting=family == "interacting")
        start, cpu = time.perf_counter(), time.process_time()
        result = solve(problem, time_limit=time_limit)
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        gaps.append(result.gap or 0.0)
        statuses.append(result.status)
        paths.append(_path(result))
        cands, pruned = result.stats["candidates"], result.stats["candidates_after_pruning"]
        if result.optimal:
            h_status, h_obj = independent_highs(problem, check_limit)
            if h_status != "optimal":
                check["unverified"] += 1
            elif abs(h_obj - result.objective) <= 1e-6 * abs(h_obj):
                check["match"] += 1
            else:
                check["differ"] += 1
                print(f"# {name} {family} seed {seed}: solver {result.objective!r} != HiGHS {h_obj!r}")
        t, c, status, obj = scipy_milp(problem, milp_limit)
        milp_times.append(t)
        milp_cpus.append(c)
        milp_status.append(status)
        if obj is not None and result.objective is not None:
            rel = abs(result.objective - obj) / abs(obj)
            milp_cmp["max_rel"] = max(milp_cmp["max_rel"], rel)
            if result.optimal and status == "optimal" and rel <= MILP_REL_GAP:
                milp_cmp["agree"] += 1
            if obj < result.objective - 1e-9 * abs(obj):
                milp_cmp["milp_better"] += 1
            elif result.objective < obj - 1e-9 * abs(obj):
                milp_cmp["ours_better"] += 1
            if result.optimal and obj < result.objective - 1e-9 * abs(obj):
                milp_cmp["worse"] += 1
                print(f"# {name} {family} seed {seed}: milp {obj!r} < solver's optimal {result.objective!r}")
        if cbc_limit is not None:
            t, status, obj = textbook_cbc(problem, cbc_limit)
            cbc_times.append(t)
            cbc_status.append(status)
            if status == "optimal" and result.optimal and abs(obj - result.objective) > 1e-6 * abs(obj):
                mismatch += 1
    return {
        "shape": name,
        "family": family,
        "layers": len(shape),
        "cands": cands,
        "pruned": pruned,
        "times": times,
        "cpus": cpus,
        "gaps": gaps,
        "statuses": statuses,
        "paths": paths,
        "cbc_times": cbc_times,
        "cbc_status": cbc_status,
        "mismatch": mismatch,
        "check": check,
        "milp_times": milp_times,
        "milp_cpus": milp_cpus,
        "milp_status": milp_status,
        "milp_cmp": milp_cmp,
    }


def bench_sweep(points: int = 32) -> tuple[float, float, int, bool, int]:
    """Pareto sweep of the size budget on ViT-B (seed 0, interacting family: the general path)."""
    problem = make_problem(SHAPES["ViT-B"](), 0, interacting=True)
    model_size = problem.budgets["size"] * 8 / 4.5
    values = [model_size * (2.5 + 5.5 * i / (points - 1)) / 8 for i in range(points)]
    start, cpu = time.perf_counter(), time.process_time()
    results = pareto_sweep(problem, "size", values, time_limit=10.0)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    objs = [r.objective for r in results if r.objective is not None]
    monotone = all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(objs))
    return (
        elapsed,
        cpu,
        sum(r.optimal for r in results),
        monotone,
        sum(r.status == "infeasible" for r in results),
    )


TIME_LIMIT_CASES = ((1000, 0.2), (1000, 1.0), (5000, 1.0), (5000, 10.0))


def bench_time_limits(cases=TIME_LIMIT_CASES) -> list[dict]:
    """Wall time of ``solve`` against short limits on large instances (interacting family, seed 0)."""
    from solver.api import prepare

    rows = []
    problems: dict[int, Problem] = {}
    for n, limit in cases:
        if n not in problems:
            problems[n] = make_problem(stress(n), 0, interacting=True)
        problem = problems[n]
        start = time.perf_counter()
        prepare(problem)  # validation + compilation + pruning + split test, no limit: what a limit must cover
        prep_s = time.perf_counter() - start
        start = time.perf_counter()
        result = solve(problem, time_limit=limit)
        wall = time.perf_counter() - start
        rows.append(
            {
                "layers": n,
                "limit": limit,
                "wall": wall,
                "overrun": wall - limit,
                "allowed": 0.2 + 0.2 * limit,
                "status": result.status,
                "gap": result.gap,
                "objective": result.objective,
                "prepare": prep_s,
                "message": result.message,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="instances per shape and family (default 5)")
    parser.add_argument(
        "--cbc-limit", type=float, default=3.0, help="time limit of the textbook CBC runs (s)"
    )
    parser.add_argument(
        "--check-limit", type=float, default=60.0, help="time limit of the independent HiGHS checks (s)"
    )
    parser.add_argument(
        "--milp-limit", type=float, default=60.0, help="time limit of the plain scipy milp runs (s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 seeds, no textbook CBC, no 1000-layer optimality rows"
    )
    parser.add_argument(
        "--no-time-limits", action="store_true", help="skip the time-limit table (1000/5000-layer instances)"
    )
    args = parser.parse_args(argv)
    seeds = 2 if args.quick else args.seeds
    cbc_limit = None if args.quick else args.cbc_limit
    check_limit = args.check_limit

    load = os.getloadavg()[0]
    solve(make_problem(SHAPES["ViT-S"](), 99), time_limit=30.0)  # warm-up: imports highspy once
    rows = []
    for name in ("ViT-S", "ViT-B", "ViT-L", "Swin-B"):
        for family in ("additive", "interacting"):
            cbc = cbc_limit if family == "additive" else None
            rows.append(bench_shape(name, family, seeds, cbc, 10.0, check_limit, args.milp_limit))
    if not args.quick:
        for family in ("additive", "interacting"):
            rows.append(
                bench_shape("stress-1000", family, min(seeds, 3), None, 10.0, check_limit, args.milp_limit)
            )

    head = (
        f"| {'shape':<11} | {'family':<11} | layers | candidates -> pruned | {'paths':<22} | "
        "wall s median / max | cpu s median / max | status   | max gap | target         | "
        "textbook CBC s median / max | CBC status | HiGHS check | scipy milp s median / max | "
        "milp cpu s median / max | milp status | "
        "milp vs ours                                                |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        target = "-"
        if r["shape"] == "ViT-B":
            ok = max(r["times"]) < 0.2 and all(s == "optimal" for s in r["statuses"])
            target = f"<0.2 s {'met' if ok else 'NOT met'}"
        elif r["shape"] == "stress-1000":
            ok = max(r["times"]) < 3.0 and all(s == "optimal" for s in r["statuses"])
            target = f"<3 s {'met' if ok else 'NOT met'}"
        paths = ",".join(f"{p}x{r['paths'].count(p)}" for p in sorted(set(r["paths"])))
        n_opt = sum(s == "optimal" for s in r["statuses"])
        status = f"{n_opt}/{len(r['statuses'])} opt"
        if r["cbc_times"]:
            cbc = _fmt_s(r["cbc_times"])
            n_cbc = sum(s == "optimal" for s in r["cbc_status"])
            cbc_status = f"{n_cbc}/{len(r['cbc_status'])} opt" + (
                f" ({r['mismatch']} differ)" if r["mismatch"] else ""
            )
        else:
            cbc, cbc_status = "not run", "-"
        n_milp = sum(s == "optimal" for s in r["milp_status"])
        milp_opt = f"{n_milp}/{len(r['milp_status'])} opt"
        print(
            f"| {r['shape']:<11} | {r['family']:<11} | {r['layers']:>6} | {r['cands']:>10} -> {r['pruned']:<6} | "
            f"{paths:<22} | {_fmt_s(r['times']):>19} | {_fmt_s(r['cpus']):>18} | {status:<8} | "
            f"{max(r['gaps']):7.1e} | {target:<14} | {cbc:>27} | {cbc_status:<10} | {_check(r['check']):<11} | "
            f"{_fmt_s(r['milp_times']):>25} | {_fmt_s(r['milp_cpus']):>23} | {milp_opt:<11} | {_milp_compare(r):<59} |"
        )
    elapsed, cpu, n_opt, monotone, n_inf = bench_sweep()
    ok = elapsed < 2.0 and monotone and n_opt + n_inf == 32
    print(
        f"\nPareto sweep, ViT-B (interacting, seed 0), 32 size limits from 2.5 to 8 average weight bits: "
        f"{elapsed:.3f} s wall ({cpu:.3f} s cpu) in total, {n_opt}/32 optimal, {n_inf} infeasible, "
        f"objective monotone: {monotone}; target <2 s {'met' if ok else 'NOT met'}"
    )
    total = {k: sum(r["check"][k] for r in rows) for k in ("match", "differ", "unverified")}
    print(
        f"Independent HiGHS check of every 'optimal' (textbook model, limit {check_limit} s): {total['match']} "
        f"match, {total['differ']} differ, {total['unverified']} not proven by HiGHS within its limit"
    )
    print()
    if args.no_time_limits:
        _footer(cbc_limit, args.milp_limit, load)
        return
    tl_head = (
        "| layers | limit s | wall s | overrun s | allowed 0.2 s + 20 % | met | status   | gap     | "
        "validate+prepare s (no limit) |"
    )
    print(tl_head)
    print("|" + "|".join("-" * len(c) for c in tl_head.split("|")[1:-1]) + "|")
    for t in bench_time_limits():
        met = "yes" if t["overrun"] <= t["allowed"] else "NO"
        gap = "-" if t["gap"] is None else f"{t['gap']:.1e}"
        print(
            f"| {t['layers']:>6} | {t['limit']:>7.1f} | {t['wall']:>6.2f} | {t['overrun']:>9.2f} | "
            f"{t['allowed']:>20.2f} | {met:<3} | {t['status']:<8} | {gap:<7} | {t['prepare']:>29.2f} |"
        )
    print()
    _footer(cbc_limit, args.milp_limit, load)


def _footer(cbc_limit: float | None, milp_limit: float, load: float) -> None:
    print(
        "paths: split = weight/activation parts solved apart; dp = single-budget dynamic program; lagdp = closed "
        "by the Lagrangian DP; fixing = closed by reduced-cost fixing; bnb = small branch and bound; mip = reduced "
        f"problem sent to HiGHS. Time limit 10 s; textbook CBC limit {cbc_limit} s; scipy milp limit {milp_limit} s. "
        f"Load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f} (2 cores, shared)."
    )


if __name__ == "__main__":
    main()
