#!/usr/bin/env bash
# `make demo`: a short Dense-Sparse-Dense run of LeNet on Fashion-MNIST with
# stock Caffe (recipes/lenet_dsd.yaml), then stock `caffe test` on its models.
# `make demo GPU=1` (CAFFEDSD_DEMO_GPU=ID) runs it all on that GPU with the
# CUDA build that `make setup CUDA=1` made.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"

NET=prototxt/lenet_train_test.prototxt
RUN=work/demo
GPU=${CAFFEDSD_DEMO_GPU:-}
GPU_ARGS=()
CAFFE_GPU=()
if [ -n "$GPU" ]; then
    RUN=work/demo-gpu
    GPU_ARGS=(--gpu "$GPU")
    CAFFE_GPU=(--gpu="$GPU")
    echo "== on GPU $GPU: $(caffedsd info | grep -E '^(caffe_build|cuda|cuda_arch|device_hooks):' | tr '\n' ' ')"
fi

accuracy() {  # accuracy WEIGHTS -> "accuracy = ... loss = ..." over the 10,000 test images
    # caffe prints its results at INFO level, whatever GLOG_minloglevel the caller set.
    GLOG_minloglevel=0 caffe test --model="$NET" --weights="$1" --iterations=100 "${CAFFE_GPU[@]}" 2>&1 \
        | grep -E 'caffe.cpp:[0-9]+\] (accuracy|loss) =' | sed 's/.*\] //; s/ (\*.*//' | tr '\n' ' ' || true
}

if [ ! -f data/fashion-mnist/test.txt ]; then
    echo "== Fashion-MNIST -> HDF5 (data/fashion-mnist)"
    caffedsd data fashion-mnist -o data/fashion-mnist
fi

echo "== DSD on LeNet: dense 1000 it, prune (50%, ip1 90%), sparse 500 it, dense 500 it at lr/10"
rm -rf "$RUN"
start=$(date +%s)
caffedsd dsd --recipe recipes/lenet_dsd.yaml -o "$RUN" "${GPU_ARGS[@]}"
echo "   took $(( $(date +%s) - start )) s; report: $RUN/report.md, plot: $RUN/curves.png"

echo "== the sparse model: masked weights are 0.0, stock caffe loads every layer"
caffedsd verify -w "$RUN/03-sparse/model.caffemodel" -p "$NET" "${GPU_ARGS[@]}"

echo "== stock caffe test on each stage's model (10,000 test images)"
for stage in 01-dense 02-prune 03-sparse 04-dense; do
    result=$(accuracy "$RUN/$stage/model.caffemodel")
    case "$result" in
        *accuracy*) echo "   $stage: $result" ;;
        *) echo "demo: stock caffe test did not run on $RUN/$stage/model.caffemodel" >&2; exit 1 ;;
    esac
done
