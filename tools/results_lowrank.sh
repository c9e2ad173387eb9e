#!/usr/bin/env bash
# Reproduces the low-rank section of docs/RESULTS.md: LeNet on Fashion-MNIST
# trained on from the same dense start without and with force regularization,
# both decomposed at the same energy, then briefly fine-tuned.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"
OUT=work/results_lowrank
NET=prototxt/lenet_train_test.prototxt
SOLVER=solvers/lenet_solver.prototxt
ENERGY=0.95
rm -rf "$OUT"
mkdir -p "$OUT"
[ -f data/fashion-mnist/test.txt ] || caffedsd data fashion-mnist -o data/fashion-mnist

accuracy() {  # WEIGHTS [NET] -> accuracy over the 10,000 test images
    # caffe prints its results at INFO level, whatever GLOG_minloglevel the caller set.
    GLOG_minloglevel=0 caffe test --model="${2:-$NET}" --weights="$1" --iterations=100 2>&1 \
        | grep -E 'caffe.cpp:[0-9]+\] accuracy =' | sed 's/.*= //'
}

cat > "$OUT/start.yaml" <<YAML
solver: $SOLVER
stages:
  - dense: {iterations: 1000}
YAML
caffedsd dsd --recipe "$OUT/start.yaml" -o "$OUT/start"
START="$OUT/start/01-dense/model.caffemodel"

caffedsd train-dense --solver "$SOLVER" -w "$START" --lr-scale 1 -n 1000 -o "$OUT/plain.caffemodel"
# Two strengths: ip1 (500 filters) feels a force 10x stronger than the conv
# layers at the same coefficient, hence its smaller multiplier.
for decay in 0.0005 0.001; do
    caffedsd train-lowrank --solver "$SOLVER" -w "$START" --force-decay $decay --force-mult "ip1=$(python3 -c "print($decay * 100)")" \
        --force-mult 'ip2=0' -n 1000 -o "$OUT/force$decay.caffemodel"
done

for run in plain force0.0005 force0.001; do
    echo "== $run: ranks"
    caffedsd rank -w "$OUT/$run.caffemodel" --energy 0.9,$ENERGY,0.99
    caffedsd decompose -p "$NET" -w "$OUT/$run.caffemodel" --energy $ENERGY --fc -o "$OUT/$run-decomposed"
    sed "s#^net: .*#net: \"$OUT/$run-decomposed/lenet_train_test.prototxt\"#" "$SOLVER" > "$OUT/$run-decomposed/solver.prototxt"
    caffedsd train-dense --solver "$OUT/$run-decomposed/solver.prototxt" -w "$OUT/$run-decomposed/model.caffemodel" \
        --lr-scale 0.1 -n 300 -o "$OUT/$run-decomposed/finetuned.caffemodel"
    echo "== $run: test accuracy: trained $(accuracy "$OUT/$run.caffemodel")," \
         "decomposed $(accuracy "$OUT/$run-decomposed/model.caffemodel" "$OUT/$run-decomposed/lenet_train_test.prototxt")," \
         "fine-tuned $(accuracy "$OUT/$run-decomposed/finetuned.caffemodel" "$OUT/$run-decomposed/lenet_train_test.prototxt")"
done
