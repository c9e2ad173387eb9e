"""YAML as plans and recipes read it: one-line errors naming the file."""
import pytest

from caffedsd.errors import PlanError, RecipeError
from caffedsd.plan import load_plan
from caffedsd.recipe import load_recipe
from caffedsd.yamlio import MAX_DEPTH, parse_yaml

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
