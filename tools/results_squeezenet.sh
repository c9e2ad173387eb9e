#!/usr/bin/env bash
# Reproduces the SqueezeNet section of docs/RESULTS.md: the small-input
# SqueezeNet v1.1 (prototxt/squeezenet_fashion) on Fashion-MNIST, trained
# dense, scanned for sensitivity, pruned by a --max-drop plan and DSD-trained;
# and a dense baseline trained as long, with the same lr schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"
OUT=work/results_squeezenet
NET=prototxt/squeezenet_fashion/train_val.prototxt
SOLVER=solvers/squeezenet_fashion_solver.prototxt
rm -rf "$OUT"
mkdir -p "$OUT"
[ -f data/fashion-mnist/test.txt ] || caffedsd data fashion-mnist -o data/fashion-mnist

cat > "$OUT/dense.yaml" <<YAML
solver: $SOLVER
checkpoint_every: 1000
stages:
  - dense: {iterations: 3000}
YAML
caffedsd dsd --recipe "$OUT/dense.yaml" -o "$OUT/dense"
DENSE="$OUT/dense/01-dense/model.caffemodel"

caffedsd sensitivity -p "$NET" -w "$DENSE" -n 80 --sparsities 0.3,0.5,0.7,0.9 -j 2 -o "$OUT/sens"
caffedsd plan --sensitivity "$OUT/sens" --max-drop 1.0 --weights "$DENSE" -o "$OUT/plan.yaml"

cat > "$OUT/dsd.yaml" <<YAML
solver: $SOLVER
weights: $DENSE
checkpoint_every: 1000
stages:
  - prune:  {plan: $OUT/plan.yaml}
  - sparse: {iterations: 1000}
  - dense:  {iterations: 1000, lr_scale: 0.1}
YAML
caffedsd dsd --recipe "$OUT/dsd.yaml" -o "$OUT/dsd"

cat > "$OUT/baseline.yaml" <<YAML
solver: $SOLVER
weights: $DENSE
checkpoint_every: 1000
stages:
  - dense: {iterations: 1000}
  - dense: {iterations: 1000, lr_scale: 0.1}
YAML
caffedsd dsd --recipe "$OUT/baseline.yaml" -o "$OUT/baseline"
