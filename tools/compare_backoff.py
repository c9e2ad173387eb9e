#!/usr/bin/env python3
"""Measure every plan on two back-off orders of `plan --verify`, from one sensitivity scan.

`plan --verify --max-total-drop X` bisects a path of plans that steps one
layer at a time down to its next lower measured sparsity. Which layer is
stepped decides what the path holds. This script measures every plan (the
whole pruned net on the scan's TEST batches, as `plan --verify` does) on
two paths from the same start, each layer at its highest sparsity costing
at most X alone (`by_max_drop(X)`):

  ratio     caffedsd's order (plan_from_scan.back_off_path): the layer with
            the largest predicted drop per unit of its sparsity;
  marginal  the layer whose step recovers the most predicted drop per
            weight it gives back.

and prints, per order, the highest overall sparsity whose measured drop is
within X. Evidence for docs/RESULTS.md, not a test.

    GLOG_minloglevel=2 .venv/bin/python tools/compare_backoff.py SCAN_DIR --budget 1 --json out.json
"""
import sys
import json
import time

import benchlib
from caffedsd.errors import CaffeDsdError
from caffedsd.plan_from_scan import (WholeNet, back_off_path, by_max_drop, curves, overall_sparsity, predicted_drop,
                                     step_down)
from caffedsd.report import scan_metric
from caffedsd.sensitivity import load_sensitivity


def recovered_per_weight(choice, points):
    """The marginal order: predicted drop a step recovers per weight it gives back."""
    lower = step_down(choice, points)
    return (choice.drop - lower.drop) / ((choice.sparsity - lower.sparsity) * choice.params)


def main():
    parser = benchlib.script_parser(__doc__)
    parser.add_argument("scan", help="a sensitivity folder (or its sensitivity.json)")
    parser.add_argument("--budget", type=float, default=1.0, help="X: the measured drop allowed (default 1)")
    parser.add_argument("--json", help="write every plan measured, per order, to this file")
    args = parser.parse_args()
    data = load_sensitivity(args.scan, None)
    metric = scan_metric(data)
    curve_data = curves(data, metric, args.scan)
    if not args.budget >= 0:
        parser.error(f"--budget {args.budget:g}: must be 0 or more")
    start = by_max_drop(curve_data, args.budget)
    net = WholeNet(data, metric)
    measured = {}  # a plan on both paths is measured once
    results = {}
    for order, path in (("ratio", back_off_path(start, curve_data)), ("marginal", back_off_path(start, curve_data, recovered_per_weight))):
        began, rows = time.perf_counter(), []
        for plan in path:
            key = tuple((c.layer, c.sparsity) for c in plan)
            if key not in measured:
                measured[key] = net.drop(plan)
            rows.append({"overall": overall_sparsity(plan, data["prunable_params"]),
                         "predicted_drop": predicted_drop(plan), "measured_drop": measured[key],
                         "layers": {c.layer: c.sparsity for c in plan}})
        best = max((r for r in rows if r["measured_drop"] <= args.budget), key=lambda r: r["overall"])
        print(f"{order}: {len(rows)} plans ({time.perf_counter() - began:.0f} s); first plan measured "
              f"{rows[0]['measured_drop']:.2f} {metric} points at overall {rows[0]['overall']:.4f}; most pruning "
              f"within {args.budget:g}: overall {best['overall']:.4f}, measured {best['measured_drop']:.2f}", flush=True)
        results[order] = rows
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"scan": args.scan, "budget": args.budget, "metric": metric, "orders": results}, out, indent=1)


if __name__ == "__main__":
    try:
        main()
    except CaffeDsdError as exc:  # bad input: one line and status 2, as the CLI says it
        print(f"compare_backoff: {exc}", file=sys.stderr)
        sys.exit(2)
