import hashlib
import json
import re
from pathlib import Path

import pytest

from caffedsd.plan import PlanError, Rule, SparsityPlan, load_plan, plan_from_options

LAYERS = ["conv1", "fire2/squeeze1x1", "fire2/expand3x3", "fire3/expand3x3", "conv10"]


def test_rule_parse():
    assert Rule.parse("fire*/expand3x3=0.7", error=PlanError) == Rule("fire*/expand3x3", 0.7)
    for bad in ["conv1", "=0.5", "conv1=abc"]:
        with pytest.raises(PlanError):
            Rule.parse(bad, error=PlanError)


def test_default_and_rules_last_match_wins():
    plan = SparsityPlan(sparsity=0.5, rules=(Rule("fire*", 0.6), Rule("fire*/expand3x3", 0.7), Rule("conv10", 0)))
    assert plan.amounts(LAYERS) == {"conv1": 0.5, "fire2/squeeze1x1": 0.6, "fire2/expand3x3": 0.7,
                                    "fire3/expand3x3": 0.7, "conv10": 0.0}


def test_rules_only_leave_other_layers():
    plan = SparsityPlan(rules=(Rule("conv1", 0.3),))
    assert plan.amounts(LAYERS) == {"conv1": 0.3}


def test_rule_matching_nothing_is_an_error():
    plan = SparsityPlan(sparsity=0.5, rules=(Rule("fc*", 0.9),))
    with pytest.raises(PlanError, match="'fc\\*' matches no prunable layer"):
        plan.amounts(LAYERS)


@pytest.mark.parametrize("kwargs", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(rules=(Rule("a", 2),)),
                                    dict(), dict(sparsity=0.5, criterion="biggest"), dict(sparsity=True),
                                    dict(sparsity=0.5, criterion={"fc*": 0.7})])
def test_validated_when_built(kwargs):
    with pytest.raises(PlanError):
        SparsityPlan(**kwargs)


def test_std_amount_is_a_multiplier():
    assert SparsityPlan(criterion="std", sparsity=1.5).sparsity == 1.5


def test_dict_and_yaml_round_trip():
    plan = SparsityPlan(criterion="random", sparsity=0.4, rules=(Rule("conv*", 0.2), Rule("conv10", 0.0)))
    assert SparsityPlan.from_dict(plan.to_dict()) == plan
    assert SparsityPlan.from_yaml(plan.to_yaml()) == plan


def test_a_glob_given_again_keeps_only_its_last_rule():
    """A masks file records the plan as a mapping: fc* given twice was kept
    at its first place with its last value, and the recorded plan pruned
    fc1 at 0.5 where the plan applied pruned it at 0.7."""
    plan = SparsityPlan(rules=[("fc*", 0.3), ("fc1", 0.5), ("fc*", 0.7)])  # tuples, as GlobRules takes them
    assert plan.rules == (Rule("fc1", 0.5), Rule("fc*", 0.7))
    assert plan.amounts(["fc1", "fc2"]) == {"fc1": 0.7, "fc2": 0.7}
    assert SparsityPlan.from_dict(plan.to_dict()) == plan and SparsityPlan.from_yaml(plan.to_yaml()) == plan


@pytest.mark.parametrize("layers", ["[]", '""', "false", "0", "null"])
def test_layers_that_are_no_mapping_are_refused(layers):
    # Taken as "no rules", they pruned every layer at the default sparsity, silently.
    with pytest.raises(PlanError, match="^p.yaml: 'layers' must map layer names or globs to amounts$"):
        SparsityPlan.from_yaml(f"sparsity: 0.5\nlayers: {layers}\n", "p.yaml")
    assert SparsityPlan.from_yaml("sparsity: 0.5\nlayers: {}\n", "p.yaml").rules == ()


@pytest.mark.parametrize("text, expect", [
    ("sparsity: 1" + "0" * 400, "sparsity 1000"), ("criterion: std\nsparsity: 1" + "0" * 400, "sparsity 1000"),
    ("layers: {fc1: 1" + "0" * 400 + "}", "rule 'fc1' 1000"),
    ("sparsity: 0.5\nverified: {measured_drop: 1" + "0" * 400 + "}", "verified: expected a mapping with a finite"),
    ("sparsity: 0.5\nseed: 1" + "0" * 5000, "p.yaml:2:7: a whole number of 5001 characters: too long"),
    ("sparsity: 0.5\nseed: 0x" + "f" * 4000, "p.yaml:2:7: a whole number of 4002 characters: too long")])
def test_numbers_past_a_floats_range_are_one_line(text, expect):
    # OverflowError and ValueError tracebacks (exit status 1).
    with pytest.raises(PlanError, match=re.escape(expect)):
        SparsityPlan.from_yaml(text, "p.yaml")


def test_a_verified_random_plan_without_a_seed_prunes_with_the_seed_it_was_verified_with():
    """Its plan_sha256 counts no seed as seed 0; a dsd stage drew its masks
    with the recipe's seed, under the verified record of seed 0's."""
    base = SparsityPlan(criterion="random", sparsity=0.5, seed=0)
    data = base.to_dict() | {"verified": {"measured_drop": 0.1, "plan_sha256": base.digest()}}
    del data["seed"]
    plan = SparsityPlan.from_dict(data)
    assert plan.seed_for(7) == 0
    assert plan.to_dict() == data  # written as read: a run folder's recipe keeps its fingerprint
    assert SparsityPlan(criterion="random", sparsity=0.5).seed_for(7) == 7  # unverified: the command's
    with pytest.raises(PlanError, match="verified: measured another plan"):
        SparsityPlan.from_dict(data | {"seed": 3})


def test_unknown_key_and_bad_yaml(tmp_path):
    with pytest.raises(PlanError, match="unknown key"):
        SparsityPlan.from_dict({"sparsity": 0.5, "layer": {}})
    path = tmp_path / "plan.yaml"
    path.write_text("layers: [conv1\n")
    with pytest.raises(PlanError, match="plan.yaml:.*not valid YAML"):
        load_plan(path)


def test_plan_from_options(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("criterion: keepmax\nsparsity: 0.5\nlayers:\n  conv1: 0.3\n")
    plan = plan_from_options(sparsity=0.6, rules=("conv1=0.1",), plan_file=path)
    assert plan.amounts(["conv1", "conv2"]) == {"conv1": 0.1, "conv2": 0.6}
    with pytest.raises(PlanError, match="nothing to prune"):
        plan_from_options()


def test_plan_file_keeps_its_verified_record_only_while_unchanged(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("criterion: keepmax\nsparsity: 0.5\nlayers:\n  conv1: 0.3\n"
                    "verified: {metric: accuracy, measured_drop: 0.4}\n")
    assert plan_from_options(plan_file=path).verified["measured_drop"] == 0.4
    assert plan_from_options(sparsity=0.5, criterion="keepmax", plan_file=path).verified is not None
    for changed in ({"sparsity": 0.6}, {"rules": ("conv1=0.1",)}, {"criterion": "std"}):
        assert plan_from_options(plan_file=path, **changed).verified is None, changed


# -- plan --verify: the closed loop ------------------------------------------------------

from caffedsd.plan_from_scan import Choice, PlanningError, back_off, back_off_path  # noqa: E402


def test_back_off_path_steps_the_costliest_per_unit_of_sparsity_first():
    curve_data = {"a": (100, [(0.5, 1.0), (0.9, 4.0)]), "b": (1000, [(0.5, 0.2), (0.9, 1.0)])}
    start = [Choice("a", 100, 0.9, 4.0), Choice("b", 1000, 0.9, 1.0)]
    # a costs 4.0 / 0.9 per unit, b 1.0 / 0.9: a steps down first, to 0.5,
    # then a again (1.0 / 0.5 = 2 > 1.11) to 0, then b to 0.5 and to 0.
    path = back_off_path(start, curve_data)
    assert [[c.sparsity for c in plan] for plan in path] == [[0.9, 0.9], [0.5, 0.9], [0.0, 0.9], [0.0, 0.5],
                                                             [0.0, 0.0]]
    assert [c.drop for c in path[3]] == [0.0, 0.2]


def test_back_off_bisects_the_path():
    curve_data = {"a": (100, [(0.5, 1.0), (0.9, 4.0)]), "b": (1000, [(0.5, 0.2), (0.9, 1.0)])}
    start = [Choice("a", 100, 0.9, 4.0), Choice("b", 1000, 0.9, 1.0)]
    measured = []

    def measure(choices):  # a made-up whole-net drop: twice the sum of the parts
        measured.append([c.sparsity for c in choices])
        return 2 * sum(c.drop for c in choices)

    # Drops along the path: 10, 4, 2, 0.4, (0). The first plan is over 0.5;
    # then the middle of plans 0..4 (2: drop 2, over), then of 2..4 (3: 0.4).
    choices, drop, history = back_off(start, curve_data, measure, 0.5)
    assert measured == [[0.9, 0.9], [0.0, 0.9], [0.0, 0.5]]
    assert [c.sparsity for c in choices] == [0.0, 0.5] and drop == pytest.approx(0.4)
    assert [d for _, d in history] == pytest.approx([10.0, 2.0, 0.4])


def test_back_off_measures_about_log2_of_the_path():
    points = [(s / 10, float(s)) for s in range(1, 10)]  # drop = 10 x sparsity
    start = [Choice("a", 10, 0.9, 9.0)]
    # Path: 0.9, 0.8, ..., 0.1, 0 (10 plans). Budget 3.5: 0.3 is the most
    # pruning plan within it. Measured: 0.9 (9), 0.5 (5), 0.3 (3), 0.4 (4).
    choices, drop, history = back_off(start, {"a": (10, points)}, lambda c: 10 * c[0].sparsity, 3.5)
    assert choices[0].sparsity == pytest.approx(0.3) and drop == pytest.approx(3.0)
    assert [c[0].sparsity for c, _ in history] == pytest.approx([0.9, 0.5, 0.3, 0.4])


def test_back_off_where_noise_breaks_the_order():
    points = [(s / 10, float(s)) for s in range(1, 10)]
    start = [Choice("a", 10, 0.9, 9.0)]
    noisy = {0.9: 9, 0.8: 0.1, 0.7: 8, 0.6: 7, 0.5: 6, 0.4: 5, 0.3: 4, 0.2: 0.5, 0.1: 0.2}

    # 0.8 measures within the budget by chance; bisection does not see it and
    # returns a measured plan within the budget next to one over it.
    choices, drop, history = back_off(start, {"a": (10, points)}, lambda c: noisy[round(c[0].sparsity, 1)], 1.0)
    assert choices[0].sparsity == pytest.approx(0.2) and drop == 0.5
    assert all(d > 1.0 for c, d in history if c[0].sparsity > 0.2)
    assert 0.3 in [round(c[0].sparsity, 1) for c, _ in history]


def test_back_off_stops_at_once_within_budget_and_at_nothing_pruned():
    curve_data = {"a": (10, [(0.5, 1.0)])}
    start = [Choice("a", 10, 0.5, 1.0)]
    choices, drop, history = back_off(start, curve_data, lambda c: 0.3, 0.5)
    assert choices == start and drop == 0.3 and len(history) == 1
    # A budget never met: every layer ends at 0 and the loop ends.
    choices, drop, history = back_off(start, curve_data, lambda c: 9.0 if c[0].sparsity else 0.0, 0.5)
    assert choices[0].sparsity == 0.0 and drop == 0.0 and len(history) == 2
    with pytest.raises(PlanningError):
        back_off(start, curve_data, lambda c: 0.0, -1)


def test_a_drop_at_the_budget_up_to_float32_noise_is_within_it():
    """Accuracies b/1000 and (b - k)/1000 as float32 values: `caffe test`
    shows a drop of k/10 points, the doubles give up to 1e-5 more."""
    import numpy as np

    from caffedsd.plan_from_scan import by_max_drop, by_target, drop

    over = 0
    for k in (1, 10, 20):
        for b in range(100, 1001):
            measured = drop("accuracy", float(np.float32(b / 1000)), float(np.float32((b - k) / 1000)))
            budget = k / 10
            over += measured > budget
            curve_data = {"a": (100, [(0.5, 0.0), (0.8, measured), (0.9, budget + 0.01)])}
            assert by_max_drop(curve_data, budget)[0].sparsity == 0.8, (b, k, measured)
            assert by_target(curve_data, 100, 0.8, max_drop=budget)[0].sparsity == 0.8
            choices, got, _ = back_off([Choice("a", 100, 0.8, measured)], curve_data, lambda c: measured, budget)
            assert choices[0].sparsity == 0.8 and got == measured
    assert over > 100  # most of them come out above the budget


def test_nan_budgets_are_refused():
    from caffedsd.plan_from_scan import by_max_drop, by_target

    curve_data, nan = {"a": (10, [(0.5, 1.0)])}, float("nan")
    for option, call in (("--max-drop", lambda: by_max_drop(curve_data, nan)),
                         ("--max-drop", lambda: by_target(curve_data, 10, 0.3, nan)),
                         ("--max-total-drop", lambda: back_off([Choice("a", 10, 0.5, 1.0)], curve_data,
                                                               lambda c: 0.0, nan))):
        with pytest.raises(PlanningError, match=f"{option} nan: must be 0 or more"):
            call()


def test_an_unreachable_target_is_not_shown_as_reached():
    """0.98996 reachable, 0.98998 asked: ".4f" showed 0.9900."""
    from caffedsd.plan_from_scan import by_target

    with pytest.raises(PlanningError, match=r"--target-sparsity 0.98998 is out of reach: the measured curves reach "
                                            r"at most 0.98996 overall$"):
        by_target({"a": (100000, [(0.98996, 0.0)])}, 100000, 0.98998)
    with pytest.raises(PlanningError, match=r"reach at most 0.5000 overall$"):
        by_target({"a": (10, [(0.5, 0.0)])}, 10, 0.6)


def test_a_target_on_flat_curves_prunes_about_the_target(tmp_path):
    """Every drop 0: any choice that reaches the target costs nothing, so
    the least gain past it is what decides: 200 of the 400 weights of a
    (100) and b (300) at a target of 0.5. (The greedy choice before
    stopped at 0.525: a at 0.9, b at 0.4.)"""
    from caffedsd.plan_from_scan import by_target, make_plan

    flat = [(s / 10, 0.0) for s in range(1, 10)]
    choices = by_target({"a": (100, flat), "b": (300, flat)}, 400, 0.5)
    assert sum(c.params * c.sparsity for c in choices) == pytest.approx(200) and not any(c.drop for c in choices)
    # A small layer stepped up lets a large one step down: 0.7996 before.
    sizes = {"conv_a": 100, "fc": 400000, "conv_b": 100}
    choices = by_target({name: (size, flat) for name, size in sizes.items()}, 400200, 0.7)
    assert sum(c.params * c.sparsity for c in choices) / 400200 == pytest.approx(0.7, abs=1e-6)
    scan = {"format": "caffedsd-sensitivity", "metrics": ["accuracy"], "baseline": {"accuracy": 0.8},
            "kinds": {"accuracy": "accuracy"}, "primary": "accuracy", "criterion": "keepmax",
            "fingerprint": "f", "prunable_params": 400, "seed": 0, "data_sha256": None,
            "layers": [{"layer": name, "params": params,
                        "points": [{"sparsity": s, "metrics": {"accuracy": 0.8}} for s, _ in flat]}
                       for name, params in (("a", 100), ("b", 300))]}
    (tmp_path / "sensitivity.json").write_text(json.dumps(scan))
    result = make_plan(tmp_path / "sensitivity.json", tmp_path / "plan.yaml", target=0.5)
    assert result.overall == pytest.approx(0.5)
    assert load_plan(tmp_path / "plan.yaml").rules == tuple(Rule(c.layer, c.sparsity) for c in result.choices)


def test_the_zeros_a_pruned_model_has_count_towards_the_plan(tmp_path):
    """A scan of a model whose a (100 weights) is half zeros already and
    whose c (100, not scanned) has 40: pruning a to 0.3 takes only zeros (its
    points say 50 zeros), and the overall sparsity counts every zero. The
    plan said 0.3 of a and predicted 30 / 300 where prune then left 90."""
    from caffedsd.plan_from_scan import make_plan

    points = {"a": [(0.3, 50, 0.8), (0.6, 60, 0.7)], "b": [(0.3, 30, 0.8), (0.6, 60, 0.8)]}
    scan = {"format": "caffedsd-sensitivity", "metrics": ["accuracy"], "baseline": {"accuracy": 0.8},
            "kinds": {"accuracy": "accuracy"}, "primary": "accuracy", "criterion": "keepmax",
            "fingerprint": "f", "prunable_params": 300, "prunable_zeros": 90, "seed": 0, "data_sha256": None,
            "layers": [{"layer": name, "params": 100, "zeros": 50 if name == "a" else 0,
                        "points": [{"sparsity": s, "zeros": z, "metrics": {"accuracy": m}} for s, z, m in pts]}
                       for name, pts in points.items()]}
    (tmp_path / "sensitivity.json").write_text(json.dumps(scan))
    result = make_plan(tmp_path / "sensitivity.json", tmp_path / "max.yaml", max_drop=1)
    assert [(c.layer, c.sparsity) for c in result.choices] == [("a", 0.3), ("b", 0.6)]
    assert result.overall == pytest.approx((40 + 50 + 60) / 300)
    assert "predicted overall sparsity 0.5000" in (tmp_path / "max.yaml").read_text()
    # 0.4 of 300 is 120 zeros: 90 are there, and b's 0.3 adds the 30 missing.
    result = make_plan(tmp_path / "sensitivity.json", tmp_path / "target.yaml", target=0.4)
    assert [(c.layer, c.sparsity) for c in result.choices] == [("a", 0.0), ("b", 0.3)]
    assert result.overall == pytest.approx(0.4)
    # Scans from before zeros were counted plan as before.
    for layer in scan["layers"]:
        del layer["zeros"]
    del scan["prunable_zeros"]
    (tmp_path / "sensitivity.json").write_text(json.dumps(scan))
    assert make_plan(tmp_path / "sensitivity.json", tmp_path / "old.yaml", max_drop=1).overall == pytest.approx(0.3)


def test_a_measured_gain_is_no_negative_drop_in_the_plans_prediction(tmp_path):
    """A layer whose pruned net measured better than the baseline (a gain,
    noise to a plan) was added into the predicted drop as a negative one:
    a plan of drops 9 and -6 said "predicted total drop 3", its table -6,
    and a float32 ulp of a drop showed as 7.451e-07."""
    from caffedsd.plan_from_scan import make_plan
    from caffedsd.report import plan_table

    points = {"a": [(0.5, 0.71)], "b": [(0.5, 0.86)], "c": [(0.5, 0.8 - 7.451e-09)]}
    scan = {"format": "caffedsd-sensitivity", "metrics": ["accuracy"], "baseline": {"accuracy": 0.8},
            "kinds": {"accuracy": "accuracy"}, "primary": "accuracy", "criterion": "keepmax",
            "fingerprint": "f", "prunable_params": 300, "seed": 0, "data_sha256": None,
            "layers": [{"layer": name, "params": 100,
                        "points": [{"sparsity": sp, "metrics": {"accuracy": m}} for sp, m in pts]}
                       for name, pts in points.items()]}
    (tmp_path / "sensitivity.json").write_text(json.dumps(scan))
    result = make_plan(tmp_path / "sensitivity.json", tmp_path / "plan.yaml", max_drop=10)
    assert [(c.layer, c.sparsity, round(c.drop, 4)) for c in result.choices] == \
        [("a", 0.5, 9.0), ("b", 0.5, -6.0), ("c", 0.5, 0.0)]  # as measured, in points
    assert result.drop == pytest.approx(9.0)
    assert "predicted drop 9 points" in (tmp_path / "plan.yaml").read_text()
    assert [line.split()[-1] for line in plan_table(result).splitlines()[2:5]] == ["9", "0", "0"]


def test_a_plan_is_not_written_over_the_scan_nor_given_options_it_ignores(tmp_path):
    from caffedsd.errors import InputError
    from caffedsd.plan_from_scan import make_plan

    scan = {"format": "caffedsd-sensitivity", "metrics": ["accuracy"], "baseline": {"accuracy": 0.8},
            "kinds": {"accuracy": "accuracy"}, "primary": "accuracy", "criterion": "keepmax",
            "fingerprint": "f", "prunable_params": 100, "seed": 0, "data_sha256": None,
            "layers": [{"layer": "a", "params": 100, "points": [{"sparsity": 0.5, "metrics": {"accuracy": 0.8}}]}]}
    (tmp_path / "sensitivity.json").write_text(json.dumps(scan))
    for name in ("scan.json", "points.jsonl", "sensitivity.md"):  # a rerun of the scan goes on from these
        (tmp_path / name).write_text("the scan's")
        with pytest.raises(InputError, match=f"{name}: .*input"):
            make_plan(tmp_path, tmp_path / name, max_drop=1)
        assert (tmp_path / name).read_text() == "the scan's"
    for option, value in (("--model", tmp_path / "net.prototxt"), ("--gpu", 0), ("--iterations", 3)):
        with pytest.raises(InputError, match=f"^{option} needs --verify$"):
            make_plan(tmp_path, tmp_path / "p.yaml", max_drop=1, **{option[2:]: value})
    with pytest.raises(InputError, match="--metric '': names no output"):
        make_plan(tmp_path, tmp_path / "p.yaml", max_drop=1, metric="")
    assert not (tmp_path / "p.yaml").exists()
    assert make_plan(tmp_path, tmp_path / "p.yaml", max_drop=1).overall == 0.5


def test_a_targets_last_step_goes_only_as_far_as_needed():
    """Points (weights pruned, drop) (0, 0), (1, 1.5), (2, 2): (1, 1.5) lies
    above the chord to (2, 2) and is off the hull. A target of 1 weight of
    10 stepped to 2 (drop 2); 1 reaches it at less drop (1.5). A point past
    the target that costs more than the step's end is not taken."""
    from caffedsd.plan_from_scan import by_target

    (choice,) = by_target({"a": (10, [(0.1, 1.5), (0.2, 2.0)])}, 10, 0.1)
    assert (choice.sparsity, choice.drop) == (0.1, 1.5)
    (choice,) = by_target({"a": (10, [(0.1, 3.0), (0.2, 2.0)])}, 10, 0.1)
    assert (choice.sparsity, choice.drop) == (0.2, 2.0)


def test_a_target_costs_the_least_drop_the_points_allow():
    """a (10 weights): 0.5 costs 1.0. b (10): 0.4 costs 0.5, 0.9 costs 10.
    A target of 5 of 20 weights: a at 0.5 alone costs 1.0. The greedy
    choice took b's cheaper step per weight first (4 for 0.5), then a's
    (1.0) for the last one: 1.5."""
    from caffedsd.plan_from_scan import by_target

    choices = by_target({"a": (10, [(0.5, 1.0)]), "b": (10, [(0.4, 0.5), (0.9, 10.0)])}, 20, 0.25)
    assert [(c.layer, c.sparsity, c.drop) for c in choices] == [("a", 0.5, 1.0), ("b", 0.0, 0.0)]


def test_a_target_that_only_every_layer_at_its_most_reaches_is_planned():
    """Scans from before zeros were counted give fractional gains (params x
    sparsity): added in other orders, their sums differed in the last bits,
    and the one choice that reached the target was thrown away (a
    traceback)."""
    from caffedsd.plan_from_scan import by_target

    sizes = {"l0": 2573011, "l1": 2325778, "l2": 466347}
    choices = by_target({name: (size, [(0.9, 0.0)]) for name, size in sizes.items()}, sum(sizes.values()), 0.9)
    assert [c.sparsity for c in choices] == [0.9, 0.9, 0.9]


def test_a_drop_of_float_noise_does_not_push_a_target_further():
    """LeNet's scan: ip1 at 0.7 measured a drop of 3.7e-8 points (float32
    noise; `caffe test` shows none), at 0.8 one of -0.2 (0). The noise made
    0.8 the cheaper: 0.7433 overall for a target of 0.5, where 0.7 costs
    nothing either and passes it by less."""
    from caffedsd.plan_from_scan import by_target

    (choice,) = by_target({"ip1": (10, [(0.7, 3.725290353973065e-08), (0.8, -0.19999995827674824)])}, 10, 0.5)
    assert choice.sparsity == 0.7


def test_huge_drops_of_a_loss_do_not_wrap_round():
    """A loss output's drops can pass 1e14 (EuclideanLoss): in steps of
    1e-4 as int64, a and b's 5e14 each summed past 2**63 and wrapped to
    below 0, so the plan took them over c and d's 1e3 each."""
    from caffedsd.plan_from_scan import by_target

    curves = {"a": (100, [(0.5, 5e14)]), "b": (100, [(0.5, 5e14)]), "c": (100, [(0.5, 1e3)]),
              "d": (100, [(0.5, 1e3)])}
    choices = by_target(curves, 400, 0.25)
    assert [(c.layer, c.sparsity) for c in choices] == [("a", 0.0), ("b", 0.0), ("c", 0.5), ("d", 0.5)]
    # One drop past int64's steps (the cast gave a number below 0), and a
    # choice between two huge ones.
    choices = by_target({"a": (100, [(0.5, 1e16)]), "b": (100, [(0.5, 1.2)]), "c": (100, [(0.5, 1e300)]),
                         "d": (100, [(0.5, 3e299)])}, 400, 0.25)
    assert [(c.layer, c.sparsity) for c in choices] == [("a", 0.5), ("b", 0.5), ("c", 0.0), ("d", 0.0)]
    choices = by_target({"c": (100, [(0.5, 1e300)]), "d": (100, [(0.5, 3e299)])}, 200, 0.25)
    assert [(c.layer, c.sparsity) for c in choices] == [("c", 0.0), ("d", 0.5)]
    # A huge drop no plan takes leaves the small ones told apart (steps
    # scaled to it made 0.02 and 0.002 alike, among 60 layers).
    from caffedsd.plan_from_scan import least_drop

    small = [[(0, 0), (100, 0.02)], [(0, 0), (150, 0.002)]] + [[(0, 0), (0.001, 0.0)]] * 57
    assert least_drop([[(0, 0), (1000, 1e15)]] + small, 100)[:3] == [0, 0, 1]


def test_least_drop_is_the_least_of_every_choice():
    """Against trying every choice, on random curves, some of them not
    convex and some with drops below 0 (which count as 0)."""
    import itertools

    import numpy as np

    from caffedsd.plan_from_scan import least_drop

    rng = np.random.default_rng(0)
    for _ in range(300):
        layers = []
        for k in rng.integers(1, 5, size=rng.integers(1, 5)):
            gains = sorted(rng.choice(40, size=k, replace=False) + 1)
            layers.append([(0.0, 0.0)] + [(float(g), float(d)) for g, d in zip(gains, rng.normal(1, 1.5, k).round(1))])
        needed = float(rng.integers(0, sum(opts[-1][0] for opts in layers) + 1))

        def gain_and_cost(picks):
            return (sum(layers[i][p][0] for i, p in enumerate(picks)),
                    sum(max(0.0, layers[i][p][1]) for i, p in enumerate(picks)))

        every = [gain_and_cost(picks) for picks in itertools.product(*(range(len(opts)) for opts in layers))]
        least = min(cost for gain, cost in every if gain >= needed)
        gain, cost = gain_and_cost(least_drop(layers, needed))
        assert gain >= needed and cost == pytest.approx(least), (layers, needed)


def test_a_random_plans_seed_travels_with_it(tmp_path):
    """The random criterion's masks, and what was verified of them, are
    those of one seed: the plan keeps it, and another --seed drops the
    record."""
    path = tmp_path / "plan.yaml"
    path.write_text("criterion: random\nseed: 7\nlayers:\n  conv1: 0.3\n"
                    "verified: {metric: accuracy, measured_drop: 0.4}\n")
    plan = plan_from_options(plan_file=path)
    assert plan.seed == 7 and plan.seed_for(0) == 7 and plan.verified is not None
    assert SparsityPlan.from_yaml(plan.to_yaml()) == plan
    assert plan_from_options(plan_file=path, seed=7).verified is not None
    assert plan_from_options(plan_file=path, seed=3).verified is None
    assert plan_from_options(plan_file=path, seed=3).seed_for(0) == 3
    keepmax = tmp_path / "keepmax.yaml"
    keepmax.write_text("layers:\n  conv1: 0.3\nverified: {metric: accuracy, measured_drop: 0.4}\n")
    assert plan_from_options(plan_file=keepmax, seed=3).verified is not None  # no draw to differ
    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(PlanError, match="seed"):
            SparsityPlan(criterion="random", sparsity=0.5, seed=bad)


def test_a_plans_comments_stay_comments_whatever_the_scan_is_called(tmp_path):
    """The plan's header names the scan and its metric; a newline (or a
    line separator YAML breaks lines at) in either must not end the comment."""
    from caffedsd.plan_from_scan import make_plan

    metric = "top\u2028one"
    scan = {"format": "caffedsd-sensitivity", "metrics": [metric], "baseline": {metric: 0.9},
            "kinds": {metric: "accuracy"}, "primary": metric, "criterion": "keepmax",
            "fingerprint": "f", "prunable_params": 100, "seed": 0, "data_sha256": None,
            "layers": [{"layer": "conv1", "params": 100,
                        "points": [{"sparsity": 0.5, "metrics": {metric: 0.89}}]}]}
    folder = tmp_path / "se ns\n\u00fc:x\x85y"
    folder.mkdir()
    (folder / "sensitivity.json").write_text(json.dumps(scan))
    make_plan(folder, folder / "plan y.yaml", max_drop=5)
    text = (folder / "plan y.yaml").read_text()
    assert text.startswith("# caffedsd plan from " + str(tmp_path) + "/se ns\\n\u00fc:x\\x85y (max-drop 5; "
                           "metric top\\u2028one)\n# predicted overall sparsity 0.5000"), text
    assert load_plan(folder / "plan y.yaml").rules == (Rule("conv1", 0.5),)


def test_verified_record_round_trips_and_is_checked():
    plan = SparsityPlan(rules=(Rule("conv1", 0.5),), verified={"metric": "accuracy", "measured_drop": 0.4})
    again = SparsityPlan.from_yaml(plan.to_yaml())
    assert again == plan and again.verified["measured_drop"] == 0.4
    with pytest.raises(PlanError, match="measured_drop"):
        SparsityPlan(rules=(Rule("conv1", 0.5),), verified={"metric": "accuracy"})
    # What goes into the masks file as JSON: finite numbers, strings, null.
    for text, expect in (("measured_drop: .nan", "a finite measured_drop"),
                         ("measured_drop: 1, when: 2024-05-01", "verified: when datetime.date(2024, 5, 1): expected"),
                         ("measured_drop: 1, seen: !!set {a: null}", "verified: seen {'a'}: expected")):
        with pytest.raises(PlanError, match=re.escape(expect)):
            SparsityPlan.from_yaml(f"sparsity: 0.5\nverified: {{{text}}}\n", where="p.yaml")


def test_a_verified_plan_edited_since_is_refused_while_it_keeps_the_record():
    """The record names the plan it measured; rules reordered (the last
    match wins), a value changed, or another random seed prune otherwise."""
    from caffedsd.plan_from_scan import to_plan

    plan = to_plan([Choice("ip1", 100, 0.9, 0.5), Choice("ip2", 10, 0.1, 0.1)], "keepmax",
                   {"metric": "accuracy", "measured_drop": 0.6})
    text = plan.to_yaml()
    assert SparsityPlan.from_yaml(text) == plan and plan.verified["plan_sha256"] == plan.digest()
    for old, new in (("ip1: 0.9", "ip1: 0.8"), ("criterion: keepmax", "criterion: random")):
        with pytest.raises(PlanError, match="p.yaml: verified: measured another plan than this one"):
            SparsityPlan.from_yaml(text.replace(old, new), where="p.yaml")
    reordered = "\n".join(line for line in text.splitlines() if "ip2" not in line).replace(
        "  ip1: 0.9", "  ip2: 0.1\n  ip1: 0.9")
    with pytest.raises(PlanError, match="measured another plan"):
        SparsityPlan.from_yaml(reordered, where="p.yaml")
    assert SparsityPlan.from_yaml(text.replace("ip1: 0.9", "ip1: 0.90")) == plan  # the same number


# -- plan --verify on a briefly trained LeNet, real Caffe -----------------------------------

VERIFY_ITERS = 5  # 5 x 100 = the 500 test images of the fixture's slice


@pytest.fixture(scope="module")
def lenet_scan(lenet, tmp_path_factory):
    from caffedsd.sensitivity import scan

    _, proto, weights = lenet
    out = tmp_path_factory.mktemp("plan-sens") / "scan"
    scan(proto, weights, out, sparsities=(0.3, 0.6, 0.9), iterations=VERIFY_ITERS)
    return out


def _caffe_test_accuracy(proto, weights):
    from caffedsd.verify import parse_test_outputs, run_caffe_test

    code, log = run_caffe_test(proto, weights, iterations=VERIFY_ITERS)
    assert code == 0, log[-2000:]
    return parse_test_outputs(log)["accuracy"]


@pytest.mark.parametrize("budget", [["--max-total-drop", "1"], ["--target-sparsity", "0.9", "--max-total-drop", "1"]])
def test_verified_plan_meets_the_budget_as_stock_caffe_measures_it(lenet, lenet_scan, cli, tmp_path, budget):
    """The measured drop written into the plan is what an independent
    evaluation of the pruned net (prune --plan, then stock `caffe test`)
    gives, and it is within --max-total-drop."""
    _, proto, weights = lenet
    planned = cli("plan", "--sensitivity", lenet_scan, *budget, "--verify", "-o", "plan.yaml")
    assert planned.exit_code == 0, planned.output
    assert "predicted total drop" in planned.output and "measured drop of the whole pruned net" in planned.output
    plan = load_plan(tmp_path / "plan.yaml")
    verified = plan.verified
    from caffedsd.plan_from_scan import within

    # within: float32 accuracies (a drop of 1 point can be 1.0000002)
    assert within(verified["measured_drop"], 1.0) and verified["iterations"] == VERIFY_ITERS
    assert any(r.value > 0 for r in plan.rules)  # a budget of 1 point still prunes something
    result = cli("prune", "-w", weights, "--plan", "plan.yaml", "-o", "pruned.caffemodel")
    assert result.exit_code == 0, result.output
    pruned_accuracy = _caffe_test_accuracy(proto, tmp_path / "pruned.caffemodel")
    independent = 100 * (_caffe_test_accuracy(proto, weights) - pruned_accuracy)
    assert verified["measured_drop"] == pytest.approx(independent, abs=1e-3)
    assert verified["measured"] == pytest.approx(pruned_accuracy, abs=1e-5)  # the chosen plan's, not the last measured
    if "--target-sparsity" in budget:
        # 90% overall costs far more than a point on this net: the loop had to back off.
        assert verified["measurements"] > 1 and "backed off" in planned.output


def test_verify_refuses_the_scans_net_reading_other_examples(lenet, cli, tmp_path):
    """The net file the scan recorded, unedited, but its TEST data rewritten
    (one label): refused unless the net is given on purpose."""
    import shutil

    import h5py

    from conftest import assert_one_line_error

    _, proto, weights = lenet
    text = proto.read_text()
    test_list = Path(text.split('source: "')[2].split('"', 1)[0])
    shutil.copy(Path(test_list.read_text().strip()), tmp_path / "test.h5")
    (tmp_path / "test.txt").write_text(f"{tmp_path / 'test.h5'}\n")
    (tmp_path / "net.prototxt").write_text(text.replace(str(test_list), str(tmp_path / "test.txt")))
    assert cli("sensitivity", "-p", "net.prototxt", "-w", weights, "-n", VERIFY_ITERS, "-l", "ip*",
               "--sparsities", "0.5,0.9", "-o", "scan").exit_code == 0
    verify = ("plan", "--sensitivity", "scan", "--max-drop", "2", "--verify", "-o", "p.yaml")
    assert cli(*verify).exit_code == 0
    with h5py.File(tmp_path / "test.h5", "r+") as data:
        data["label"][0] = (data["label"][0] + 1) % 10
    assert_one_line_error(cli(*verify, "--force"), "net.prototxt: its TEST data gives other examples than the "
                          "scan measured (rewritten data, or a TEST layer that shuffles); give it as --model")
    result = cli(*verify, "--force", "--model", "net.prototxt")
    assert result.exit_code == 0, result.output
    scanned = json.loads((tmp_path / "scan" / "sensitivity.json").read_text())
    (tmp_path / "other.json").write_text(json.dumps(scanned | {"data_sha256": 7}))
    assert_one_line_error(cli("plan", "--sensitivity", "other.json", "--max-drop", "2", "-o", "q.yaml"),
                          "other.json: a sensitivity file with missing or malformed fields")


def test_verify_reads_the_scans_examples_from_a_shuffling_test_layer(lenet, tmp_path):
    """HDF5Data's shuffle draws from C's rand(), the same in every fresh
    process: the scan's batches (3 of 5: not an epoch) were those of the
    process's first Net, but plan --verify built a Net to check the digest
    first, and its evaluator's read other batches, unchecked: a baseline
    that was neither the scan's nor `caffe test`'s."""
    import subprocess
    import sys

    _, proto, weights = lenet
    (tmp_path / "net.prototxt").write_text(proto.read_text().replace("batch_size: 100", "batch_size: 100 shuffle: true"))
    program = [sys.executable, "-m", "caffedsd"]  # fresh processes, as users run
    for args in (["sensitivity", "-p", "net.prototxt", "-w", str(weights), "-n", "3", "-l", "ip2",
                  "--sparsities", "0.5", "-o", "scan"],
                 ["plan", "--sensitivity", "scan", "--max-drop", "100", "--verify", "-o", "p.yaml"]):
        run = subprocess.run([*program, *args], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
    scanned = json.loads((tmp_path / "scan" / "sensitivity.json").read_text())
    baseline = load_plan(tmp_path / "p.yaml").verified["baseline"]
    assert baseline == scanned["baseline"]["accuracy"]
    from caffedsd.verify import parse_test_outputs, run_caffe_test

    code, log = run_caffe_test(tmp_path / "net.prototxt", weights, iterations=3)
    assert code == 0, log[-2000:]
    assert baseline == pytest.approx(parse_test_outputs(log)["accuracy"], abs=1e-6)


def test_verify_refuses_bad_inputs(lenet, lenet_scan, cli, tmp_path, other_model):
    from conftest import assert_one_line_error

    assert_one_line_error(cli("plan", "--sensitivity", lenet_scan, "--max-total-drop", "1", "-o", "p.yaml"),
                          "--max-total-drop needs --verify")
    assert_one_line_error(cli("plan", "--sensitivity", lenet_scan, "--max-total-drop", "-1", "--verify",
                              "-o", "p.yaml"), "must be 0 or more")
    _, proto, weights = lenet
    changed = tmp_path / "changed.caffemodel"
    assert cli("prune", "-w", weights, "-s", 0.1, "-o", changed).exit_code == 0
    assert_one_line_error(cli("plan", "--sensitivity", lenet_scan, "--max-total-drop", "1", "--verify",
                              "-w", changed, "-o", "p.yaml"), "not the weights the scan measured")
    assert not (tmp_path / "p.yaml").exists()
    # The net file the scan recorded, edited since (a smaller TEST batch):
    # refused unless given on purpose.
    net = tmp_path / "net.prototxt"
    net.write_text(proto.read_text().replace("batch_size: 100", "batch_size: 50"))
    data = json.loads((lenet_scan / "sensitivity.json").read_text())
    assert data["net_sha256"] == hashlib.sha256(proto.read_bytes()).hexdigest()
    (tmp_path / "moved.json").write_text(json.dumps(data | {"model": str(net)}))
    verify = ("plan", "--sensitivity", "moved.json", "--max-drop", "1", "--verify", "-o", "p.yaml")
    assert_one_line_error(cli(*verify), "net.prototxt: edited since the scan measured with it; give it as --model")
    assert not (tmp_path / "p.yaml").exists()
    result = cli(*verify, "--model", net)
    assert result.exit_code == 0, result.output
    # Weights or net moved since the scan: each named, with the option that gives it.
    (tmp_path / "gone.json").write_text(json.dumps(data | {"weights": str(tmp_path / "gone.caffemodel")}))
    assert_one_line_error(cli("plan", "--sensitivity", "gone.json", "--max-drop", "1", "--verify", "-o", "g.yaml"),
                          "gone.caffemodel: the scan's weights are not there (give --weights)")
    (tmp_path / "gone.json").write_text(json.dumps(data | {"model": str(tmp_path / "gone.prototxt")}))
    assert_one_line_error(cli("plan", "--sensitivity", "gone.json", "--max-drop", "1", "--verify", "-o", "g.yaml"),
                          "gone.prototxt: the scan's net is not there (give --model)")
    # A net with a Python layer was built (its code run) with no --allow-python-layers.
    python_net = tmp_path / "python.prototxt"
    python_net.write_text(proto.read_text() + 'layer { name: "pyl" type: "Python" bottom: "ip2" top: "pyout" '
                          'python_param { module: "nowhere" layer: "X" } }\n')
    assert_one_line_error(cli("plan", "--sensitivity", lenet_scan, "--max-drop", "1", "--verify", "--model",
                              python_net, "-o", "py.yaml"),
                          "Python layer(s) pyl would run arbitrary code; pass --allow-python-layers")
    assert not (tmp_path / "py.yaml").exists()


def test_a_max_drop_no_layer_meets_is_refused(tmp_path):
    """It wrote a plan that pruned nothing, with exit status 0."""
    from caffedsd.errors import PlanningError
    from caffedsd.plan_from_scan import make_plan

    scan = {"format": "caffedsd-sensitivity", "metrics": ["accuracy"], "baseline": {"accuracy": 0.8},
            "kinds": {"accuracy": "accuracy"}, "primary": "accuracy", "criterion": "keepmax",
            "fingerprint": "f", "prunable_params": 200, "seed": 0, "data_sha256": None,
            "layers": [{"layer": name, "params": 100,
                        "points": [{"sparsity": s, "metrics": {"accuracy": 0.7}} for s in (0.3, 0.6)]}
                       for name in ("a", "b")]}
    (tmp_path / "sensitivity.json").write_text(json.dumps(scan))
    with pytest.raises(PlanningError, match="no layer's measured drop is within --max-drop 5 at any scanned "
                                            "sparsity"):
        make_plan(tmp_path / "sensitivity.json", tmp_path / "plan.yaml", max_drop=5)
    assert not (tmp_path / "plan.yaml").exists()
    assert make_plan(tmp_path / "sensitivity.json", tmp_path / "plan.yaml", max_drop=10).overall == 0.6


def test_a_plan_is_of_the_scanned_weights_and_never_written_over_the_nets_data(lenet, lenet_scan, cli, tmp_path):
    """--weights of the architecture but not the scan's were taken (the
    predictions then were of other weights), and -o the TEST list the net
    reads replaced it with YAML, even without --force. A verified record
    went into the masks of any model pruned with the plan."""
    from conftest import assert_one_line_error

    _, proto, weights = lenet
    assert cli("prune", "-w", weights, "-s", 0.1, "-o", "other.caffemodel").exit_code == 0
    assert_one_line_error(cli("plan", "--sensitivity", lenet_scan, "--max-drop", 1, "-w", "other.caffemodel",
                              "-o", "p.yaml"), "other.caffemodel: not the weights the scan measured")
    data = json.loads((lenet_scan / "sensitivity.json").read_text())
    test_list = Path(re.search(r'source: "([^"]*/test\.txt)"', proto.read_text()).group(1))
    before = test_list.read_bytes()
    assert_one_line_error(cli("plan", "--sensitivity", lenet_scan, "--max-drop", 1, "-o", test_list, "--force"),
                          f"which {data['model']} reads as data")
    assert test_list.read_bytes() == before
    train_list = test_list.with_name("train.txt")  # the scan reads only TEST data, but it is the net's
    assert_one_line_error(cli("plan", "--sensitivity", lenet_scan, "--max-drop", 1, "-o", train_list, "--force"),
                          f"which {data['model']} reads as data")
    result = cli("plan", "--sensitivity", lenet_scan, "--max-drop", 1, "--verify", "-o", "v.yaml")
    assert result.exit_code == 0, result.output
    for model, kept in ((weights, True), ("other.caffemodel", False)):
        assert cli("prune", "-w", model, "--plan", "v.yaml", "-o", "p.caffemodel", "--force").exit_code == 0
        assert ("verified" in load_masks_meta(tmp_path / "p.masks.h5")["plan"]) == kept


def load_masks_meta(path):
    from caffedsd.maskfile import load_masks

    return load_masks(path).meta


AUX_NET = """name: "aux"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 8 dim: 6 } shape { dim: 8 }
                           data_filler { type: "constant" value: 0.5 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 5 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "aux" type: "InnerProduct" bottom: "ip1" top: "aux" inner_product_param { num_output: 3 } }
layer { name: "aux/loss" type: "SoftmaxWithLoss" bottom: "aux" bottom: "label" top: "aux/loss" loss_weight: 0.3 }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" }
"""


def test_a_layer_that_does_not_feed_the_metric_is_named(caffe, tmp_path, cli):
    """An auxiliary classifier costs the main accuracy nothing however
    pruned: the plan takes it as far as the scan went, and its weights
    count in the overall sparsity (GoogLeNet's are 6.4M of 13.4M)."""
    from conftest import save_net

    from caffedsd.netcheck import built_state, output_feeds
    from caffedsd.caffe_proto import read_net_prototxt

    proto, weights = save_net(caffe, tmp_path, AUX_NET)
    net = read_net_prototxt(proto)
    assert output_feeds(net, built_state(net, "TEST"), {"ip1", "aux", "ip2"}) == {
        "ip1": ["aux/loss", "loss", "accuracy"], "aux": ["aux/loss"], "ip2": ["loss", "accuracy"]}
    scan = cli("sensitivity", "-p", proto, "-w", weights, "-n", 1, "--sparsities", "0.5,0.9", "-o", "scan")
    assert scan.exit_code == 0, scan.output
    data = json.loads((tmp_path / "scan" / "sensitivity.json").read_text())
    assert {layer["layer"]: layer["feeds"] for layer in data["layers"]}["aux"] == ["aux/loss"]
    result = cli("plan", "--sensitivity", "scan", "--metric", "accuracy", "--max-drop", 0, "-o", "p.yaml")
    assert result.exit_code == 0, result.output
    aux = next(c for c in load_plan(tmp_path / "p.yaml").rules if c.pattern == "aux")
    assert aux.value == 0.9
    fed = [c for c in load_plan(tmp_path / "p.yaml").rules if c.pattern != "aux"]
    sparsity = sum(round(c.value * {"ip1": 30, "ip2": 15}[c.pattern]) for c in fed) / 45  # keepmax's counts
    assert "note: aux (15 weights) do not feed accuracy: pruning them costs it nothing (with --max-drop a plan " \
        "takes them as far as the scan went)" in result.output
    assert f"the scanned weights that feed accuracy are {sparsity:.4f} sparse" in result.output
    assert "# aux do not feed accuracy" in (tmp_path / "p.yaml").read_text()
    result = cli("plan", "--sensitivity", "scan", "--metric", "loss", "--max-drop", 100, "-o", "q.yaml")
    assert result.exit_code == 0 and "note: aux (15 weights) do not feed loss" in result.output, result.output
    result = cli("plan", "--sensitivity", "scan", "--metric", "aux/loss", "--max-drop", 100, "-o", "r.yaml")
    assert result.exit_code == 0 and "note: ip2 (15 weights) do not feed aux/loss" in result.output, result.output
