"""The one glob-rule engine: last match wins, a rule matching nothing is an error."""
import re

import pytest

from caffedsd.errors import InputError, PlanError
from caffedsd.globrules import GlobRules, Rule, number_list

LAYERS = ["conv1", "fire2/squeeze1x1", "fire2/expand3x3", "conv10"]


def test_last_match_wins_and_default():
    rules = GlobRules((("fire*", 0.6), ("fire*/expand3x3", 0.7), ("conv10", 0.0)))
    assert rules.resolve(LAYERS, "layer", default=0.5) == {"conv1": 0.5, "fire2/squeeze1x1": 0.6,
                                                           "fire2/expand3x3": 0.7, "conv10": 0.0}
    assert rules.resolve(LAYERS, "layer") == {"fire2/squeeze1x1": 0.6, "fire2/expand3x3": 0.7, "conv10": 0.0}


def test_select_keeps_the_names_order():
    assert GlobRules((("conv*",), ("fire2/s*",))).select(LAYERS, "layer") == ["conv1", "fire2/squeeze1x1", "conv10"]


def test_a_rule_matching_nothing_is_one_message():
    with pytest.raises(InputError) as caught:
        GlobRules((("fc*", 1.0),), "--force-mult").resolve(LAYERS, "layer with weights")
    assert str(caught.value) == ("--force-mult 'fc*' matches no layer with weights "
                                 "(known: conv1, fire2/squeeze1x1, fire2/expand3x3, conv10)")


def test_parse():
    rules = GlobRules.parse(["conv*=0.5", "a=b=2"], "--rule", error=PlanError)
    assert rules.rules == (Rule("conv*", 0.5), Rule("a=b", 2.0)) and rules.source == "--rule"
    with pytest.raises(PlanError, match="--rule 'conv1': expected LAYER_GLOB=AMOUNT, e.g. 'conv1=0.3'"):
        Rule.parse("conv1", error=PlanError)
    with pytest.raises(InputError, match="--rank 'c=x': 'x' is not a whole number"):
        Rule.parse("c=x", "--rank", "RANK", "conv2=12", int)
    with pytest.raises(InputError, match="expected"):
        Rule.parse("=1")


def test_number_lists_have_no_missing_items():
    assert number_list(" 0.1, 0.5 ,0.9", "--sparsities") == (0.1, 0.5, 0.9)
    assert number_list("3,4", "--sweep base_e", int) == (3, 4)
    for text, expect in [("", "empty"), (" ", "empty"), ("0.5,,0.9", "item 2 is empty"), (",0.5", "item 1 is empty"),
                         ("0.5,", "item 2 is empty"), ("0.5;0.9", "not a comma-separated list of numbers")]:
        with pytest.raises(InputError, match=re.escape(f"--energy {text!r}: {expect}")):
            number_list(text, "--energy")
