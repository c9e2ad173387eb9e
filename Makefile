# The two commands: `make demo` and `make test`. Both set everything up first.
# `make setup CUDA=1` builds Caffe with CUDA (see README); `make demo GPU=1`
# builds it too and runs the demo on GPU 0 (GPU_ID=n for another).
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup test demo bench check-cuda clean

setup:
	@bash tools/setup.sh $(if $(filter 1,$(CUDA) $(GPU)),--cuda)

test: setup
	$(PY) -m pytest -q tests

demo: setup
	@$(if $(filter 1,$(GPU)),CAFFEDSD_DEMO_GPU=$(or $(GPU_ID),0)) bash tools/demo.sh

bench: setup
	$(PY) tools/bench_prune.py

# Compiles GPU Caffe for CUDA 13 (PyPI's NVIDIA wheels), 12.4 and 11.8
# (Debian's non-free packages) into a throwaway folder: no GPU needed, many
# minutes (see tools/check_cuda.sh); CUDA_MAJORS="13" picks some.
check-cuda:
	@bash tools/check_cuda.sh $(CUDA_MAJORS)

clean:
	rm -rf work data/fashion-mnist .pytest_cache
