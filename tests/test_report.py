"""report.py's text: JSON that JSON readers take, tables and lines that stay
one line per row whatever a layer or output is named, and the CSVs a run
folder keeps, read back strictly."""
import json
import math
import re

import pytest

from caffedsd import report


def test_json_holds_no_nan():
    """json.dumps wrote NaN and Infinity bare, which JSON readers refuse."""
    text = report.to_json({"test": {"loss": float("nan"), "acc": 0.5}, "rows": [float("inf"), -float("inf"), 1]})
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}")) == \
        {"test": {"loss": None, "acc": 0.5}, "rows": [None, None, 1]}


def test_a_test_value_json_lost_is_not_finite():
    assert [report.test_value(v) for v in (0.25, None, math.nan, math.inf)] == \
        ["0.2500", "not finite", "not finite", "not finite"]
    header, rows = report.dsd_rows([{"stage": 1, "kind": "prune", "iterations": 0, "lr": None, "sparsity": 0.5,
                                     "test": {"loss": None, "acc": 0.5}}])
    assert rows == [["1 prune", 0, "", "50.0%", "not finite", "0.5000"]]


def test_names_with_a_newline_stay_in_their_row():
    table = report.format_table(["layer", "top\nk"], [["ip,1|\"é\"\n2", 3]], "lr")
    assert table.splitlines() == ['layer        top\\nk',  # widths 11 and 6: the escapes' own
                                  '-----------  ------',
                                  'ip,1|"é"\\n2       3']
    assert report.test_line({"loss\nx": 1.0}) == "test: loss\\nx = 1.0000"


def test_the_sensitivity_baseline_line_holds_its_metric_on_one_line():
    data = {"metric": "acc\n| x", "metrics": ["acc\n| x"], "baseline": {"acc\n| x": 0.67}, "iterations": 1,
            "criterion": "keepmax", "sparsities": [0.5],
            "layers": [{"layer": "ip2", "params": 10, "points": [{"sparsity": 0.5, "metrics": {"acc\n| x": None}}]}]}
    lines = report.sensitivity_summary(data).splitlines()
    assert lines[2].startswith("Baseline acc\\n| x = 0.6700;")
    assert lines[-1] == "| ip2 | 10 | not finite |"


@pytest.mark.parametrize("text, expect", [
    ("", "its first line is not iter,loss,lr"),
    ("iter,loss\n0,1\n", "its first line is not iter,loss,lr"),
    ("iter,loss,lr\n0,1\n", "line 2 has 2 cell(s), not 3"),
    ("iter,loss,lr\n0,1,0.1,9\n", "line 2 has 4 cell(s), not 3"),
    ("iter,loss,lr\n0,1,0.1\n\n", "line 3 has 1 cell(s), not 3"),
    ("iter,loss,lr\nzero,1,0.1\n", "invalid literal for int"),
])
def test_a_curve_caffedsd_did_not_write_is_refused(text, expect):
    with pytest.raises(ValueError, match=re.escape(expect)):
        report.parse_curve_csv(text)


def test_curves_and_test_passes_read_back_as_written():
    curve = [{"iter": 0, "loss": 2.5, "lr": 0.01}, {"iter": 1, "loss": math.inf, "lr": 0.01}]
    assert report.parse_curve_csv(report.curve_csv(curve)) == curve
    passes = [{"iter": 0, "test": {"a,b": 1.0, "x\ny": 2.0}}, {"iter": 5, "test": {"a,b": 0.5}}]
    assert report.parse_tests_csv(report.tests_csv(passes)) == passes
    assert report.parse_tests_csv("iter\n") == []
    for bad, expect in (("", "does not start with iter"), ("loss\n1\n", "does not start with iter"),
                        ("iter,loss\n0,1,2\n", "line 2 has 3 cell"), ("iter,loss\n0\n", "line 2 has 1 cell"),
                        ('iter,loss\n0,"' + "x" * 140000 + "\n", "field larger than field limit")):  # csv.Error
        with pytest.raises(ValueError, match=expect):
            report.parse_tests_csv(bad)
