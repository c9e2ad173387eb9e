import re

import pytest

from caffedsd.errors import InputError
from caffedsd.plan import SparsityPlan
from caffedsd.recipe import DenseStage, PruneStage, Recipe, RecipeError, SparseStage, load_recipe
from caffedsd.yamlio import parse_yaml

from conftest import assert_one_line_error

GOOD = {
    "solver": "solver.prototxt",
    "stages": [
        {"dense": {"iterations": 100}},
        {"prune": {"sparsity": 0.5, "layers": {"fc*": 0.9}}},
        {"sparse": {"iterations": 50}},
        {"dense": {"iterations": 50, "lr_scale": 0.1}},
        {"prune": {"sparsity": 0.5}},
        {"sparse": {"iterations": 50, "lr_scale": 0.1}},
        {"dense": {"iterations": 50, "lr_scale": 0.01}},
    ],
}


def test_parse_and_round_trip():
    recipe = Recipe.from_dict(GOOD)
    assert [s.kind for s in recipe.stages] == ["dense", "prune", "sparse", "dense", "prune", "sparse", "dense"]
    assert recipe.stages[1] == PruneStage(SparsityPlan(sparsity=0.5, rules=recipe.stages[1].plan.rules))
    assert recipe.stages[3] == DenseStage(50, 0.1) and recipe.stages[5] == SparseStage(50, 0.1)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.fingerprint() == Recipe.from_dict(recipe.to_dict()).fingerprint()


def test_test_interval_round_trip():
    recipe = Recipe.from_dict(dict(GOOD, test_interval=0, test_iterations=7))
    assert (recipe.test_interval, recipe.test_iterations) == (0, 7)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict(GOOD).test_interval is None  # the solver's
    # A recipe that does not set it keeps the fingerprint it had before the key existed.
    assert "test_interval" not in Recipe.from_dict(GOOD).to_dict()
    assert recipe.fingerprint() != Recipe.from_dict(dict(GOOD, test_iterations=7)).fingerprint()


def test_fingerprint_changes_with_content():
    other = dict(GOOD, stages=GOOD["stages"][:3])
    assert Recipe.from_dict(GOOD).fingerprint() != Recipe.from_dict(other).fingerprint()


def test_the_order_of_a_plans_rules_is_part_of_the_recipe():
    """The last rule that matches wins: ip2 at 0.1, or at 0.9."""
    def recipe(layers):
        return Recipe.from_dict(dict(GOOD, stages=[{"dense": {"iterations": 5}}, {"prune": {"layers": layers}}]))

    first, second = recipe({"ip*": 0.9, "ip2": 0.1}), recipe({"ip2": 0.1, "ip*": 0.9})
    assert first.fingerprint() != second.fingerprint() and first.stages[1] != second.stages[1]
    assert first.fingerprint() == recipe({"ip*": 0.9, "ip2": 0.1}).fingerprint()


@pytest.mark.parametrize("settings,known", [
    ({"plan": "p.yaml", "require_verifed": True}, "(known: plan, require_verified)"),
    ({"sparsity": 0.5, "plann": "p.yaml"}, "(known: criterion, layers, plan, require_verified, seed, sparsity, "
                                           "verified)"),
])
def test_a_prune_stages_unknown_key_lists_every_known_one(settings, known):
    with pytest.raises(RecipeError, match=re.escape(known)):
        Recipe.from_dict(dict(GOOD, stages=[{"dense": {"iterations": 5}}, {"prune": settings}]))


@pytest.mark.parametrize("change,message", [
    ({"stagse": []}, "unknown key"),
    ({"stages": [{"dense": {"iterations": -5}}]}, "iterations -5 must be"),
    ({"stages": [{"dense": {"iterations": 2.5}}]}, "iterations 2.5 must be"),
    # Caffe's iteration counter is a C int: past it, it wraps to negative iterations.
    ({"stages": [{"dense": {"iterations": 2 ** 31}}]}, "iterations 2147483648 must be at most 2147483647"),
    ({"stages": [{"dense": {"iterations": 5, "lr": 0.1}}]}, "unknown key"),
    ({"stages": [{"dense": {"iterations": 5}}, {"prune": {"sparsity": 1.0}}]}, "must be in [0, 1)"),
    ({"stages": [{"dense": {"iterations": 5}}, {"sparse": {"iterations": 5}}]}, "no prune stage before it"),
    ({"stages": [{"prune": {"sparsity": 0.5}}]}, "no weights are given"),
    ({"stages": [{"train": {"iterations": 5}}]}, "unknown stage 'train'"),
    ({"stages": []}, "has no stages"),
    ({"stages": [{"dense": {"iterations": 5, "lr_scale": 0}}]}, "lr_scale 0 must be"),
    ({"checkpoint_every": 0}, "checkpoint_every 0"),
    ({"test_iterations": 0}, "test_iterations 0 must be a whole number >= 1"),  # as the CLI's --test-iterations
    ({"test_interval": -1}, "test_interval: iterations -1"),
    ({"test_interval": "often"}, "test_interval: iterations 'often'"),
    ({"seed": -1}, "seed -1 must be a whole number >= 0"),  # numpy's seeding refuses it
])
def test_invalid_recipes(change, message):
    # RecipeError, or PlanError for a prune stage's plan: both InputErrors naming the recipe.
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Recipe.from_dict(dict(GOOD, **change))


def test_stages_built_directly_are_checked_as_read_ones_are():
    assert DenseStage(5, 1) == DenseStage(5, 1.0) and SparseStage(2).lr_scale == 1.0
    with pytest.raises(RecipeError, match="^sparse stage: iterations -1 must be a whole number >= 0$"):
        SparseStage(-1)
    with pytest.raises(RecipeError, match="^dense stage: lr_scale 0 must be a number > 0$"):
        DenseStage(5, 0)
    with pytest.raises(RecipeError, match="^prune stage: plan 0.5 must be a SparsityPlan$"):
        PruneStage(0.5)
    with pytest.raises(RecipeError, match="^recipe: stage 2 \\{'sparsity': 0.5\\} must be one of DenseStage, "):
        Recipe("solver.prototxt", (DenseStage(5), {"sparsity": 0.5}))


def test_sparse_after_dense_needs_a_new_prune():
    stages = GOOD["stages"][:4] + [{"sparse": {"iterations": 5}}]
    with pytest.raises(RecipeError, match="stage 5 \\(sparse\\) has no prune stage"):
        Recipe.from_dict(dict(GOOD, stages=stages))


def test_load_recipe_file_and_plan_reference(tmp_path):
    (tmp_path / "plan.yaml").write_text("sparsity: 0.3\n")
    (tmp_path / "r.yaml").write_text(f"solver: s.prototxt\nweights: w.caffemodel\nstages:\n"
                                     f"  - prune: {{plan: {tmp_path / 'plan.yaml'}}}\n  - sparse: {{iterations: 3}}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.stages[0].plan.sparsity == 0.3
    (tmp_path / "bad.yaml").write_text("solver: [\n")
    with pytest.raises(RecipeError, match="bad.yaml:.*not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")


def test_a_recipe_may_ask_for_a_verified_plan(tmp_path):
    (tmp_path / "plain.yaml").write_text("sparsity: 0.3\n")
    record = "metric: accuracy, measured_drop: 0.4"
    (tmp_path / "unnamed.yaml").write_text(f"sparsity: 0.3\nverified: {{{record}}}\n")
    digest = SparsityPlan(sparsity=0.3).digest()
    (tmp_path / "verified.yaml").write_text(f"sparsity: 0.3\nverified: {{{record}, plan_sha256: {digest}, "
                                            "weights_sha256: abc}\n")

    def recipe(plan):
        return {"solver": "s.prototxt", "weights": "w.caffemodel",
                "stages": [{"prune": {"plan": str(tmp_path / plan), "require_verified": True}},
                           {"sparse": {"iterations": 3}}]}

    with pytest.raises(RecipeError, match="not verified.*plan --verify"):
        Recipe.from_dict(recipe("plain.yaml"))
    # One that does not say what it measured: an earlier caffedsd's, or by hand.
    with pytest.raises(RecipeError, match="does not name the plan and the weights it measured"):
        Recipe.from_dict(recipe("unnamed.yaml"))
    # Only on the stage that prunes the weights given: later ones prune a model the run makes.
    with pytest.raises(RecipeError, match="stage 2 \\(prune\\) has require_verified, but prunes the model stage 1 "
                                          "makes"):
        Recipe.from_dict(dict(recipe("verified.yaml"), stages=[{"dense": {"iterations": 3}}]
                              + recipe("verified.yaml")["stages"]))
    parsed = Recipe.from_dict(recipe("verified.yaml"))
    assert parsed.stages[0].require_verified and parsed.stages[0].plan.verified["measured_drop"] == 0.4
    # The requirement and the record survive the round trip (plans are kept by value).
    assert Recipe.from_dict(parsed.to_dict()) == parsed
    with pytest.raises(RecipeError, match="require_verified 'yes'"):
        Recipe.from_dict(dict(recipe("verified.yaml"), stages=[
            {"prune": {"plan": str(tmp_path / "verified.yaml"), "require_verified": "yes"}}]))


def test_a_key_given_twice_is_refused(tmp_path):
    # yaml.safe_load keeps the last of them, silently: here 10 iterations, not 5.
    path = tmp_path / "r.yaml"
    for text, line, key in [("solver: s.prototxt\nsolver: t.prototxt\nstages:\n  - dense: {iterations: 5}\n", 2,
                             "'solver' given twice (first at line 1)"),
                            ("solver: s.prototxt\nstages:\n  - dense: {iterations: 5, iterations: 10}\n", 3,
                             "'iterations' given twice (first at line 3)")]:
        path.write_text(text)
        with pytest.raises(RecipeError, match=f"^{re.escape(str(path))}:{line}:[0-9]+: not valid YAML "
                                              f"{re.escape(f'(key {key})')}$"):
            load_recipe(path)
    # A plan file the recipe names, too; YAML's merge key (<<) still overrides as it should.
    (tmp_path / "plan.yaml").write_text("layers:\n  ip1: 0.9\n  ip1: 0.1\n")
    path.write_text(f"solver: s.prototxt\nweights: w.caffemodel\nstages:\n  - prune: {{plan: {tmp_path / 'plan.yaml'}}}\n")
    with pytest.raises(InputError, match="plan.yaml:3:3: not valid YAML \\(key 'ip1' given twice"):
        load_recipe(path)
    assert parse_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\n", "f", RecipeError)["b"] == {"x": 3, "y": 2}


@pytest.mark.parametrize("value, shown", [("null", "None"), ("123", "123"), ("[a]", "['a']"), ("true", "True"),
                                          ("''", "''"), ("{x: 1}", "{'x': 1}")])
def test_a_plan_that_is_no_path_is_one_line(tmp_path, cli, value, shown):
    # It went to load_plan as it was: a TypeError and a traceback, exit status 1.
    (tmp_path / "r.yaml").write_text(f"solver: s.prototxt\nweights: w.caffemodel\n"
                                     f"stages:\n  - prune: {{plan: {value}}}\n")
    assert_one_line_error(cli("dsd", "--recipe", "r.yaml", "-o", "run"),
                          f"r.yaml: stage 1 (prune): plan {shown} must be the path of a plan file")
    assert not (tmp_path / "run").exists()


def test_a_plan_file_that_fails_names_the_recipe_and_stage(tmp_path, cli):
    # The plan file's own message named neither: with several recipes and
    # prune stages, which one was meant?
    (tmp_path / "r.yaml").write_text("solver: s.prototxt\nweights: w.caffemodel\n"
                                     "stages:\n  - prune: {plan: gone.yaml}\n")
    assert_one_line_error(cli("dsd", "--recipe", "r.yaml", "-o", "run"),
                          "r.yaml: stage 1 (prune): gone.yaml: no such plan file")
    (tmp_path / "gone.yaml").write_text("sparsity: 2\n")
    result = cli("dsd", "--recipe", "r.yaml", "-o", "run")
    assert_one_line_error(result, "r.yaml: stage 1 (prune): gone.yaml: sparsity 2: must be in [0, 1)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [
    ("weights", 0), ("weights", False), ("weights", ""), ("weights", " "), ("weights", 1.5), ("weights", ["w"]),
    ("solver", 0), ("solver", True), ("solver", " "), ("solver", {"a": 1}),
])
def test_a_weights_or_solver_that_is_no_path_is_refused(key, value):
    # weights: 0 and weights: no were dropped, and the run trained from scratch without a word.
    with pytest.raises(RecipeError, match=f"^recipe: {key} {re.escape(repr(value))} must be the path of a "):
        Recipe.from_dict(dict(GOOD, **{key: value}))


def test_weights_null_is_weights_left_out():
    assert Recipe.from_dict(dict(GOOD, weights=None)) == Recipe.from_dict(GOOD)
    with pytest.raises(RecipeError, match="^recipe: needs a solver$"):
        Recipe.from_dict(dict(GOOD, solver=None))


def test_a_seed_beyond_32_bits_is_refused():
    # The C library's rand() is seeded with 32 bits: seed 2**32 trained as seed 0 did.
    assert Recipe.from_dict(dict(GOOD, seed=2 ** 32 - 1)).seed == 2 ** 32 - 1
    for seed in (2 ** 32, 2 ** 64 + 5):
        with pytest.raises(RecipeError, match=f"^recipe: seed {seed} must be at most 4294967295 "):
            Recipe.from_dict(dict(GOOD, seed=seed))


def test_an_lr_scale_past_a_floats_range_is_one_line():
    stages = [{"dense": {"iterations": 5, "lr_scale": 10 ** 400}}]  # an OverflowError traceback
    with pytest.raises(RecipeError, match="stage 1 \\(dense\\): lr_scale 1000.* must be a number > 0"):
        Recipe.from_dict(dict(GOOD, stages=stages))


@pytest.mark.parametrize("scale", [1e-320, 5e-324, 1e-39])
def test_an_lr_scale_that_leaves_no_learning_rate_is_refused(scale):
    # lr_scale 1e-320 times the solver's base_lr is 0 in Caffe's 32-bit float: it trained at lr 0.
    stages = [{"dense": {"iterations": 5, "lr_scale": scale}}]
    with pytest.raises(RecipeError, match=f"stage 1 \\(dense\\): lr_scale {scale!r} must be at least 1.175e-38: "):
        Recipe.from_dict(dict(GOOD, stages=stages))
    assert Recipe.from_dict(dict(GOOD, stages=[{"dense": {"iterations": 5, "lr_scale": 2.0 ** -126}}]))
