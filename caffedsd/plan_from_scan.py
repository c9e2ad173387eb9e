"""Choosing each layer's sparsity from measured sensitivity curves.

The planners are pure computation on the plain data of a sensitivity scan;
``make_plan`` (the `plan` command) reads the scan, writes the plan, and with
--verify measures whole pruned nets through ``WholeNet`` (a pycaffe Net, the
scan's Evaluator), which ``back_off`` takes as a callable. A layer's "drop"
at a sparsity is how much worse the chosen metric got when that layer alone
was pruned: in percentage points for an accuracy (0.5 = half a point), in
loss units for a loss. Drops of layers are predicted to add up.

- ``by_max_drop``: per layer, the highest measured sparsity whose drop is
  within the budget.
- ``by_target``: reach a sparsity over all prunable weights with the
  smallest predicted total drop, over every choice of one measured point
  per layer (``least_drop``, exact), then with as little sparsity past the
  target as moving one or two layers at a time at no more drop finds.
- ``back_off``: the closed loop of ``plan --verify``. Measure the whole
  pruned net; when its drop exceeds the budget, bisect the path of plans
  that steps, one at a time, the layer costing most per unit of its sparsity
  (predicted drop / sparsity) down to its next lower measured sparsity.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import PlanningError
from .masks import get_criterion
from .report import number_text, one_line
from .plan import Rule, SparsityPlan
from .values import is_real


@dataclass(frozen=True)
class PlanResult:
    """What make_plan chose (per-layer Choices), predicts and, with verify,
    measured; ``start`` and ``history`` trace the back-off."""

    choices: list
    overall: float  # sparsity over all prunable weights
    prunable: int  # prunable weights
    metric: str
    unit: str  # "points" or "loss"
    drop: float  # predicted total drop
    measured_drop: float = None
    verified: dict = None  # what the plan file's verified: holds
    start: dict = None  # {overall, drop} before backing off
    history: list = ()  # [{overall, predicted_drop, measured_drop}] per measurement
    # Choices of layers that do not feed the metric (auxiliary classifiers),
    # pruned at no cost to it, and the overall sparsity of the weights that do.
    unfed: tuple = ()
    overall_fed: float = None


@dataclass(frozen=True)
class Choice:
    layer: str
    params: int
    sparsity: float
    drop: float  # as measured

    @property
    def counted_drop(self):
        return counted_drop(self.drop)


# Measured outputs are means of float32 values, each off by up to an ulp
# (6e-8 near 1, 6e-6 once in points): a drop `caffe test` shows as exactly
# 1 point comes out as 1.0000050 or 0.9999950. Drops this close to a budget
# are within it.
TOLERANCE = 1e-4


def within(drop, budget):
    return drop <= budget + TOLERANCE


def counted_drop(drop):
    """A layer's drop as a plan counts it: a measured gain from pruning
    (below 0), or float32 noise (within TOLERANCE of 0), is 0."""
    return 0.0 if drop <= TOLERANCE else drop


def predicted_drop(choices):
    """The plan's predicted drop: the sum of its layers' counted drops."""
    return sum(c.counted_drop for c in choices)


def metric_kind(data, metric):
    """"accuracy", "loss" or "other", as the scan recorded it from the layer
    types; older scans recorded no kinds, and a name with "loss" in it is
    taken for a loss there."""
    if "kinds" in data:
        return data["kinds"][metric]
    return "loss" if "loss" in metric.lower() else "accuracy"


def drop(kind, baseline, value):
    """How much worse ``value`` is than ``baseline``: in loss units for a
    loss, in percentage points for an accuracy."""
    return value - baseline if kind == "loss" else 100.0 * (baseline - value)


def curves(data, metric, where="sensitivity"):
    """{layer: (params, [(sparsity, drop), ...])} from a scan's data
    (read from ``where``, for messages)."""
    if metric not in data["metrics"]:
        raise PlanningError(f"{where}: metric {metric!r} was not measured (measured: {', '.join(data['metrics'])})")
    kind = metric_kind(data, metric)
    if kind == "other":
        usable = [m for m in data["metrics"] if metric_kind(data, m) != "other"]
        raise PlanningError(f"{where}: metric {metric!r} is the output of neither an Accuracy nor a loss layer, "
                            f"so a drop has no direction; give --metric one of: {', '.join(usable)}")
    base = data["baseline"][metric]
    # A point whose output was NaN or Inf (null) measured no drop: none is planned from it.
    return {layer["layer"]: (layer["params"],
                             [(p["sparsity"], drop(kind, base, p["metrics"][metric])) for p in layer["points"]
                              if p["metrics"][metric] is not None])
            for layer in data["layers"]}


def pruned_counts(data):
    """({layer: {sparsity: weights at 0.0 after pruning it}}, weights at 0.0
    in prunable layers the scan left out) from a scan: a scan of a pruned
    model starts from its zeros, which pruning up to as many takes first.
    Scans before zeros were recorded give {} and 0 (no zeros to start from)."""
    counts = {}
    for layer in data["layers"]:
        if "zeros" in layer:
            counts[layer["layer"]] = {0.0: layer["zeros"], **{p["sparsity"]: p["zeros"] for p in layer["points"]}}
    scanned = sum(layer.get("zeros", 0) for layer in data["layers"])
    return counts, data.get("prunable_zeros", scanned) - scanned


def _pruned(counts, layer, params, sparsity):
    return counts.get(layer, {}).get(sparsity, params * sparsity)


def overall_sparsity(choices, prunable_params, counts=None, elsewhere=0):
    """Fraction of all prunable weights at 0.0 once the choices are pruned:
    ``counts`` and ``elsewhere`` as pruned_counts gives them (the zeros a
    pruned model has already); without, what the choices prune alone."""
    zeros = elsewhere + sum(_pruned(counts or {}, c.layer, c.params, c.sparsity) for c in choices)
    return zeros / prunable_params if prunable_params else 0.0


def check_budget(option, value):
    if not is_real(value):
        raise PlanningError(f"{option} {value!r}: must be a number, 0 or more")
    if not value >= 0:  # NaN too
        raise PlanningError(f"{option} {value:g}: must be 0 or more")


def by_max_drop(curve_data, max_drop):
    check_budget("--max-drop", max_drop)
    choices = []
    for layer, (params, points) in curve_data.items():
        allowed = [(s, d) for s, d in points if within(d, max_drop)]
        sparsity, cost = max(allowed, default=(0.0, 0.0))
        choices.append(Choice(layer, params, sparsity, cost))
    return choices


def _shown_below(value, limit):
    """``value`` (below ``limit``) with 4 decimals, or as many more as it
    takes not to read as ``limit`` or more."""
    for digits in range(4, 17):
        text = f"{value:.{digits}f}"
        if float(text) < limit:
            return text
    return repr(value)


def by_target(curve_data, prunable_params, target, max_drop=None, where="sensitivity", counts=None, elsewhere=0):
    """``counts`` and ``elsewhere``: the zeros a pruned model has already
    (pruned_counts), which count towards the target."""
    if not 0 <= target < 1:
        raise PlanningError(f"--target-sparsity {target:g}: must be in [0, 1)")
    if max_drop is not None:
        check_budget("--max-drop", max_drop)
    counts = counts or {}
    # Per layer, its options: (sparsity, weights it prunes beyond the zeros
    # it starts with, drop), the start first.
    options = {}
    for layer, (params, points) in curve_data.items():
        start = _pruned(counts, layer, params, 0.0)
        allowed = sorted((s, d) for s, d in points if max_drop is None or within(d, max_drop))
        options[layer] = [(0.0, 0.0, 0.0)] + [(s, max(0.0, _pruned(counts, layer, params, s) - start), d)
                                              for s, d in allowed]
    starts = sum(_pruned(counts, layer, params, 0.0) for layer, (params, _) in curve_data.items())
    needed = target * prunable_params - elsewhere - starts
    reachable = elsewhere + starts + sum(max(o[1] for o in opts) for opts in options.values())
    if reachable < target * prunable_params - 1e-9 * max(1, prunable_params):
        budget = "" if max_drop is None else f" within --max-drop {max_drop:g}"
        raise PlanningError(f"{where}: --target-sparsity {target:g} is out of reach: the measured curves reach at most "
                            f"{_shown_below(reachable / prunable_params, target)} overall{budget}")
    picks = least_drop([[(gain, d) for _, gain, d in opts] for opts in options.values()], needed)
    return [Choice(layer, params, options[layer][pick][0], options[layer][pick][2])
            for (layer, (params, _)), pick in zip(curve_data.items(), picks)]


def least_drop(layers, needed):
    """One option per layer (its index), each option a (gain, drop) and
    every layer's first (0, 0), whose gains add up to ``needed`` or more
    with the least total drop, in whole steps of TOLERANCE; a drop below 0
    counts as 0 (a measured gain from pruning is noise a plan does not chase
    past the target). Exact: a
    dynamic programme over the (gain, drop) pairs no other pair beats, gains
    counted only up to ``needed``. Then, at no more drop, as little gain
    past ``needed`` as moving layers, one or two at a time, finds
    (``_less_past``)."""
    # Drops in whole steps of TOLERANCE: float32 noise (a drop of 4e-8 where
    # `caffe test` shows none) would otherwise outweigh a choice's overshoot.
    # Counted in float64, exact up to 2**53 steps and only rounded past them:
    # as int64, a loss output's drops of 1e15 wrapped round, and the worst
    # choices looked the cheapest. (Capped where dividing would overflow.)
    cost = [np.round(np.clip(np.array([d for _, d in opts], dtype=float), 0.0, 1e300) / TOLERANCE)
            for opts in layers]
    gains = [np.array([g for g, _ in opts], dtype=float) for opts in layers]
    rest = np.concatenate([np.cumsum([g.max() for g in gains[::-1]])[::-1], [0.0]])
    # Gains of millions of weights (fractional in scans before zeros were
    # counted) added in other orders differ in their last bits.
    reached = needed - 1e-9 * max(1.0, float(rest[0]), abs(needed))
    gain, drop, trail = np.zeros(1), np.zeros(1), []
    for index, (g, d) in enumerate(zip(gains, cost)):
        total = (gain[:, None] + g[None, :]).ravel()
        spent = (drop[:, None] + d[None, :]).ravel()
        counted = np.where(total >= reached, needed, total)
        alive = np.flatnonzero(counted + rest[index + 1] >= reached)  # the layers after it can still reach it
        # Most counted gain first, then least drop, then least gain: a pair
        # survives only with less drop than every pair before it.
        order = alive[np.lexsort((total[alive], spent[alive], -counted[alive]))]
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = spent[order][1:] < np.minimum.accumulate(spent[order])[:-1]
        order = order[keep]
        trail.append(divmod(order, len(g)))
        gain, drop = total[order], spent[order]
    best = int(np.flatnonzero(gain >= reached)[0])  # one pair counts all of needed; the least drop
    picks = []
    for parents, chosen in reversed(trail):
        picks.append(int(chosen[best]))
        best = int(parents[best])
    picks.reverse()
    return _less_past(gains, cost, picks, reached)


def _less_past(gains, cost, picks, reached):
    """``picks`` moved, one or two layers at a time, the move that takes
    back the most gain first, while the gains still reach ``reached`` and
    the drop grows by nothing: the dynamic programme keeps, of pairs of
    equal drop, the one of most gain, which may pass ``needed`` by more than
    another choice of the same drop would (flat curves: a layer stepped up
    lets a larger one step down)."""
    layer_of = np.concatenate([np.full(len(g), i) for i, g in enumerate(gains)] + [[-1]])  # -1: no second layer
    option = np.concatenate([np.arange(len(g)) for g in gains] + [[0]])
    different = layer_of[:, None] != layer_of[None, :]
    picks = list(picks)
    while True:
        more = np.concatenate([g - g[p] for g, p in zip(gains, picks)] + [[0.0]])
        worse = np.concatenate([d - d[p] for d, p in zip(cost, picks)] + [[0]])
        total = sum(g[p] for g, p in zip(gains, picks))
        change = more[:, None] + more[None, :]
        allowed = different & (change < 0) & (worse[:, None] + worse[None, :] <= 0) & (total + change >= reached)
        if not allowed.any():
            return picks
        first, second = np.unravel_index(np.argmin(np.where(allowed, change, np.inf)), change.shape)
        for entry in (first, second):
            if layer_of[entry] >= 0:
                picks[layer_of[entry]] = int(option[entry])


def step_down(choice, points):
    """``choice`` moved to the next lower measured sparsity of its curve (or 0)."""
    lower = [(s, d) for s, d in points if s < choice.sparsity]
    sparsity, cost = max(lower, default=(0.0, 0.0))
    return Choice(choice.layer, choice.params, sparsity, cost)


def drop_per_sparsity(choice, points):
    """The back-off's order: a layer's predicted drop per unit of its sparsity."""
    return choice.drop / choice.sparsity


def back_off_path(choices, curve_data, cost=drop_per_sparsity):
    """The plans a back-off walks through, from ``choices`` to nothing
    pruned: each one steps the layer of highest ``cost(choice, its curve's
    points)`` (default: predicted drop / sparsity) down to its next lower
    measured sparsity. Every plan prunes a subset of what the one before it
    prunes."""
    current = list(choices)
    path = [list(current)]
    while True:
        pruning = [c for c in current if c.sparsity > 0]
        if not pruning:
            return path
        worst = max(pruning, key=lambda c: cost(c, curve_data[c.layer][1]))
        current[current.index(worst)] = step_down(worst, curve_data[worst.layer][1])
        path.append(list(current))


def back_off(choices, curve_data, measure, max_total_drop):
    """The most pruning plan of ``back_off_path`` whose ``measure(choices)``
    (the whole net's drop) is within ``max_total_drop``, found by bisection:
    measuring every step would take up to one measurement per layer and
    sparsity (59 full test passes on SqueezeNet), bisection about log2 of
    that. Nothing pruned is within any budget, unmeasured. Bisection takes
    the measured drop to grow along the path; where noise breaks that, it
    still returns a measured plan within the budget, next to one over it.

    Returns (choices, measured drop, history), history being
    [(choices, measured drop)] in the order measured."""
    check_budget("--max-total-drop", max_total_drop)
    path = back_off_path(choices, curve_data)
    history = []

    def probe(index):
        drop = measure(path[index])
        history.append((path[index], drop))
        return drop

    first = probe(0)
    if within(first, max_total_drop) or len(path) == 1:
        return path[0], first, history
    over, fits, fits_drop = 0, len(path) - 1, None
    while fits - over > 1:
        middle = (over + fits) // 2
        drop = probe(middle)
        if within(drop, max_total_drop):
            fits, fits_drop = middle, drop
        else:
            over = middle
    if fits_drop is None:  # only the plan that prunes nothing fits
        fits_drop = probe(fits)
    return path[fits], fits_drop, history


class WholeNet:
    """The scan's net on the TEST phase (the scan's own N batches, or
    ``iterations``): ``drop(choices)`` prunes every chosen layer at once,
    measures, and puts the weights back."""

    def __init__(self, data, metric, model=None, weights=None, iterations=None, gpu=None, allow_python_layers=False):
        from .caffemodel import file_sha256, read_caffemodel
        from .errors import InputError
        from .caffe_proto import read_net_prototxt
        from .caffe_env import check_net_runs
        from .sensitivity import Evaluator

        recorded = model is None
        model = Path(model or data["model"])
        weights = Path(weights or data["weights"])
        for what, path, option in (("net is", model, "--model"), ("weights are", weights, "--weights")):
            if not path.is_file():
                raise InputError(f"{path}: the scan's {what} not there (give {option})")
        if read_caffemodel(weights).sha256() != data["weights_sha256"]:
            raise InputError(f"{weights}: not the weights the scan measured (their sha256 differs)")
        # The net file holds the TEST data and batch size the scan measured
        # with; an explicit --model is taken as the user's (a moved data set).
        if recorded and "net_sha256" in data and file_sha256(model) != data["net_sha256"]:
            raise InputError(f"{model}: edited since the scan measured with it; give it as --model to verify "
                             "with it as it is now")
        if iterations is not None and iterations < 1:
            raise InputError(f"--iterations {iterations}: must be 1 or more")
        self.iterations = iterations or data["iterations"]
        # The scan's net, or --model, with the batches it reads.
        check_net_runs(read_net_prototxt(model, allow_python_layers), model, gpu, batches=self.iterations)
        self.metric, self.kind = metric, metric_kind(data, metric)
        self.criterion, self.seed = data["criterion"], data.get("seed", 0)
        self.model, self.weights = model, weights
        self.evaluator = Evaluator(model, weights, self.iterations, gpu, sha256=data["weights_sha256"])
        # The file names its data; the scan recorded the examples it read.
        # Those of the evaluator's own Net: another Net built first in this
        # process would have drawn from C's rand() that HDF5Data's shuffle
        # draws from, and the evaluator's would read other batches.
        if recorded and data.get("data_sha256") and self.iterations == data["iterations"]:
            if self.evaluator.batches is None:  # streamed: each pass is checked as it reads
                self.evaluator.expect(data["data_sha256"], "the scan measured on")
            elif self.evaluator.data_sha256 != data["data_sha256"]:
                raise InputError(f"{model}: its TEST data gives other examples than the scan measured (rewritten "
                                 "data, or a TEST layer that shuffles); give it as --model to verify with them")
        self.baseline = self.evaluator.run()
        if metric not in self.baseline:
            raise InputError(f"{model}: has no TEST output {metric!r}")
        self.measured = []

    def drop(self, choices):
        metrics, _, _ = self.evaluator.run_pruned({c.layer: c.sparsity for c in choices if c.sparsity > 0},
                                                   self.criterion, self.seed)
        self.measured.append(metrics)
        return drop(self.kind, self.baseline[self.metric], metrics[self.metric])


def _check_not_data(output, model):
    """Refuse an ``output`` that is a file the net ``model`` reads as data,
    even with --force: --verify's measurements and a rerun of the scan read
    it."""
    from .atomic import check_not_data
    from .caffe_proto import read_net_prototxt
    from .netcheck import built_state, data_files

    if model is None or not Path(model).is_file():
        return  # WholeNet says so
    net = read_net_prototxt(model, allow_python_layers=True)  # read, not built: none of its layers runs
    check_not_data(output, data_files(net, [built_state(net, "TEST"), built_state(net, "TRAIN")], model),
                   f"{model} reads")


def _literal(name):
    """A glob that matches exactly ``name`` (plan rules are globs)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def to_plan(choices, criterion, verified=None, seed=None):
    """The plan of ``choices``; ``seed``: the random criterion's, which its
    masks (and what was verified of them) depend on. ``verified`` gets the
    plan's digest, which an edit of the plan then no longer matches."""
    plan = SparsityPlan(criterion=criterion, rules=tuple(Rule(_literal(c.layer), c.sparsity) for c in choices),
                        seed=seed if get_criterion(criterion).seeded else None)
    return plan if verified is None else replace(plan, verified={**verified, "plan_sha256": plan.digest()})


def _comment(text):
    """``text`` as one YAML comment line. The scan's path and its metric (a
    top's name) may hold a newline or another control character, which would
    end the comment and leave the rest of the line to be parsed as YAML."""
    return "# " + one_line(text) + "\n"


def make_plan(sensitivity_path, output, max_drop=None, target=None, metric=None, weights=None, force=False,
              verify=False, max_total_drop=None, iterations=None, model=None, gpu=None, allow_python_layers=False):
    """Read a scan, choose, write the plan YAML atomically; returns the choice.

    With ``verify``, the whole pruned net is measured on the scan's net and
    weights (its Python layers refused unless ``allow_python_layers``: the
    scan's own permission is not the plan's), and with ``max_total_drop``
    backed off until it is within it; the measured drop goes into the
    plan's ``verified``."""
    from .atomic import check_output, write_text
    from .errors import InputError
    from .maskfile import check_not_masks_of_another
    from .report import scan_metric
    from .sensitivity import load_sensitivity, scan_files

    data = load_sensitivity(sensitivity_path, weights)
    # The scan's own files, net and weights too: --verify reads them, a rerun
    # of the scan goes on from its folder, and a plan written over one would
    # end the scan's use.
    check_output(output, inputs=[*scan_files(sensitivity_path), weights, model, data.get("model"),
                                 data.get("weights")], force=force)
    check_not_masks_of_another(output)
    _check_not_data(output, model or data.get("model"))
    if max_total_drop is not None:
        check_budget("--max-total-drop", max_total_drop)
    if max_total_drop is not None and not verify:
        raise InputError("--max-total-drop needs --verify (it is a measured budget)")
    for option, value in (("--iterations", iterations), ("--model", model), ("--gpu", gpu)):
        if value is not None and not verify:  # each only changes what --verify measures
            raise InputError(f"{option} needs --verify")
    if metric is not None and not metric.strip():
        raise InputError(f"--metric {metric!r}: names no output")
    if max_drop is None and target is None:
        if max_total_drop is None:
            raise InputError("give --max-drop, --target-sparsity, --max-total-drop (with --verify), or some of them")
        max_drop = max_total_drop  # no layer alone may cost more than the whole net may
    metric = metric or scan_metric(data)
    curve_data = curves(data, metric, sensitivity_path)
    counts, elsewhere = pruned_counts(data)

    def overall(choices):
        return overall_sparsity(choices, data["prunable_params"], counts, elsewhere)

    if target is None:
        choices = by_max_drop(curve_data, max_drop)
        if not any(c.sparsity > 0 for c in choices):
            raise PlanningError(f"{sensitivity_path}: no layer's measured drop is within --max-drop "
                                f"{number_text(max_drop)} at any scanned sparsity ({metric}); a plan would "
                                "prune nothing")
    else:
        choices = by_target(curve_data, data["prunable_params"], target, max_drop, sensitivity_path, counts,
                            elsewhere)
    start_overall = overall(choices)
    start_drop = predicted_drop(choices)
    measured, history, verified, net = None, [], None, None
    if verify:
        net = WholeNet(data, metric, model=model, weights=weights, iterations=iterations, gpu=gpu,
                       allow_python_layers=allow_python_layers)
        budget_total = float("inf") if max_total_drop is None else max_total_drop
        choices, measured, history = back_off(choices, curve_data, net.drop, budget_total)
        # net.measured runs beside history; the chosen plan need not be the last measured.
        chosen = max(i for i, (c, _) in enumerate(history) if c == choices)
        verified = {"metric": metric, "baseline": net.baseline[metric],
                    "measured": net.measured[chosen][metric],
                    "measured_drop": measured, "predicted_drop": predicted_drop(choices),
                    "max_total_drop": max_total_drop, "iterations": net.iterations,
                    "weights_sha256": data["weights_sha256"], "measurements": len(history)}
        if max_total_drop is not None and not within(measured, max_total_drop):
            raise InputError(f"{sensitivity_path}: the whole net cannot be brought within --max-total-drop")
    predicted = overall(choices)
    unit = "loss" if metric_kind(data, metric) == "loss" else "points"
    total_drop = predicted_drop(choices)
    budget = ", ".join(f"{k} {v:g}" for k, v in (("max-drop", max_drop), ("target-sparsity", target),
                                                  ("max-total-drop", max_total_drop)) if v is not None)
    header = (_comment(f"caffedsd plan from {sensitivity_path} ({budget}; metric {metric})")
              + _comment(f"predicted overall sparsity {predicted:.4f}, predicted drop {total_drop:.4g} {unit}"))
    if verify:
        header += _comment(f"measured drop of the whole pruned net {measured:.4g} {unit} "
                           f"({len(history)} measurement(s), {net.iterations} TEST iterations each)")
    unfed, overall_fed = unfed_choices(data, choices, metric, counts)
    if unfed:
        header += _comment(f"{', '.join(c.layer for c in unfed)} do not feed {metric}: pruned at no cost to it; "
                           f"the scanned weights that feed it, {overall_fed:.4f} sparse")
    write_text(output, header + to_plan(choices, data["criterion"], verified, data.get("seed", 0)).to_yaml())
    return PlanResult(choices, predicted, data["prunable_params"], metric, unit, total_drop, measured, verified,
                      {"overall": start_overall, "drop": start_drop},
                      [{"overall": overall(c),
                        "predicted_drop": predicted_drop(c), "measured_drop": m} for c, m in history],
                      unfed, overall_fed)


def unfed_choices(data, choices, metric, counts=None):
    """(the pruning choices of layers whose result never reaches ``metric``,
    the sparsity the choices give the scanned weights that do), or ((), None)
    when every layer feeds it or the scan did not record what each feeds."""
    feeds = {layer["layer"]: layer.get("feeds") for layer in data["layers"]}
    unfed = tuple(c for c in choices if feeds.get(c.layer) is not None and metric not in feeds[c.layer]
                  and c.sparsity > 0)
    if not unfed:
        return (), None
    fed = [c for c in choices if c not in unfed]
    return unfed, overall_sparsity(fed, sum(c.params for c in fed), counts)
