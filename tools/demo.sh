#!/usr/bin/env bash
# `make demo`: train LeNet briefly on Fashion-MNIST with stock Caffe, prune it
# with caffedsd, and score both with stock `caffe test`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

NET=prototxt/lenet_train_test.prototxt
OUT=work/demo
mkdir -p "$OUT" work

accuracy() {  # accuracy WEIGHTS -> "accuracy = ..." over the 10,000 test images
    caffe test --model="$NET" --weights="$1" --iterations=100 2>&1 \
        | grep -E 'caffe.cpp:[0-9]+\] (accuracy|loss) =' | sed 's/.*\] //' | tr '\n' ' '
}

if [ ! -f data/fashion-mnist/test.txt ]; then
    echo "== Fashion-MNIST -> HDF5"
    caffedsd data fashion-mnist -o data/fashion-mnist
fi

echo "== training LeNet for 500 iterations with stock caffe (log: $OUT/train.log)"
start=$(date +%s)
caffe train --solver=solvers/lenet_solver.prototxt > "$OUT/train.log" 2>&1
echo "   took $(( $(date +%s) - start )) s"
DENSE=work/lenet_iter_500.caffemodel

echo "== pruning: 50% of every layer, 90% of ip1 (keepmax)"
caffedsd prune -w "$DENSE" -p "$NET" -s 0.5 -r 'ip1=0.9' -o "$OUT/lenet_pruned.caffemodel"

echo "== stats of the pruned model"
caffedsd stats -w "$OUT/lenet_pruned.caffemodel"

echo "== verify: masked weights are 0.0, stock caffe loads every layer"
caffedsd verify -w "$OUT/lenet_pruned.caffemodel" -p "$NET"

echo "== stock caffe test, 10,000 test images"
echo "   dense  $DENSE: $(accuracy "$DENSE")"
echo "   pruned $OUT/lenet_pruned.caffemodel: $(accuracy "$OUT/lenet_pruned.caffemodel")"
