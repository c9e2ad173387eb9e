"""What the benchmark scripts in tools/ share.

A benchmark compares two or more kinds of run measured side by side in one
process tree, alternating so that neither kind always goes first, and
reports medians as a Markdown table. A script uses:

    parser = benchlib.parser(__doc__)            # --repeats --json --workdir --keep
    parser.add_argument(...)                     # its own options
    args = parser.parse_args()
    runs = benchlib.alternate(("plain", "masked"), args.repeats, measure_one)
    print(benchlib.median_table(runs, {"plain": "stock solver", "masked": "with masks"},
                                [("median wall (s)", "wall_s", "{:.2f}")],
                                each=("wall of each run (s)", "wall_s", "{:.2f}")))
    print("Machine: " + benchlib.machine_line(benchlib.machine()))
    benchlib.write_json(args.json, results)

``measure_one(kind, repeat)`` returns a dict of numbers for one run.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path


class _DescribedDefaults(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def script_parser(doc, show_defaults=False):
    """An ArgumentParser for a tools/ script, described by the first
    paragraph of its docstring as written; ``show_defaults``: each option's
    help names its default."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=_DescribedDefaults
                                   if show_defaults else argparse.RawDescriptionHelpFormatter)


def parser(doc, repeats=3, workdir=True):
    """script_parser with the options every benchmark has (--workdir and
    --keep unless ``workdir`` is False)."""
    result = script_parser(doc)
    result.add_argument("--repeats", type=_at_least_one, default=repeats,
                        help=f"timed runs of each kind, alternating (default {repeats})")
    result.add_argument("--json", type=Path, default=None, help="also write the raw numbers to this JSON file")
    if workdir:
        result.add_argument("--workdir", type=Path, default=None,
                            help="folder for the work files (default: a fresh temporary folder, removed at the end)")
        result.add_argument("--keep", action="store_true", help="keep the work files at the end")
    return result


def synchronize(gpu):
    """Wait for the GPU's queued work, so a timed stretch includes it (no-op
    on the CPU, or without CuPy)."""
    if gpu is None:
        return
    from caffedsd import device

    if device.cupy is not None:
        device.cupy.cuda.Device(gpu).synchronize()


def _at_least_one(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def alternate(kinds, repeats, measure, on_run=None):
    """{kind: [measure(kind, repeat) for each repeat]}. Each repeat runs every
    kind once, in the given order on even repeats and reversed on odd ones,
    so no kind always goes first. ``on_run(kind, repeat, result)`` sees each."""
    runs = {kind: [] for kind in kinds}
    for repeat in range(repeats):
        for kind in kinds if repeat % 2 == 0 else tuple(reversed(kinds)):
            result = measure(kind, repeat)
            runs[kind].append(result)
            if on_run is not None:
                on_run(kind, repeat, result)
    return runs


def median(runs, key):
    """The median of ``run[key]`` over a list of run dicts."""
    return statistics.median(run[key] for run in runs)


def markdown_table(header, rows, align=None):
    """A Markdown table; ``align`` has an 'l' or 'r' per column (default: the
    first left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median_table(runs, labels, columns, each=None):
    """One row per kind of run: its label, the median of each column
    (header, key, format) and, with ``each`` = (header, key, format), that
    key's value in every run."""
    header = ["run"] + [title for title, _, _ in columns] + ([each[0]] if each is not None else [])
    rows = []
    for kind, label in labels.items():
        row = [label] + [fmt.format(median(runs[kind], key)) for _, key, fmt in columns]
        if each is not None:
            row.append(", ".join(each[2].format(run[each[1]]) for run in runs[kind]))
        rows.append(row)
    return markdown_table(header, rows, "l" + "r" * len(columns) + ("l" if each is not None else ""))


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo), or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def _mem_total():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gpu_name(gpu):
    """nvidia-smi's name, driver and compute capability of that GPU, or None."""
    if gpu is None:
        return None
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", f"--id={gpu}", "--query-gpu=name,driver_version,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
        return out.strip() or None
    except OSError:
        return None


def machine(**extra):
    """The machine and libraries a benchmark ran on, as plain data; ``extra``
    adds entries (e.g. mode="GPU 0")."""
    import numpy

    import google.protobuf
    from google.protobuf.internal import api_implementation

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_name(),
        "mem_total_bytes": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "protobuf": google.protobuf.__version__,
        "protobuf_api": api_implementation.Type(),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg": load,
        **extra,
    }


def machine_line(info):
    """``machine()``'s data as one line for a report."""
    mem = f", {info['mem_total_bytes'] / (1 << 30):.1f} GiB RAM" if info.get("mem_total_bytes") else ""
    cpu = f" ({info['cpu']}{mem})" if info.get("cpu") else ""
    blas = info.get("openblas_num_threads")
    extra = "".join(f", {k} {v}" for k, v in info.items()
                    if k not in _MACHINE_KEYS and v is not None and not isinstance(v, (dict, list)))
    return (f"nproc {info['nproc']}{cpu}, {info['platform']}, Python {info['python']}, numpy {info['numpy']}, "
            f"protobuf {info['protobuf']} (api_implementation {info['protobuf_api']}), "
            f"OPENBLAS_NUM_THREADS {blas if blas is not None else 'unset'}, "
            f"load average {info['loadavg']}{extra}")


_MACHINE_KEYS = {"nproc", "cpu", "mem_total_bytes", "platform", "python", "numpy", "protobuf", "protobuf_api",
                 "openblas_num_threads", "loadavg"}


def caffedsd_command(tool):
    """The caffedsd entry point installed beside this Python, else the one on
    PATH, so that a child process runs the CLI as a user does."""
    beside = Path(sys.executable).parent / "caffedsd"
    if beside.exists():
        return beside
    found = shutil.which("caffedsd")
    if not found:
        raise SystemExit(f"{tool}: no caffedsd entry point beside {sys.executable} or on PATH")
    return Path(found)


def write_json(path, data):
    """Write ``data`` as JSON to ``path`` (when given), making its folder."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
