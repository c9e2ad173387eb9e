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
                                    dict(), dict(sparsity=0.5, criterion="biggest"), dict(sparsity=True)])
def test_validated_when_built(kwargs):
    with pytest.raises(PlanError):
        SparsityPlan(**kwargs)


def test_std_amount_is_a_multiplier():
    assert SparsityPlan(criterion="std", sparsity=1.5).sparsity == 1.5


def test_dict_and_yaml_round_trip():
    plan = SparsityPlan(criterion="random", sparsity=0.4, rules=(Rule("conv*", 0.2), Rule("conv10", 0.0)))
    assert SparsityPlan.from_dict(plan.to_dict()) == plan
    assert SparsityPlan.from_yaml(plan.to_yaml()) == plan


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
