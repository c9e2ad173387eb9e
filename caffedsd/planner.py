"""Choosing each layer's sparsity from measured sensitivity curves.

Pure computation on the plain data of a sensitivity scan. A layer's "drop"
at a sparsity is how much worse the chosen metric got when that layer alone
was pruned: in percentage points for an accuracy (0.5 = half a point), in
loss units for a loss. Drops of layers are predicted to add up.

- ``by_max_drop``: per layer, the highest measured sparsity whose drop is
  within the budget.
- ``by_target``: reach a sparsity over all prunable weights with the
  smallest predicted total drop. Greedy, on each layer's lower convex hull
  of (weights pruned, drop): repeatedly take the step that costs the least
  drop per pruned weight. Exact when the curves are convex; otherwise a
  good, not always optimal, choice.
"""
import heapq
from dataclasses import dataclass

from .errors import PlanningError
from .plan import Rule, SparsityPlan


@dataclass(frozen=True)
class Choice:
    layer: str
    params: int
    sparsity: float
    drop: float


def is_loss(metric):
    return "loss" in metric.lower()


def drop(metric, baseline, value):
    return value - baseline if is_loss(metric) else 100.0 * (baseline - value)


def curves(data, metric, where="sensitivity"):
    """{layer: (params, [(sparsity, drop), ...])} from a scan's data
    (read from ``where``, for messages)."""
    if metric not in data["metrics"]:
        raise PlanningError(f"{where}: metric {metric!r} was not measured (measured: {', '.join(data['metrics'])})")
    base = data["baseline"][metric]
    return {layer["layer"]: (layer["params"],
                             [(p["sparsity"], drop(metric, base, p["metrics"][metric])) for p in layer["points"]])
            for layer in data["layers"]}


def overall_sparsity(choices, prunable_params):
    """Fraction of all prunable weights the choices prune (others stay dense)."""
    return sum(c.params * c.sparsity for c in choices) / prunable_params if prunable_params else 0.0


def by_max_drop(curve_data, max_drop):
    if max_drop < 0:
        raise PlanningError(f"--max-drop {max_drop:g}: must be 0 or more")
    choices = []
    for layer, (params, points) in curve_data.items():
        allowed = [(s, d) for s, d in points if d <= max_drop]
        sparsity, cost = max(allowed, default=(0.0, 0.0))
        choices.append(Choice(layer, params, sparsity, cost))
    return choices


def _hull(options):
    """Lower convex hull of (x, y) points sorted by x, from the first point."""
    hull = []
    for point in sorted(options):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (point[0] - x1) >= (point[1] - y1) * (x2 - x1):
                hull.pop()  # the middle point lies on or above the chord
            else:
                break
        if hull and point[0] == hull[-1][0]:
            continue
        hull.append(point)
    return hull


def by_target(curve_data, prunable_params, target, max_drop=None, where="sensitivity"):
    if not 0 <= target < 1:
        raise PlanningError(f"--target-sparsity {target:g}: must be in [0, 1)")
    needed = target * prunable_params
    hulls, spars = {}, {}
    for layer, (params, points) in curve_data.items():
        allowed = [(s, d) for s, d in points if max_drop is None or d <= max_drop]
        options = [(0.0, 0.0)] + [(s * params, d) for s, d in allowed]
        hulls[layer] = _hull(options)
        spars[layer] = {s * params: s for s, _ in allowed}
    reachable = sum(h[-1][0] for h in hulls.values())
    if reachable < needed - 1e-9:
        within = "" if max_drop is None else f" within --max-drop {max_drop:g}"
        raise PlanningError(f"{where}: --target-sparsity {target:g} is out of reach: the measured curves reach at most "
                            f"{reachable / prunable_params:.4f} overall{within}")
    position = {layer: 0 for layer in hulls}
    heap = []

    def push(layer):
        hull, i = hulls[layer], position[layer]
        if i + 1 < len(hull):
            (x1, y1), (x2, y2) = hull[i], hull[i + 1]
            heapq.heappush(heap, ((y2 - y1) / (x2 - x1), layer))

    for layer in hulls:
        push(layer)
    pruned = 0.0
    while pruned < needed - 1e-9 and heap:
        _, layer = heapq.heappop(heap)
        hull = hulls[layer]
        pruned += hull[position[layer] + 1][0] - hull[position[layer]][0]
        position[layer] += 1
        push(layer)
    choices = []
    for layer, (params, _) in curve_data.items():
        x, cost = hulls[layer][position[layer]]
        choices.append(Choice(layer, params, spars[layer].get(x, 0.0), cost))
    return choices


def _literal(name):
    """A glob that matches exactly ``name`` (plan rules are globs)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def to_plan(choices, criterion):
    return SparsityPlan(criterion=criterion, rules=tuple(Rule(_literal(c.layer), c.sparsity) for c in choices))


def make_plan(sensitivity_path, output, max_drop=None, target=None, metric=None, weights=None, force=False):
    """Read a scan, choose, write the plan YAML atomically; returns the choice."""
    from .atomic import atomic_open, check_output
    from .errors import InputError
    from .report import primary_metric
    from .sensitivity import load_sensitivity

    data = load_sensitivity(sensitivity_path, weights)
    check_output(output, inputs=[sensitivity_path, weights], force=force)
    if max_drop is None and target is None:
        raise InputError("give --max-drop, --target-sparsity, or both")
    metric = metric or primary_metric(data["metrics"])
    curve_data = curves(data, metric, sensitivity_path)
    if target is None:
        choices = by_max_drop(curve_data, max_drop)
    else:
        choices = by_target(curve_data, data["prunable_params"], target, max_drop, sensitivity_path)
    overall = overall_sparsity(choices, data["prunable_params"])
    unit = "loss" if is_loss(metric) else "points"
    total_drop = sum(c.drop for c in choices)
    budget = ", ".join(f"{k} {v:g}" for k, v in (("max-drop", max_drop), ("target-sparsity", target)) if v is not None)
    header = (f"# caffedsd plan from {sensitivity_path} ({budget}; metric {metric})\n"
              f"# predicted overall sparsity {overall:.4f}, predicted drop {total_drop:.4g} {unit}\n")
    with atomic_open(output, "w") as handle:
        handle.write(header + to_plan(choices, data["criterion"]).to_yaml())
    return {"choices": choices, "overall": overall, "prunable": data["prunable_params"], "metric": metric,
            "unit": unit, "drop": total_drop}
