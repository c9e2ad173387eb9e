"""Where does pycaffe stop on a machine? A tiny net and solver, step by
step, in CPU mode or on GPU 0, each step's name printed (flushed) before it
runs, so that a crash names the step. Run by tools/gpu_stage.sh's `probe`
(under cuda-gdb there, for a backtrace).

    python tools/gpu_probe.py cpu|gpu|bare FOLDER

bare: pycaffe's _caffe.so alone, loaded without the caffe package (which
imports scikit-image, SciPy and protobuf's Python), in CPU mode.
"""
import sys
from pathlib import Path

NET = """layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                     data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "y" top: "loss" }
"""


def step(name):
    print(f"probe: {name}", flush=True)


def bare_caffe():
    import importlib.machinery
    import importlib.util

    for entry in sys.path:
        found = sorted(Path(entry or ".").glob("caffe/_caffe*.so"))
        if found:
            loader = importlib.machinery.ExtensionFileLoader("_caffe", str(found[0]))
            module = importlib.util.module_from_spec(importlib.util.spec_from_loader("_caffe", loader))
            loader.exec_module(module)
            module.TEST = 1
            return module
    raise SystemExit("probe: no caffe/_caffe*.so on sys.path")


def main(mode, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(
        f'net: "{folder / "net.prototxt"}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 10\n'
        f'momentum: 0.9\nrandom_seed: 5\nsnapshot_prefix: "{folder / "snap"}"\n'
        f'solver_mode: {mode.upper()}\n')
    step("import caffe" + (" (_caffe.so alone)" if mode == "bare" else ""))
    caffe = bare_caffe() if mode == "bare" else __import__("caffe")
    step(f"set mode {mode}")
    if mode == "gpu":
        caffe.set_device(0)
        caffe.set_mode_gpu()
    else:  # cpu, bare
        caffe.set_mode_cpu()
    step("Net(TEST)")
    net = caffe.Net(str(folder / "net.prototxt"), caffe.TEST)
    step("Net.forward")
    net._forward(0, len(net.layers) - 1) if mode == "bare" else net.forward()
    if mode == "bare":
        step("done")
        return
    step("get_solver")
    solver = caffe.get_solver(str(folder / "solver.prototxt"))
    step("solver.step(2)")
    solver.step(2)
    if mode == "gpu":
        step("Blob._gpu_data_ptr")
        print(f"probe: pointer {solver.net.params['ip'][0]._gpu_data_ptr:#x}", flush=True)
    step("done")


if __name__ == "__main__":
    main(*sys.argv[1:])
