#!/usr/bin/env python3
"""Benchmark ``caffedsd compress`` and ``decompress`` against ``prune`` on a VGG16-sized caffemodel.

Builds bench_prune.py's VGG16-shaped caffemodel (13 Convolution + 3
InnerProduct layers, 138,357,544 float32 parameters, ~553 MB, seeded random
weights), prunes it once (untimed) to get the model to compress, then runs,
alternating, each in its own child process:

  prune       caffedsd prune --weights MODEL --sparsity 0.5 -o OUT.caffemodel
  compress    caffedsd compress --weights PRUNED --bits 5 -o OUT.dcz
  decompress  caffedsd decompress OUT.dcz -o OUT.caffemodel

and reports the median wall time and peak RSS (ru_maxrss of that child from
os.wait4) of each against the targets:

  decompress wall time <= 2.0x prune's, peak RSS <= 3.0x the caffemodel's size;
  compress   wall time <= 3.0x prune's, peak RSS <= 3.0x the caffemodel's size.

One untimed warm-up of each runs first, so that timed runs read their input
from the page cache (the cache is not dropped: that needs root).

Run with the venv's python, from the repo root:

    .venv/bin/python tools/bench_compression.py --repeats 3
    .venv/bin/python tools/bench_compression.py --layers fc8,conv1_1 --repeats 1   # quick smoke run
    .venv/bin/python tools/bench_compression.py --unpruned --bits 8   # compress every weight (no pruning)

Exit status is 0 whether targets pass or fail (a benchmark is not a test);
non-zero only when something crashed.
"""
import sys
from pathlib import Path

import benchlib
from bench_prune import add_model_options, mib, remove, run_child, vgg16_workspace

TARGETS = {  # command: (wall time / prune's, peak RSS / caffemodel size)
    "decompress": (2.0, 3.0),
    "compress": (3.0, 3.0),
}
ORDER = ("prune", "compress", "decompress")


class Bench:
    def __init__(self, model, workdir, sparsity, bits, unpruned=False):
        self.model = model
        self.pruned = workdir / "pruned.caffemodel"
        source = model if unpruned else self.pruned  # what compress reads
        self.outputs = {"prune": [workdir / "prune_out.caffemodel", workdir / "prune_out.masks.h5"],
                        "compress": [workdir / "out.dcz"], "decompress": [workdir / "decoded.caffemodel"]}
        self.log = workdir / "child.log"
        caffedsd = benchlib.caffedsd_command("bench_compression")
        self.dcz = workdir / "input.dcz"  # what decompress reads: compress's output, kept
        self.argv = {
            "prune": [str(caffedsd), "prune", "--weights", str(model), "--sparsity", str(sparsity),
                      "-o", str(self.outputs["prune"][0])],
            "compress": [str(caffedsd), "compress", "--weights", str(source), "--bits", str(bits),
                         "-o", str(self.outputs["compress"][0])],
            "decompress": [str(caffedsd), "decompress", str(self.dcz), "-o", str(self.outputs["decompress"][0])],
        }

    def prepare(self, sparsity):
        """The pruned model (its masks removed: compress keeps its non-zeros) and its .dcz."""
        self.run_argv(self.argv["prune"][:-1] + [str(self.pruned)])
        remove(self.pruned.with_suffix(".masks.h5"))
        self.run_argv(self.argv["compress"][:-1] + [str(self.dcz)])

    def run_argv(self, argv):
        wall, rss, code = run_child(argv, self.log)
        output = self.log.read_text(errors="replace")
        if code != 0:
            raise SystemExit(f"bench_compression: {' '.join(argv[1:3])} exited with {code}:\n{output[-4000:]}")
        return wall, rss, output

    def run(self, which):
        remove(*self.outputs[which])
        wall, rss, output = self.run_argv(self.argv[which])
        sizes = [path.stat().st_size for path in self.outputs[which]]
        remove(*self.outputs[which])
        return wall, rss, sizes, output


def summarize(model, runs, machine, args, dcz_bytes, table):
    med = {k: {"wall_s": benchlib.median(v, "wall_s"), "peak_rss_bytes": benchlib.median(v, "peak_rss_bytes")}
           for k, v in runs.items()}
    checks = {}
    for which, (time_limit, memory_limit) in TARGETS.items():
        time_ratio = med[which]["wall_s"] / med["prune"]["wall_s"]
        memory_ratio = med[which]["peak_rss_bytes"] / model["bytes"]
        checks[which] = {"time_ratio": time_ratio, "time_target": time_limit, "time_pass": time_ratio <= time_limit,
                         "memory_ratio": memory_ratio, "memory_target": memory_limit,
                         "memory_pass": memory_ratio <= memory_limit}
    return {"model": model, "repeats": args.repeats, "sparsity": args.sparsity, "bits": args.bits,
            "unpruned": args.unpruned,
            "dcz_bytes": dcz_bytes, "compress_table": table,
            "warmup": "one untimed run of each before the timed ones; page cache not dropped",
            "runs": runs, "median": med, "checks": checks, "machine": machine}


def markdown(summary):
    m, runs = summary["model"], summary["runs"]
    labels = {"prune": f"`caffedsd prune --sparsity {summary['sparsity']:g}`",
              "compress": f"`caffedsd compress --bits {summary['bits']}`"
                          + (" (unpruned input)" if summary.get("unpruned") else ""),
              "decompress": "`caffedsd decompress`"}
    lines = [
        f"Model: {m['layers']} layers, {m['params']:,} parameters, {m['bytes']:,} bytes "
        f"({mib(m['bytes']):.1f} MiB); {'unpruned' if summary.get('unpruned') else 'pruned 50%'} and compressed "
        f"it is {summary['dcz_bytes']:,} bytes "
        f"({m['bytes'] / summary['dcz_bytes']:.1f}x smaller). Medians of {summary['repeats']} runs each, "
        "alternating, after one untimed warm-up of each (inputs read from the page cache; cache not dropped).",
        "",
        benchlib.median_table(runs, labels, [("median wall (s)", "wall_s", "{:.2f}"),
                                             ("median peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
                                             ("peak RSS / caffemodel size", "rss_over_file", "{:.2f}x")],
                              each=("wall of each run (s)", "wall_s", "{:.2f}")),
    ]
    passed = {True: "PASS", False: "FAIL"}
    rows = []
    for which, check in summary["checks"].items():
        rows.append([f"{which} wall time / prune wall time", f"{check['time_ratio']:.2f}x",
                     f"<= {check['time_target']:.1f}x", passed[check["time_pass"]]])
        rows.append([f"{which} peak RSS / caffemodel size", f"{check['memory_ratio']:.2f}x",
                     f"<= {check['memory_target']:.1f}x", passed[check["memory_pass"]]])
    lines += ["", benchlib.markdown_table(["target", "measured", "limit", "result"], rows, "lrrl"),
              "", "Machine: " + benchlib.machine_line(summary["machine"])]
    return "\n".join(lines)


def main(argv=None):
    parser = benchlib.parser(__doc__)
    add_model_options(parser)
    parser.add_argument("--bits", default="5", help="--bits given to compress (default 5)")
    parser.add_argument("--unpruned", action="store_true",
                        help="compress the unpruned model (every weight kept) instead of the pruned one")
    args = parser.parse_args(argv)

    with vgg16_workspace(args, "bench_compression") as (workdir, model_path, model):
        bench = Bench(model_path, workdir, args.sparsity, args.bits, args.unpruned)
        print("pruning and compressing once (untimed) for the inputs of compress and decompress", flush=True)
        bench.prepare(args.sparsity)
        dcz_bytes = bench.dcz.stat().st_size
        print("warm-up (untimed): one run of each", flush=True)
        table = ""
        for which in ORDER:
            _, _, sizes, output = bench.run(which)
            if which == "compress":
                table = output
                if sizes[0] != dcz_bytes:
                    raise SystemExit(f"bench_compression: compress wrote {sizes[0]} bytes, then {dcz_bytes}")
            if which == "decompress" and sizes[0] > model["bytes"] + 4096:
                raise SystemExit(f"bench_compression: decompress wrote {sizes[0]} bytes for a {model['bytes']} model")
        def measure(which, repeat):
            wall, rss, _, _ = bench.run(which)
            return {"wall_s": wall, "peak_rss_bytes": rss, "peak_rss_mib": mib(rss),
                    "rss_over_file": rss / model["bytes"]}

        def show(which, repeat, run):
            print(f"  run {repeat + 1}/{args.repeats} {which:10s} {run['wall_s']:7.2f} s  "
                  f"peak RSS {run['peak_rss_mib']:7.0f} MiB", flush=True)

        runs = benchlib.alternate(ORDER, args.repeats, measure, show)
        summary = summarize(model, runs, benchlib.machine(), args, dcz_bytes, table)
        summary["command"] = [Path(sys.executable).name] + sys.argv
        print()
        print(table)
        print(markdown(summary))
        benchlib.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
