#!/usr/bin/env python3
"""Run every caffedsd command on a folder of model-zoo deploy files and write
docs/MODELZOO.md: one table of net x command with ok/failed, wall time and
peak memory.

For each subfolder of ZOO holding a deploy prototxt (deploy.prototxt, or the
one .prototxt there), the script
  1. makes seeded random weights with pycaffe (a caffemodel shipped beside the
     deploy file is used instead). Convolution and InnerProduct weights are
     made low-rank plus a little noise, as trained weights are, so that
     `decompose` has something to find; BatchNorm variances are positive.
     Deploy files in the legacy V1 layout get their weights in the V1 layout
     too (`layers`, enum types, num/channels/height/width dims), as the
     2014-era model-zoo caffemodels are;
  2. runs, each as its own process, timed, with its peak RSS (os.wait4):
       stats -w W
       prune -w W -s 0.5 -o pruned.caffemodel
       verify -w pruned.caffemodel -p DEPLOY        (runs stock `caffe test`)
       compress -w pruned.caffemodel -o pruned.dcz
       decompress pruned.dcz -p DEPLOY -o back.caffemodel
       rank -w W
       decompose -p DEPLOY -w W --energy 0.9 -o low
  3. checks each caffemodel written (pruned, back, low) in the stock `caffe`
     binary: `caffe test` on it with its net must exit 0 and ignore no layer
     with weights. A command is ok only when it exits 0 and its output passes.

The commands that train (train-*, dsd, sensitivity) need a solver and data,
which deploy files do not have; tools/modelzoo_train.py runs them on the nets
that ship a solver and a train_val.

    .venv/bin/python tools/modelzoo_report.py ../shared/modelzoo
    .venv/bin/python tools/modelzoo_report.py ../shared/modelzoo --nets lenet_mnist,squeezenet_v1.1 --doc /tmp/z.md
"""
import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import benchlib  # noqa: E402

COMMANDS = ("stats", "prune", "verify", "compress", "decompress", "rank", "decompose")


def find_deploy(folder):
    named = folder / "deploy.prototxt"
    if named.is_file():
        return named
    found = sorted(p for p in folder.glob("*.prototxt") if "solver" not in p.name and "train" not in p.name)
    return found[0] if len(found) == 1 else None


def is_v1(deploy):
    from caffedsd.caffe_proto import NetParameter, parse_prototxt

    return len(parse_prototxt(deploy, NetParameter).layers) > 0


# -- weights --------------------------------------------------------------------

def make_weights(deploy, out, seed=0):
    """Seeded random weights for ``deploy`` with pycaffe (run in a child)."""
    import numpy as np

    from caffedsd.caffe_env import import_caffe

    from caffedsd.caffe_proto import read_net_prototxt

    caffe = import_caffe()
    net = caffe.Net(str(deploy), caffe.TEST)
    groups_of = {layer.name: max(1, layer.convolution_param.group) for layer in read_net_prototxt(deploy).layer
                 if layer.type == "Convolution"}
    rng = np.random.default_rng(seed)
    types = {name: layer.type for name, layer in zip(net._layer_names, net.layers)}
    for name, blobs in net.params.items():
        kind = types[name]
        for i, blob in enumerate(blobs):
            shape = blob.data.shape
            if i == 0 and kind in ("Convolution", "InnerProduct") and len(shape) >= 2:
                rows, cols = shape[0], int(np.prod(shape[1:]))
                groups = groups_of.get(name, 1)
                step = rows // groups
                rank = max(1, min(step, cols) // 8)
                scale = np.sqrt(2.0 / cols)
                parts = []
                for _ in range(groups):
                    a = rng.standard_normal((step, rank), dtype=np.float32)
                    b = rng.standard_normal((rank, cols), dtype=np.float32)
                    part = (a @ b) / np.float32(np.sqrt(rank))
                    part += np.float32(0.05) * rng.standard_normal((step, cols), dtype=np.float32)
                    parts.append(part * np.float32(scale))
                blob.data[...] = np.concatenate(parts).reshape(shape)
            else:
                blob.data[...] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        if kind == "BatchNorm":
            blobs[1].data[...] = np.abs(blobs[1].data) + 0.5
            blobs[2].data[...] = 1.0
    net.save(str(out))


def to_v1(v2_path, v1_path):
    """Rewrite a V2 caffemodel in the legacy V1 layout, blob data streamed."""
    import numpy as np

    from caffedsd import wire
    from caffedsd.caffe_proto import NetParameter, V1LayerParameter, V1_TYPE_NAMES
    from caffedsd.caffemodel import read_caffemodel

    enum = {v2: getattr(V1LayerParameter, v1) for v1, v2 in V1_TYPE_NAMES.items()}
    model = read_caffemodel(v2_path)
    with open(v1_path, "wb") as out:
        out.write(NetParameter(name=model.name).SerializeToString())
        for layer in model.layers:
            if layer.type not in enum:
                continue  # Input layers: V1 nets declared their inputs with input/input_dim
            meta = V1LayerParameter(name=layer.name, type=enum[layer.type], bottom=layer.param.bottom,
                                    top=layer.param.top)
            for field in ("convolution_param", "inner_product_param", "pooling_param", "lrn_param",
                          "dropout_param", "concat_param", "eltwise_param"):
                if layer.param.HasField(field):
                    getattr(meta, field).CopyFrom(getattr(layer.param, field))
            payload = [meta.SerializeToString()]
            for blob in layer.blobs:
                dims = (1,) * (4 - blob.data.ndim) + tuple(blob.shape)
                head = b"".join(wire.encode_varint(n << 3) + wire.encode_varint(d) for n, d in zip((1, 2, 3, 4), dims))
                data = np.ascontiguousarray(blob.data, dtype="<f4")
                body = head + wire.len_header(5, data.nbytes)
                payload.append((wire.len_header(6, len(body) + data.nbytes), body, data))
            size = len(payload[0]) + sum(len(h) + len(b) + d.nbytes for h, b, d in payload[1:])
            out.write(wire.len_header(2, size))
            out.write(payload[0])
            for h, b, d in payload[1:]:
                out.write(h)
                out.write(b)
                out.write(memoryview(d).cast("B"))


# -- running ----------------------------------------------------------------------

# A small launcher between this script and each command: a child forked from
# a large process starts with that process's resident pages counted in its
# peak RSS, so the command is forked from a bare Python instead.
_LAUNCH = ("import os, sys\n"
           "pid = os.fork()\n"
           "if pid == 0:\n"
           "    os.execvp(sys.argv[2], sys.argv[2:])\n"
           "_, status, usage = os.wait4(pid, 0)\n"
           "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')\n")


def run(cmd, log, timeout):
    """(exit status, seconds, peak RSS in MB) of ``cmd`` run as a child."""
    result = Path(str(log) + ".rusage")
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCH, str(result), *(str(c) for c in cmd)],
                                stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, GLOG_minloglevel="2"),
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return "timeout", time.perf_counter() - start, 0.0
    seconds = time.perf_counter() - start
    code, maxrss = result.read_text().split()
    return int(code), seconds, int(maxrss) / 1024


def caffe_check(net, weights):
    """(None when stock Caffe loads and runs the pair, else the reason; its log)."""
    from caffedsd.caffemodel import read_caffemodel
    from caffedsd.caffe_env import failure_reason
    from caffedsd.caffe_proto import read_net_prototxt
    from caffedsd.verify import ignored_weights, run_caffe_test

    code, log = run_caffe_test(net, weights, timeout=1200)
    if code != 0:
        return f"caffe test: {failure_reason(log)}", log
    ignored = ignored_weights(read_caffemodel(weights), read_net_prototxt(net), log)
    return (f"caffe test ignored the weights of {', '.join(ignored)}" if ignored else None), log


def last_line(path):
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def report_net(name, folder, work, timeout):
    deploy = find_deploy(folder)
    work.mkdir(parents=True, exist_ok=True)
    caffedsd = [benchlib.caffedsd_command("modelzoo_report")]
    row = {"net": name, "deploy": deploy.name, "cells": {}, "notes": []}
    shipped = sorted(folder.glob("*.caffemodel"))
    weights = work / "model.caffemodel"
    if shipped:
        shutil.copy(shipped[0], weights)
        row["weights"] = f"the shipped {shipped[0].name}"
    else:
        v1 = is_v1(deploy)
        target = work / "v2.caffemodel" if v1 else weights
        code, seconds, mb = run([sys.executable, __file__, "--make-weights", deploy, target], work / "weights.log",
                                timeout)
        if code != 0:
            row["notes"].append(f"weights: {last_line(work / 'weights.log')}")
            return row
        if v1:
            to_v1(target, weights)
            target.unlink()
        row["weights"] = f"seeded random{' (V1 layout)' if v1 else ''}, made in {seconds:.0f} s"
    from caffedsd.caffemodel import read_caffemodel

    model = read_caffemodel(weights)
    row["layout"] = model.layout
    row["params"] = sum(b.data.size for layer in model.layers for b in layer.blobs)
    row["mb"] = weights.stat().st_size / 2 ** 20
    del model
    steps = {
        "stats": ([*caffedsd, "stats", "-w", weights], None),
        "prune": ([*caffedsd, "prune", "-w", weights, "-s", 0.5, "-o", work / "pruned.caffemodel"],
                  (deploy, work / "pruned.caffemodel")),
        "verify": ([*caffedsd, "verify", "-w", work / "pruned.caffemodel", "-p", deploy], None),
        "compress": ([*caffedsd, "compress", "-w", work / "pruned.caffemodel", "-o", work / "pruned.dcz"], None),
        "decompress": ([*caffedsd, "decompress", work / "pruned.dcz", "-p", deploy, "-o", work / "back.caffemodel"],
                       (deploy, work / "back.caffemodel")),
        "rank": ([*caffedsd, "rank", "-w", weights], None),
        "decompose": ([*caffedsd, "decompose", "-p", deploy, "-w", weights, "--energy", 0.9, "-o", work / "low"],
                      (work / "low" / deploy.name, work / "low" / "model.caffemodel")),
    }
    for command, (cmd, check) in steps.items():
        log = work / f"{command}.log"
        code, seconds, mb = run(cmd, log, timeout)
        problem = None
        if code != 0:
            problem = f"exit status {code}: {last_line(log)}"
        elif check is not None:
            problem, _ = caffe_check(*check)
        row["cells"][command] = (problem is None, seconds, mb)
        if problem:
            row["notes"].append(f"{command}: {problem}")
        if command == "decompose" and code == 0:
            left = sum(1 for line in log.read_text().splitlines() if line.startswith("left as is:"))
            row["decomposed"] = _count_decomposed(work / "low" / "report.md"), left
        print(f"  {name:20s} {command:11s} {'ok' if problem is None else 'FAILED':6s} {seconds:7.1f} s "
              f"{mb:7.0f} MB {problem or ''}", flush=True)
    return row


def _count_decomposed(report_md):
    lines = Path(report_md).read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| layer")
            and not line.startswith("| total")]
    return len(rows)


def table_cells(row, commands):
    """A row's cells: ok or FAILED, seconds and (where measured) peak MB."""
    cells = []
    for command in commands:
        if command not in row["cells"]:
            cells.append("not run")
            continue
        ok, seconds, mb = row["cells"][command]
        memory = "" if mb is None else f", {mb:.0f} MB"
        cells.append(f"{'ok' if ok else '**FAILED**'} {seconds:.1f} s{memory}")
    return cells


def markdown(rows, zoo, seconds, nets=None):
    out = ["# caffedsd on model-zoo nets", "",
           "Every command that works on a deploy file and weights, run on each net of the model-zoo folder, and "
           "each caffemodel written (by prune, decompress, decompose) checked in the stock `caffe` binary "
           "(`caffe test`: it must exit 0 and ignore no layer with weights). A cell reads ok or FAILED, the "
           "command's wall time and its peak resident memory (of its own process and the processes it waited "
           "for, from os.wait4).", "",
           f"Command: `.venv/bin/python tools/modelzoo_report.py {zoo}{f' --nets {nets}' if nets else ''}` "
           f"({seconds / 60:.0f} minutes in all). Run {datetime.date.today().isoformat()} on "
           f"{_cpu()} with {os.cpu_count()} cores, **shared with other jobs while it ran**: times are "
           "indicative, not benchmarks.", "",
           "| net | layout | params | weights | " + " | ".join(COMMANDS) + " |",
           "|---|---|---:|---|" + "---|" * len(COMMANDS)]
    for row in rows:
        params = f"{row['params']:,}" if "params" in row else ""
        out.append(f"| {row['net']} | {row.get('layout', '')} | {params} | {row.get('weights', '')} | "
                   + " | ".join(table_cells(row, COMMANDS)) + " |")
    out += ["", "Weights: seeded random values made with pycaffe (`caffe.Net(deploy)`, then `net.save`); "
            "Convolution and InnerProduct weights are low-rank (rank = a eighth of the largest) plus 5% "
            "noise, so `decompose --energy 0.9` finds layers worth splitting. Nets whose deploy file is in "
            "the V1 layout get V1-layout weights, as their released caffemodels are. The training commands "
            "(train-*, dsd, sensitivity) need a solver and data: docs/MODELZOO_TRAINING.md runs them on the "
            "nets that ship a solver (tools/modelzoo_train.py).", ""]
    decomposed = [f"{r['net']}: {r['decomposed'][0]} layers split, {r['decomposed'][1]} left as they were"
                  for r in rows if "decomposed" in r]
    if decomposed:
        out += ["`decompose --energy 0.9` (Convolution layers; a layer is split only where that is smaller):", ""]
        out += [f"- {line}" for line in decomposed] + [""]
    notes = [(r["net"], note) for r in rows for note in r["notes"]]
    out += ["## Failures", ""]
    out += [f"- {net}: {note}" for net, note in notes] if notes else ["None."]
    return "\n".join(out) + "\n"


def _cpu():
    return benchlib.cpu_name() or "this machine"


def main():
    parser = benchlib.script_parser(__doc__)
    parser.add_argument("zoo", nargs="?", type=Path, default=ROOT / ".." / "shared" / "modelzoo",
                        help="folder of model-zoo subfolders (default: ../shared/modelzoo)")
    parser.add_argument("--nets", default=None, help="comma-separated subfolder names (default: all)")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "modelzoo",
                        help="folder for weights and outputs (default: work/modelzoo)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "MODELZOO.md",
                        help="the Markdown file to write (default: docs/MODELZOO.md)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    parser.add_argument("--make-weights", nargs=2, metavar=("DEPLOY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_weights:
        make_weights(*args.make_weights)
        return 0
    folders = sorted(p for p in args.zoo.iterdir() if p.is_dir() and find_deploy(p))
    if args.nets:
        wanted = args.nets.split(",")
        folders = [p for p in folders if p.name in wanted]
    start = time.perf_counter()
    rows = []
    for folder in folders:
        work = args.work / folder.name
        if work.exists():
            shutil.rmtree(work)
        rows.append(report_net(folder.name, folder, work, args.timeout))
        shutil.rmtree(work, ignore_errors=True)  # VGG16's outputs alone are gigabytes
        # Written after every net, so an interrupted run still leaves its table.
        zoo = os.path.relpath(args.zoo, ROOT) if args.zoo.is_absolute() else args.zoo
        args.doc.write_text(markdown(rows, zoo, time.perf_counter() - start, args.nets))
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
