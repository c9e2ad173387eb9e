#!/usr/bin/env bash
# Reproduces the Deep Compression section of docs/RESULTS.md: LeNet-5 on
# Fashion-MNIST pruned and sparse-retrained by the demo's DSD recipe, stored
# as .dcz (conv 8-bit, fc 5-bit codes), before and after trained quantization;
# then the real trained LeNet of the model zoo (../shared/modelzoo/lenet_mnist,
# when present) pruned and stored at the paper's LeNet-5 settings.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"
OUT=work/results_compression
NET=prototxt/lenet_train_test.prototxt
SOLVER=solvers/lenet_solver.prototxt
BITS=conv=8,fc=5
rm -rf "$OUT"
mkdir -p "$OUT"
[ -f data/fashion-mnist/test.txt ] || caffedsd data fashion-mnist -o data/fashion-mnist

accuracy() {  # WEIGHTS -> accuracy over the 10,000 test images
    # caffe prints its results at INFO level, whatever GLOG_minloglevel the caller set.
    GLOG_minloglevel=0 caffe test --model="$NET" --weights="$1" --iterations=100 2>&1 \
        | grep -E 'caffe.cpp:[0-9]+\] accuracy =' | sed 's/.*= //'
}

caffedsd dsd --recipe recipes/lenet_dsd.yaml -o "$OUT/dsd"
DENSE="$OUT/dsd/01-dense/model.caffemodel"
SPARSE="$OUT/dsd/03-sparse/model.caffemodel"

caffedsd compress -w "$SPARSE" --bits $BITS -o "$OUT/sparse.dcz"
caffedsd decompress "$OUT/sparse.dcz" -p "$NET" -o "$OUT/sparse_quantized.caffemodel"
caffedsd train-quantized --solver "$SOLVER" -w "$SPARSE" --bits $BITS -n 500 -o "$OUT/trained.caffemodel"
caffedsd compress -w "$OUT/trained.caffemodel" --bits $BITS -o "$OUT/trained.dcz"
caffedsd decompress "$OUT/trained.dcz" -p "$NET" -o "$OUT/trained_quantized.caffemodel"

echo "== sizes: dense caffemodel $(stat -c %s "$DENSE") bytes;" \
     "sparse.dcz $(stat -c %s "$OUT/sparse.dcz") bytes; trained.dcz $(stat -c %s "$OUT/trained.dcz") bytes"
echo "== accuracy: dense $(accuracy "$DENSE"); sparse $(accuracy "$SPARSE");" \
     "quantized $(accuracy "$OUT/sparse_quantized.caffemodel");" \
     "trained quantized $(accuracy "$OUT/trained_quantized.caffemodel")"

ZOO=../shared/modelzoo/lenet_mnist
if [ -f "$ZOO/lenet_iter_10000.caffemodel" ]; then
    caffedsd prune -w "$ZOO/lenet_iter_10000.caffemodel" -r conv1=0.34 -r conv2=0.88 -r ip1=0.92 -r ip2=0.81 \
        -o "$OUT/zoo_pruned.caffemodel"
    caffedsd compress -w "$OUT/zoo_pruned.caffemodel" --bits $BITS -o "$OUT/zoo.dcz"
    caffedsd decompress "$OUT/zoo.dcz" -p "$ZOO/lenet.prototxt" -o "$OUT/zoo_quantized.caffemodel"
    echo "== real LeNet: caffemodel $(stat -c %s "$ZOO/lenet_iter_10000.caffemodel") bytes;" \
         "pruned $(stat -c %s "$OUT/zoo_pruned.caffemodel") bytes; zoo.dcz $(stat -c %s "$OUT/zoo.dcz") bytes"
fi
