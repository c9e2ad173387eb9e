"""What a dsd checkpoint's sha256 records cost at VGG16 scale: a checkpoint
(`dsd._Checkpoints.save`: Caffe's snapshot pair, the CSVs, each file synced
and hashed, the record) against Caffe's snapshot alone, and the check a
resumed stage makes (`_Checkpoints.latest`: the record, the pair hashed
again, the CSVs parsed) against Caffe's restore of the same snapshot.

The net is VGG16's classifier (fc6 25088x4096, fc7 4096x4096, fc8
4096x1000: 123.6M of VGG16's 138.4M weights) on DummyData, trained by SGD
with momentum, so its snapshot pair is about 1 GB as VGG16's is; the
convolutions, which only make a step longer, are left out:

    GLOG_minloglevel=2 .venv/bin/python tools/bench_checkpoint.py --repeats 5
    GLOG_minloglevel=2 .venv/bin/python tools/bench_checkpoint.py --scale 0.1   # a quick look

Caffe does not sync its snapshots, so "snapshot" leaves the kernel to
write them out later, while "save" waits for them: the difference is the
sync and the hashing together, which "sync" (the fsync of a pair Caffe
just wrote) and "hash" (the sha256 of the pair, read from the page
cache) measure apart.
"""
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from caffedsd.caffemodel import file_sha256  # noqa: E402
from caffedsd.dsd import _Checkpoints  # noqa: E402
from caffedsd.solver_spec import read_solver  # noqa: E402
from caffedsd.training import open_solver  # noqa: E402

NET = """name: "vgg16_classifier"
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param {{ shape {{ dim: 1 dim: {inputs} }} shape {{ dim: 1 }}
    data_filler {{ type: "gaussian" std: 1 }} data_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "fc6" type: "InnerProduct" bottom: "data" top: "fc6"
  inner_product_param {{ num_output: {hidden} weight_filler {{ type: "gaussian" std: 0.005 }} }} }}
layer {{ name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }}
layer {{ name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param {{ num_output: {hidden} weight_filler {{ type: "gaussian" std: 0.005 }} }} }}
layer {{ name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }}
layer {{ name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  inner_product_param {{ num_output: 1000 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }}
"""
SOLVER = """net: "{net}"
base_lr: 0.0001
momentum: 0.9
lr_policy: "fixed"
max_iter: 100000
display: 0
solver_mode: CPU
"""


def write_files(work, scale):
    """The solver and net, with VGG16's fc6 input and width times ``scale``."""
    net = work / "net.prototxt"
    net.write_text(NET.format(inputs=max(1, round(25088 * scale)), hidden=max(1, round(4096 * scale))))
    solver = work / "solver.prototxt"
    solver.write_text(SOLVER.format(net=net))
    return solver


def measure(solver_path, work, repeats):
    folder = work / "checkpoint"
    checkpoints = _Checkpoints(folder, every=1)
    folder.mkdir()
    solver, _ = open_solver(read_solver(solver_path), work, snapshot_prefix=checkpoints.prefix)
    solver.step(1)
    curve = [{"iter": 0, "loss": 1.0, "lr": 1e-4}]

    def one(kind, _):
        solver.step(1)  # a new iteration: snapshot names of their own
        if kind == "restore":  # the path, read before the clock starts: the record's check is "check"'s
            state = str(_Checkpoints(folder).latest()["solverstate"])
        # Caffe's snapshot writes into the folder the prefix names, and aborts where it is
        # not; save makes it, and removes it once the pair is renamed into the checkpoint.
        checkpoints.prefix.parent.mkdir(exist_ok=True)
        if kind == "sync":  # the pair Caffe left to the kernel, written out
            solver.snapshot()
        start = time.perf_counter()
        if kind == "snapshot":
            solver.snapshot()
        elif kind == "sync":
            for suffix in (".solverstate", ".caffemodel"):
                with open(f"{checkpoints.prefix}_iter_{solver.iter}{suffix}", "rb") as handle:
                    os.fsync(handle.fileno())
        elif kind == "save":
            checkpoints.save(solver, curve, [])
        elif kind == "check":
            _Checkpoints(folder).latest()
        else:  # restore
            solver.restore(state)
        seconds = time.perf_counter() - start
        if kind in ("snapshot", "sync"):  # only save's set stays, as in a run
            for suffix in (".solverstate", ".caffemodel"):
                Path(f"{checkpoints.prefix}_iter_{solver.iter}{suffix}").unlink()
        return {"s": seconds}

    runs = benchlib.alternate(("snapshot", "save", "sync"), repeats, one)
    runs.update(benchlib.alternate(("restore", "check"), repeats, one))
    record = _Checkpoints(folder).latest()
    state = Path(record["solverstate"])
    sizes = {path.suffix: path.stat().st_size for path in (state, state.with_suffix(".caffemodel"))}
    hashing = []  # the pair hashed from the page cache, no sync: the sha256 alone
    for _ in range(repeats):
        start = time.perf_counter()
        for path in (state, state.with_suffix(".caffemodel")):
            file_sha256(path)
        hashing.append({"s": time.perf_counter() - start})
    runs["hash"] = hashing
    return runs, sizes


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fc6's input and fc6/fc7's width times this")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-checkpoint-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs, sizes = measure(write_files(work, args.scale), work, args.repeats)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    med = {kind: benchlib.median(each, "s") for kind, each in runs.items()}
    mb = sum(sizes.values()) / 1e6
    print(f"Snapshot pair: {sizes['.caffemodel'] / 1e6:.0f} MB caffemodel + {sizes['.solverstate'] / 1e6:.0f} MB "
          f"solverstate")
    labels = {"snapshot": "Caffe's snapshot alone", "save": "dsd checkpoint (synced, hashed)",
              "sync": "fsync of a fresh snapshot pair",
              "restore": "Caffe's restore", "check": "dsd resume check (hashed again)",
              "hash": "sha256 of the pair, from the page cache"}
    print(benchlib.median_table(runs, labels, [("median (s)", "s", "{:.2f}")], each=("each run (s)", "s", "{:.2f}")))
    print(f"\ncheckpoint / snapshot: {med['save'] / med['snapshot']:.2f}; resume check / restore: "
          f"{med['check'] / med['restore']:.2f}; sha256 rate: {mb / med['hash']:.0f} MB/s")
    print("Machine: " + benchlib.machine_line(benchlib.machine()))
    benchlib.write_json(args.json, {"runs": runs, "sizes": sizes, "scale": args.scale})


if __name__ == "__main__":
    main()
