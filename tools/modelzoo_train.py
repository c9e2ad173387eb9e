#!/usr/bin/env python3
"""Run the training commands on the model-zoo nets that ship a solver and a
train_val prototxt, with those files unchanged, and write
docs/MODELZOO_TRAINING.md.

The model zoo's data (ImageNet LMDBs) cannot be had here, so for each net a
working folder gets small LMDBs of random images at the paths its
train_val's Data layers name (relative, as the authors ran them: "cd
SqueezeNet_v1.0; caffe train"), each image 29 pixels larger than the crop,
as ImageNet's 256x256 images are for a 227 crop. Caffe's data reader starts
over at the end of a database, so a few dozen images serve any batch size.
The accuracies are of random data: they say nothing; what is checked is that
every command runs on the files as released.

In that folder, each as its own process (timed, peak RSS, as in
tools/modelzoo_report.py):
  dsd        the solver as released (iter_size, poly lr, snapshot settings),
             one iteration per training stage: dense, prune 50%, sparse,
             dense at lr/10, one TEST batch per stage
  caffe test every stage's model with the released train_val, in the stock
             binary: it must exit 0, ignore no layer with weights, and print
             the accuracy dsd measured for the stage
  train-sparse  one iteration from the pruned stage and one TEST batch,
             the solver's own snapshot settings kept
  sensitivity   conv1 and conv10 at 0.5 and 0.9, one TEST batch
  plan --verify --max-total-drop 1 on that scan

    .venv/bin/python tools/modelzoo_train.py ../shared/modelzoo
"""
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import benchlib  # noqa: E402
from modelzoo_report import _cpu, caffe_check, last_line, run, table_cells  # noqa: E402

COMMANDS = ("dsd", "caffe test", "train-sparse", "sensitivity", "plan --verify")
RECIPE = """solver: solver.prototxt
checkpoint_every: 1000
test_iterations: 1
stages:
  - dense:  {iterations: 1}
  - prune:  {sparsity: 0.5}
  - sparse: {iterations: 1}
  - dense:  {iterations: 1, lr_scale: 0.1}
"""


def zoo_nets(zoo):
    return sorted(p for p in zoo.iterdir()
                  if (p / "solver.prototxt").is_file() and (p / "train_val.prototxt").is_file())


def write_lmdbs(net_path, work, seed=0):
    """Random-image LMDBs at every Data layer's source; returns their paths."""
    import lmdb
    import numpy as np

    from caffedsd.caffe_env import import_caffe
    from caffedsd.caffe_proto import read_net_prototxt

    import_caffe()  # puts pycaffe's caffe_pb2 (Datum) on the path
    from caffe.proto.caffe_pb2 import Datum

    rng = np.random.default_rng(seed)
    made = []
    for layer in read_net_prototxt(net_path).layer:
        if layer.type != "Data":
            continue
        crop = layer.transform_param.crop_size or 224
        size, count = crop + 29, max(2 * layer.data_param.batch_size, 16)
        path = work / layer.data_param.source
        path.parent.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(path), map_size=count * 3 * size * size * 2 + (1 << 24))
        with env.begin(write=True) as txn:
            for i in range(count):
                image = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
                datum = Datum(channels=3, height=size, width=size, data=image.tobytes(), label=i % 10)
                txn.put(f"{i:08d}".encode(), datum.SerializeToString())
        env.close()
        made.append(path)
    return made


def report_net(folder, work, timeout):
    from caffedsd.verify import parse_test_outputs

    work.mkdir(parents=True)
    for name in ("solver.prototxt", "train_val.prototxt"):
        shutil.copy(folder / name, work / name)
    (work / "recipe.yaml").write_text(RECIPE)
    write_lmdbs(work / "train_val.prototxt", work)
    caffedsd = str(benchlib.caffedsd_command("modelzoo_train"))
    row = {"net": folder.name, "cells": {}, "notes": []}
    cwd = os.getcwd()
    os.chdir(work)  # the released files name their paths from their own folder
    try:
        steps = [
            ("dsd", [caffedsd, "dsd", "--recipe", "recipe.yaml", "-o", "run"]),
            ("train-sparse", [caffedsd, "train-sparse", "--solver", "solver.prototxt", "-w",
                              "run/02-prune/model.caffemodel", "--iterations", 1, "--test-iterations", 1,
                              "-o", "sparse.caffemodel"]),
            ("sensitivity", [caffedsd, "sensitivity", "-p", "train_val.prototxt", "-w", "run/01-dense/model.caffemodel",
                             "--layers", "conv1", "--layers", "conv10", "--sparsities", "0.5,0.9", "-n", 1,
                             "-o", "sens"]),
            ("plan --verify", [caffedsd, "plan", "--sensitivity", "sens", "--max-total-drop", 1, "--verify",
                               "-o", "plan.yaml"]),
        ]
        for command, cmd in steps:
            log = work / f"{command.split()[0]}.log"
            code, seconds, mb = run(cmd, log, timeout)
            problem = None if code == 0 else f"exit status {code}: {last_line(log)}"
            row["cells"][command] = (problem is None, seconds, mb)
            if problem:
                row["notes"].append(f"{command}: {problem}")
            print(f"  {folder.name:18s} {command:13s} {'ok' if problem is None else 'FAILED':6s} {seconds:7.1f} s "
                  f"{mb:7.0f} MB {problem or ''}", flush=True)
            if command == "dsd" and code == 0:
                start = time.perf_counter()
                stages = json.loads(Path("run/report.json").read_text())["stages"]
                problems = []
                for stage in stages:
                    problem, log_text = caffe_check(Path("train_val.prototxt"), Path("run") / stage["model"])
                    printed = parse_test_outputs(log_text).get("accuracy") if problem is None else None
                    if problem is None and (printed is None or abs(printed - stage["test"]["accuracy"]) > 1e-4):
                        problem = f"caffe test printed accuracy {printed}, dsd measured {stage['test']['accuracy']}"
                    if problem:
                        problems.append(f"{stage['folder']}: {problem}")
                row["cells"]["caffe test"] = (not problems, time.perf_counter() - start, None)
                row["notes"] += [f"caffe test {p}" for p in problems]
                row["stages"] = [(s["folder"], s["sparsity"], s["test"].get("accuracy")) for s in stages]
    finally:
        os.chdir(cwd)
    return row


def markdown(rows, zoo, seconds):
    out = ["# caffedsd's training commands on the model zoo's own solvers", "",
           "The model-zoo nets that ship a solver and a train_val prototxt, trained by caffedsd with those "
           "files unchanged: the solver's iter_size, lr policy and snapshot settings, the train_val's Data "
           "layers, crops and mean values. The data are random images in LMDBs at the paths the train_val "
           "names (the ImageNet LMDBs cannot be had here), so the accuracies mean nothing; what is shown is "
           "that each command runs, and that every model dsd writes loads in the stock `caffe` binary with "
           "the released train_val and prints the accuracy caffedsd measured. See tools/modelzoo_train.py "
           "for the exact commands.", "",
           f"Command: `.venv/bin/python tools/modelzoo_train.py {zoo}` ({seconds / 60:.0f} minutes in all). "
           f"Run {datetime.date.today().isoformat()} on {_cpu()} with {os.cpu_count()} cores; times are "
           "indicative, not benchmarks.", "",
           "| net | " + " | ".join(COMMANDS) + " |", "|---|" + "---|" * len(COMMANDS)]
    for row in rows:
        out.append(f"| {row['net']} | " + " | ".join(table_cells(row, COMMANDS)) + " |")
    out += ["", "`caffe test` is the time for every stage's model, one TEST batch each, in the stock binary.", ""]
    for row in rows:
        if "stages" in row:
            out.append(f"- {row['net']}: " + "; ".join(f"{f} sparsity {s:.1%}, accuracy {a:.4f}"
                                                      for f, s, a in row["stages"]))
    if any("stages" in row for row in rows):
        out += ["", "The last dense stage keeps some weights at exactly 0.0, and that is not the masks at work: "
                "each stage runs one iteration on random images, and a pruned weight comes back from 0.0 only "
                "where its gradient is not 0. Units whose ReLU never fires on these images get none: their "
                "biases do not move either."]
    notes = [(r["net"], note) for r in rows for note in r["notes"]]
    out += ["", "## Failures", ""]
    out += [f"- {net}: {note}" for net, note in notes] if notes else ["None."]
    return "\n".join(out) + "\n"


def main():
    parser = benchlib.script_parser(__doc__)
    parser.add_argument("zoo", nargs="?", type=Path, default=ROOT / ".." / "shared" / "modelzoo",
                        help="folder of model-zoo subfolders (default: ../shared/modelzoo)")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "modelzoo_train",
                        help="folder for the LMDBs, weights and outputs (default: work/modelzoo_train)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "MODELZOO_TRAINING.md",
                        help="the Markdown file to write (default: docs/MODELZOO_TRAINING.md)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    args = parser.parse_args()
    zoo = args.zoo.resolve()
    start = time.perf_counter()
    rows = []
    for folder in zoo_nets(zoo):
        work = args.work.resolve() / folder.name
        if work.exists():
            shutil.rmtree(work)
        rows.append(report_net(folder, work, args.timeout))
        shown = os.path.relpath(args.zoo, ROOT) if args.zoo.is_absolute() else args.zoo
        args.doc.write_text(markdown(rows, shown, time.perf_counter() - start))
    print(f"wrote {args.doc}")
    return 0 if not any(r["notes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
