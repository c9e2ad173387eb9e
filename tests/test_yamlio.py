"""YAML as plans and recipes read it: one-line errors naming the file."""
import pytest

from caffedsd.errors import PlanError, RecipeError
from caffedsd.plan import load_plan
from caffedsd.recipe import load_recipe
from caffedsd.yamlio import MAX_DEPTH, dump_yaml, parse_yaml

from conftest import assert_one_line_error


@pytest.mark.parametrize("text", [
    "layers: " + "[" * 5000 + "]" * 5000,
    "layers: " + "{a: " * 3000 + "1" + "}" * 3000,
    "".join(" " * i + "- \n" for i in range(0, 6000, 2)),  # block style
    "? " + "[" * 3000 + "]" * 3000 + "\n: 1\n",  # a key
])
def test_deep_nesting_is_one_line(text):
    with pytest.raises(PlanError, match=rf"^p.yaml:\d+:\d+: nested deeper than {MAX_DEPTH} levels$"):
        parse_yaml(text, "p.yaml", PlanError)


def test_nesting_up_to_the_limit_is_read():
    value = parse_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH, "p.yaml", PlanError)
    for _ in range(MAX_DEPTH - 1):
        (value,) = value
    assert value == []


def test_deep_plans_and_recipes_name_their_file(tmp_path, cli):
    (tmp_path / "plan.yaml").write_text("layers: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "recipe.yaml").write_text("solver: s.prototxt\nstages: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(PlanError, match="plan.yaml:1:"):
        load_plan(tmp_path / "plan.yaml")
    with pytest.raises(RecipeError, match="recipe.yaml:2:"):
        load_recipe(tmp_path / "recipe.yaml")
    assert_one_line_error(cli("dsd", "--recipe", "recipe.yaml", "-o", "run"),
                          f"recipe.yaml:2:{MAX_DEPTH + 8}: nested deeper than {MAX_DEPTH} levels")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, line", [
    ("sparsity: 0.5\nverified: &a {measured_drop: 0, x: *a}\n", 2),
    ("a: &a\n  - 1\n  - [2, *a]\n", 3),
])
def test_an_alias_inside_what_it_names_is_refused(text, line):
    with pytest.raises(PlanError, match=rf"^p.yaml:{line}:\d+: alias \*a lies inside the node &a that it names"):
        parse_yaml(text, "p.yaml", PlanError)


def test_a_recipe_whose_plan_holds_itself(tmp_path, cli):
    (tmp_path / "loop.yaml").write_text("sparsity: 0.5\nverified: &a {measured_drop: 0, x: *a}\n")
    (tmp_path / "recipe.yaml").write_text("solver: s.prototxt\nweights: w.caffemodel\n"
                                          "stages:\n  - prune: {plan: loop.yaml}\n")
    assert_one_line_error(cli("dsd", "--recipe", "recipe.yaml", "-o", "run"), "loop.yaml:2:36: alias *a lies inside")


def test_aliases_that_expand_beyond_reason_are_refused(tmp_path):
    lines = ["sparsity: 0.5", "verified:", "  measured_drop: 0", "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (tmp_path / "plan.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(PlanError, match=r"plan.yaml:8:7: aliases expand this node to 111111 items "
                                        r"\(at most 100000\)$"):
        load_plan(tmp_path / "plan.yaml")


def test_aliases_and_big_files_within_reason_are_read():
    shared = parse_yaml("a: &a {x: 1}\nb: *a\nc: {<<: *a, y: 2}\n", "p.yaml", PlanError)
    assert shared == {"a": {"x": 1}, "b": {"x": 1}, "c": {"x": 1, "y": 2}}
    big = parse_yaml("\n".join(f"l{i}: {i}" for i in range(60_000)), "p.yaml", PlanError)
    assert len(big) == 60_000


def test_yaml_1_2_floats_are_numbers_where_they_are_values(tmp_path):
    """YAML 1.1 (PyYAML) wants a point in a float: 5e-1 was the text '5e-1',
    and `sparsity: 5e-1` was refused as not a number."""
    (tmp_path / "plan.yaml").write_text("sparsity: 5e-1\nlayers: {1e3: 1E-1, conv2: .25e+0}\n")
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.sparsity == 0.5 and [(r.pattern, r.value) for r in plan.rules] == [("1e3", 0.1), ("conv2", 0.25)]
    data = parse_yaml("a: '5e-1'\nb: !!str 1e3\nc: [1.5e3, -2e2]\nd: 1_0e1\n", "p.yaml", PlanError)
    assert data == {"a": "5e-1", "b": "1e3", "c": [1500.0, -200.0], "d": "1_0e1"}
    # A sign before a bare point: YAML 1.1 reads .5 but not +.5 or -.5.
    assert parse_yaml("a: +.5\nb: -.25\nc: .5\nd: '-.5'\n", "p.yaml", PlanError) == {"a": 0.5, "b": -0.25, "c": 0.5,
                                                                                       "d": "-.5"}
    assert parse_yaml(dump_yaml({"a": "+.5"}), "p.yaml", PlanError) == {"a": "+.5"}


def test_keys_are_text_and_leading_zeros_decimal(tmp_path):
    """YAML 1.1 made a layer 010 the rule '8', 1:30 the rule '90', on 'True';
    and iterations 010 eight, 08 text."""
    (tmp_path / "plan.yaml").write_text("sparsity: 0.5\nlayers:\n  010: 0.1\n  1:30: 0.2\n  1_000: 0.3\n  on: 0.4\n")
    plan = load_plan(tmp_path / "plan.yaml")
    assert [r.pattern for r in plan.rules] == ["010", "1:30", "1_000", "on"]
    data = parse_yaml("a: 010\nb: 08\nc: -007\nd: '010'\n<<: {e: 1}\n", "p.yaml", PlanError)
    assert data == {"a": 10, "b": 8, "c": -7, "d": "010", "e": 1}
    assert parse_yaml(dump_yaml({"010": "08"}), "p.yaml", PlanError) == {"010": "08"}


def test_values_are_numbers_only_as_yaml_1_2_writes_them(tmp_path):
    """`iterations: 1:30` trained 90 iterations (YAML 1.1's base 60), 1_0
    was 10, and YAML 1.2's 0o3 was refused."""
    data = parse_yaml("a: 1:30\nb: 1_0\nc: 0o17\nd: 0x1F\ne: 0b101\nf: 1_0.5\ng: .inf\n", "p.yaml", PlanError)
    assert data == {"a": "1:30", "b": "1_0", "c": 15, "d": 31, "e": "0b101", "f": "1_0.5", "g": float("inf")}
    assert parse_yaml(dump_yaml({"a": "0o17", "b": "1:30"}), "p.yaml", PlanError) == {"a": "0o17", "b": "1:30"}
    (tmp_path / "r.yaml").write_text("solver: s.prototxt\nstages:\n  - dense: {iterations: 1:30}\n")
    with pytest.raises(RecipeError, match="1:30"):
        load_recipe(tmp_path / "r.yaml")


def test_what_is_written_reads_back_the_same(tmp_path):
    (tmp_path / "r.yaml").write_text("solver: '1e3'\nweights: \"2e5\"\n"
                                     "stages:\n  - dense: {iterations: 5, lr_scale: 1e-1}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert (recipe.solver, recipe.weights, recipe.stages[0].lr_scale) == ("1e3", "2e5", 0.1)
    text = recipe.to_yaml()
    assert "'1e3'" in text and "'2e5'" in text
    assert parse_yaml(text, "r.yaml", RecipeError) == recipe.to_dict()


def test_a_whole_number_written_as_a_float_says_what_to_write(tmp_path):
    (tmp_path / "r.yaml").write_text("solver: s.prototxt\nstages:\n  - dense: {iterations: 1e3}\n")
    with pytest.raises(RecipeError, match=r"iterations 1000.0 must be a whole number >= 0 \(write 1000, without"):
        load_recipe(tmp_path / "r.yaml")
