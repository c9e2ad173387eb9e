#!/usr/bin/env bash
# Reproduces the sensitivity section of docs/RESULTS.md: LeNet trained dense
# for 1000 iterations, a sensitivity scan on the full test set, a
# --max-drop 0.5 plan, the same plan verified to 1 point, and a DSD run (prune by the plan, sparse, re-dense).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"
OUT=work/results_sensitivity
rm -rf "$OUT"
mkdir -p "$OUT"
[ -f data/fashion-mnist/test.txt ] || caffedsd data fashion-mnist -o data/fashion-mnist

cat > "$OUT/dense.yaml" <<YAML
solver: solvers/lenet_solver.prototxt
stages:
  - dense: {iterations: 1000}
YAML
caffedsd dsd --recipe "$OUT/dense.yaml" -o "$OUT/dense"
DENSE="$OUT/dense/01-dense/model.caffemodel"

caffedsd sensitivity -p prototxt/lenet_train_test.prototxt -w "$DENSE" -n 100 -j 2 -o "$OUT/sens"
caffedsd plan --sensitivity "$OUT/sens" --max-drop 0.5 --weights "$DENSE" -o "$OUT/plan.yaml"
# The same start, measured on the whole pruned net and backed off to 1 point.
caffedsd plan --sensitivity "$OUT/sens" --max-drop 0.5 --max-total-drop 1 --verify -o "$OUT/plan_verified.yaml"

cat > "$OUT/dsd.yaml" <<YAML
solver: solvers/lenet_solver.prototxt
weights: $DENSE
stages:
  - prune:  {plan: $OUT/plan.yaml}
  - sparse: {iterations: 500}
  - dense:  {iterations: 500, lr_scale: 0.1}
YAML
caffedsd dsd --recipe "$OUT/dsd.yaml" -o "$OUT/dsd"
