"""Turning results into text: tables for the terminal, JSON, Markdown."""
import csv
import functools
import io
import json
import math
import numbers
import os
from pathlib import Path

from .atomic import atomic_path, write_text


def one_line(text):
    """``text`` with its control characters escaped: a message that quotes a
    damaged file's line (protobuf's parser does), a path or a top's name with
    a newline in a YAML comment, must stay one line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text.strip())


def number_text(value):
    """``value`` as %g writes it where that reads back the same, else in full:
    --energy 1.0000001 was said to be 1, out of (0, 1]. An integer is
    written whole (%g made 1000000 and 1000001 both 1e+06)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    text = f"{value:g}"
    return text if float(text) == value else repr(float(value))


def format_table(headers, rows, align=None):
    """A plain-text table; ``align`` is a string of 'l'/'r' per column. A
    layer or output name with a newline stays in its cell (one_line)."""
    cells = [[one_line(str(c)) for c in headers]] + [["" if c is None else one_line(str(c)) for c in row]
                                                     for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" * len(headers)
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header, rows):
    """Layer and output names may hold "|" or a newline: escaped, each cell
    stays one cell."""
    def cells(row):
        return "| " + " | ".join(one_line(str(c)).replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header)] + [cells(row) for row in rows])


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), imported
    only when something is plotted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _names_as_written(plot):
    """For a function drawing a figure whose texts hold layer and output
    names: "$" in them is not mathtext (a name such as "a$\\bad$" made
    savefig fail, "fc$1$" was drawn as "fc1")."""
    @functools.wraps(plot)
    def drawn(*args, **kwargs):
        with _pyplot().rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return drawn


def _legend(ax, lines, labels, **options):
    # Labels given explicitly: legend() leaves out lines whose own label
    # starts with "_", and a layer may be named so.
    if lines:
        ax.legend(lines, labels, **options)


def _save_png(fig, path):
    """Write ``fig`` to ``path`` atomically, then free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)


def _finite(value):
    """``value`` with each NaN or infinite float as None: JSON has neither,
    and json.dumps would write them bare (NaN), which JSON readers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(each) for key, each in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(each) for each in value]
    return value


def to_json(data):
    """``data`` as indented JSON, a NaN or infinite number as null."""
    return json.dumps(_finite(data), indent=2, allow_nan=False)


def test_value(value, spec=".4f"):
    """A TEST output in a table: None is one JSON held as null (_finite)."""
    return "not finite" if value is None or not math.isfinite(value) else format(value, spec)


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def pct(x):
    """``x`` as a percentage to 0.1; a share short of all, or above none, is
    not rounded to 100.0% or 0.0% (1 weight of 16,777,216 kept read as all
    pruned)."""
    text = f"{100 * x:.1f}%"
    if text == "100.0%" and x < 1:
        return ">99.9%"
    if text == "0.0%" and x > 0:
        return "<0.1%"
    return text


def ratio_text(dense, stored):
    """``dense / stored`` as "N.Nx"; one that grew, or shrank, by less than
    rounding shows is not written 1.0x (a layer 68 B dense, 71 B stored)."""
    if not stored:
        return "-"
    ratio = dense / stored
    text = f"{ratio:.1f}x"
    if text == "1.0x" and ratio != 1:
        return "<1.0x" if ratio < 1 else ">1.0x"
    return text


def prune_table(rows):
    body = []
    total_params = total_pruned = 0
    for r in rows:
        total_params += r.params
        total_pruned += r.pruned
        shared = f" (+{', '.join(r.shared_by[1:])})" if len(r.shared_by) > 1 else ""
        body.append([r.layer + shared, "x".join(map(str, r.shape)),
                     "kept" if r.amount is None else number_text(r.amount), r.params, r.pruned, pct(r.sparsity)])
    body.append(["total", "", "", total_params, total_pruned,
                 pct(total_pruned / total_params if total_params else 0.0)])
    return format_table(["layer", "shape", "amount", "weights", "pruned", "sparsity"], body, "llrrrr")


def shape_text(shape):
    """2x3x5, and "scalar" for a 0-axis blob (a shared PReLU slope)."""
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _pct_or_blank(value):
    return "" if value is None else pct(value)


def stats_table(stats):
    body = []
    for r in stats["layers"]:
        body.append([r["layer"], r["type"], " ".join(shape_text(s) for s in r["shapes"]),
                     r["params"], r["nonzero"], pct(r["sparsity"]), _pct_or_blank(r.get("weight_sparsity")),
                     "" if r["masked"] is None else r["masked"], human_bytes(r["bytes"])])
    t = stats["totals"]
    body.append(["total", "", "", t["params"], t["nonzero"], pct(t["sparsity"]),
                 _pct_or_blank(t.get("weight_sparsity")), "" if t["masked"] is None else t["masked"],
                 human_bytes(t["bytes"])])
    # Every blob (biases too), and the blobs prune prunes, as its table and
    # plans count: "sparsity" and "weights" alone read as prune's columns
    # (its count of weights, its share pruned).
    table = format_table(["layer", "type", "shapes", "params", "nonzero", "all-blob sparsity", "weight sparsity",
                          "masked", "bytes"], body, "lllrrrrrr")
    if t["nonfinite"]:  # a NaN counts as nonzero: say what it is
        table += "\nwarning: " + ", ".join(f"{r['layer']} holds {r['nonfinite']} NaN/Inf values"
                                           for r in stats["layers"] if r["nonfinite"])
    return table


def test_line(test, label="test"):
    """The TEST phase's outputs on one line."""
    if not test:
        return f"{label}: the solver has no test net (test_iter)"
    return f"{label}: " + ", ".join(f"{one_line(name)} = {value:.4f}" for name, value in test.items())


def stage_line(stage, run_dir):
    """One finished dsd stage (a StageSummary's dict, of the run folder
    ``run_dir``) on one line: its TEST outputs, weight sparsity and model."""
    return (f"{stage['folder']}: done in {stage['seconds']:.1f} s; {test_line(stage['test'])}; sparsity "
            f"{pct(stage['sparsity'])}; {one_line(os.path.join(run_dir, stage['model']))}")


def sweep_table(grid, rows):
    """squeezenet.sweep_rows over the knobs of ``grid``."""
    body = [[*(number_text(v) for v in settings.values()), params, f"{mb:.2f}"] for settings, params, mb in rows]
    return format_table(list(grid) + ["parameters", "MB"], body, "r" * (len(grid) + 2))


def rank_table(levels, rows):
    """lowrank.rank_table's rows: each layer's rank at each energy level."""
    body = [[name, kind, "x".join(map(str, shape)) + (f" group {groups}" if groups > 1 else ""), top, *ranks]
            for name, kind, shape, groups, top, ranks in rows]
    return format_table(["layer", "type", "shape", "max rank", *(number_text(e) for e in levels)], body,
                        "lllr" + "r" * len(levels))


def checks_table(checks):
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in checks)


def info_text(info):
    return "\n".join(f"{k}: {v}" for k, v in info.items())


# -- DSD runs -------------------------------------------------------------------

CURVE_COLUMNS = ("iter", "loss", "lr")


def curve_csv(curve):
    lines = [",".join(CURVE_COLUMNS)]
    lines += [f"{row['iter']},{row['loss']:.6g},{row['lr']:.6g}" for row in curve]
    return "\n".join(lines) + "\n"


def parse_curve_csv(text):
    """curve_csv's rows; ValueError for text it did not write."""
    lines = text.splitlines()
    if not lines or lines[0] != ",".join(CURVE_COLUMNS):
        raise ValueError(f"its first line is not {','.join(CURVE_COLUMNS)}")
    rows = []
    for number, line in enumerate(lines[1:], 2):
        cells = line.split(",")
        if len(cells) != len(CURVE_COLUMNS):
            raise ValueError(f"line {number} has {len(cells)} cell(s), not {len(CURVE_COLUMNS)}")
        it, loss, lr = cells
        rows.append({"iter": int(it), "loss": float(loss), "lr": float(lr)})
    return rows


def tests_csv(tests):
    """TEST passes [{iter, test: {output: value}}] as CSV: iter, then one
    column per output (blob names may hold commas: csv quotes them)."""
    names = _output_names(row["test"] for row in tests)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["iter"] + names)
    for row in tests:
        writer.writerow([row["iter"]] + [f"{row['test'][n]:.6g}" if n in row["test"] else "" for n in names])
    return out.getvalue()


def parse_tests_csv(text):
    """tests_csv's rows; ValueError for text it did not write."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if not header or header[0] != "iter":
            raise ValueError("its first line does not start with iter")
        rows = []
        for cells in reader:
            if len(cells) != len(header):
                raise ValueError(f"line {reader.line_num} has {len(cells)} cell(s), not {len(header)}")
            rows.append({"iter": int(cells[0]),
                         "test": {n: float(v) for n, v in zip(header[1:], cells[1:]) if v != ""}})
    except csv.Error as exc:  # a field past csv's limit, a NUL
        raise ValueError(f"line {reader.line_num}: {exc}") from None
    return rows


def _output_names(tests):
    names = []
    for test in tests:
        names += [name for name in test if name not in names]
    return names


def _metric_names(stages):
    return _output_names(stage.get("test", {}) for stage in stages)


def dsd_rows(stages):
    """Header and rows of the stage table: stage, iterations, lr, sparsity, test metrics."""
    metrics = _metric_names(stages)
    header = ["stage", "iterations", "lr", "sparsity"] + [f"test {m}" for m in metrics]
    rows = []
    for s in stages:
        rows.append([f"{s['stage']} {s['kind']}", s["iterations"], "" if s["lr"] is None else f"{s['lr']:.3g}",
                     pct(s["sparsity"])] + [test_value(s["test"][m]) if m in s["test"] else "" for m in metrics])
    return header, rows


def dsd_table(stages):
    header, rows = dsd_rows(stages)
    return format_table(header, rows, "lrrr" + "r" * (len(header) - 4))


def dsd_markdown(data):
    header, rows = dsd_rows(data["stages"])
    lines = ["# DSD run", "", markdown_table(header, rows)]
    test = (" Test: the solver's TEST net, each output averaged over the test batches." if _metric_names(data["stages"])
            else " The solver has no test net (test_iter).")
    lines += ["", "Sparsity: fraction of Convolution/Deconvolution/InnerProduct weights that are 0.0 "
              "in the stage's model." + test, "", "![loss and accuracy](curves.png)", ""]
    return "\n".join(lines)


def dsd_plotted_metrics(stages, kinds):
    """The test outputs plot_dsd draws: all but the losses, told by
    ``kinds`` ({output: "loss", ...}: by the layers that make them, since
    GoogLeNet names its accuracies loss3/top-1)."""
    return [m for m in _metric_names(stages) if kinds.get(m) != "loss"]


@_names_as_written
def plot_dsd(path, run_dir, stages, kinds):
    """Training loss over the run's iterations, stage boundaries marked, and
    each stage's dsd_plotted_metrics: at its periodic test passes, and at
    its end."""
    from .runfolder import read_own_text  # which writes its JSON with this module's to_json

    plt = _pyplot()
    fig, loss_ax = plt.subplots(figsize=(9, 4.5))
    test_ax = loss_ax.twinx()
    offset = 0
    metrics = dsd_plotted_metrics(stages, kinds)
    for s in stages:
        start = offset
        if s.get("curve"):
            curve = parse_curve_csv(read_own_text(run_dir / s["folder"] / s["curve"]))
            loss_ax.plot([offset + r["iter"] for r in curve], [r["loss"] for r in curve], lw=0.7, color="tab:blue")
        offset += s["iterations"]
        if s["kind"] == "prune":
            loss_ax.axvline(offset, color="tab:red", lw=1)
            loss_ax.text(offset, 0.02, f" {s['stage']} prune", transform=loss_ax.get_xaxis_transform(),
                         fontsize=8, color="tab:red")
        else:
            if s["kind"] == "sparse":  # masks held: shade the span
                loss_ax.axvspan(start, offset, color="tab:orange", alpha=0.08)
            loss_ax.axvline(offset, color="grey", ls="--", lw=0.8)
            loss_ax.text((start + offset) / 2, 0.98, f"{s['stage']} {s['kind']}", transform=loss_ax.get_xaxis_transform(),
                         ha="center", va="top", fontsize=8, color="grey")
        passes = parse_tests_csv(read_own_text(run_dir / s["folder"] / s["tests"])) if s.get("tests") else []
        for n, m in enumerate(metrics):
            during = [(start + p["iter"], p["test"][m]) for p in passes if m in p["test"]]
            if len(during) > 1:  # the solver's periodic passes (test_interval), then the stage's end
                test_ax.plot(*zip(*during), lw=0.8, color=f"C{n + 1}", label=m)
            if m in s["test"]:
                value = s["test"][m]
                test_ax.plot(offset, float("nan") if value is None else value, "o", color=f"C{n + 1}", label=m)
    handles = {h.get_label(): h for h in test_ax.get_lines()}
    _legend(test_ax, list(handles.values()), [f"test {m}" for m in handles], loc="center right", fontsize=8)
    loss_ax.set_xlabel("iteration (whole run)")
    loss_ax.set_ylabel("training loss", color="tab:blue")
    test_ax.set_ylabel("test " + (", ".join(metrics) or "metrics"))
    fig.tight_layout()
    _save_png(fig, path)


DSD_REPORT_FILES = ("report.json", "report.md", "curves.png")


def write_dsd_report(run_dir, data):
    """DSD_REPORT_FILES in ``run_dir``, each atomically."""
    run_dir = Path(run_dir)
    as_json, markdown, plot = (run_dir / name for name in DSD_REPORT_FILES)
    write_text(as_json, to_json(data) + "\n")
    write_text(markdown, dsd_markdown(data))
    plot_dsd(plot, run_dir, data["stages"], data["outputs"])


# -- sensitivity scans ---------------------------------------------------------------

def sensitivity_rows(data):
    """(layer, sparsity, metrics...) rows, baseline first."""
    rows = [["(baseline)", 0.0] + [data["baseline"][m] for m in data["metrics"]]]
    for layer in data["layers"]:
        for point in layer["points"]:
            rows.append([layer["layer"], point["sparsity"]] + [point["metrics"][m] for m in data["metrics"]])
    return rows


def sensitivity_csv(data):
    """Layer and output names may hold commas: csv quotes them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["layer", "sparsity"] + data["metrics"])
    writer.writerows([str(r[0]), number_text(r[1])] + ["" if v is None else f"{v:.6g}" for v in r[2:]]
                     for r in sensitivity_rows(data))
    return out.getvalue()


def primary_metric(metrics):
    """The output a summary shows when nothing says which layers made them:
    the first with "acc" in its name, else the first."""
    return next((m for m in metrics if "acc" in m.lower()), metrics[0])


def headline(test, name=None):
    """(name, value) of the TEST output a one-line summary shows: ``name``
    (chosen by layer types) where ``test`` has it, else primary_metric's."""
    if name not in test:
        name = primary_metric(list(test))
    return name, test[name]


def scan_metric(data):
    """A scan's default metric: the one it chose by layer types (older scans
    recorded none)."""
    return data.get("primary") or primary_metric(data["metrics"])


def sensitivity_summary(data):
    """The heading and table of sensitivity.md (what the CLI prints)."""
    metric = scan_metric(data)
    header = ["layer", "weights"] + [number_text(s) for s in data["sparsities"]]  # blob 0, what is pruned
    lines = [f"# Sensitivity: {one_line(metric)} after pruning one layer", "",
             f"Baseline {one_line(metric)} = {data['baseline'][metric]:.4f}; {data['iterations']} TEST iterations; "
             f"criterion {data['criterion']}; columns are the layer's sparsity.", "",
             markdown_table(header, [[layer["layer"], layer["params"]] +
                                     [test_value(p["metrics"][metric]) for p in layer["points"]]
                                     for layer in data["layers"]])]
    return "\n".join(lines)


def sensitivity_markdown(data):
    return sensitivity_summary(data) + "\n\n![sensitivity](sensitivity.png)\n"


SENSITIVITY_FILES = ("sensitivity.json", "sensitivity.csv", "sensitivity.md", "sensitivity.png")


def write_sensitivity(folder, data):
    """SENSITIVITY_FILES in ``folder``, each atomically."""
    as_json, table, markdown, plot = (Path(folder) / name for name in SENSITIVITY_FILES)
    write_text(as_json, to_json(data) + "\n")
    write_text(table, sensitivity_csv(data))
    write_text(markdown, sensitivity_markdown(data))
    write_sensitivity_plot(plot, data)


@_names_as_written
def write_sensitivity_plot(path, data):
    """One panel per metric, one curve per layer, metric against sparsity."""
    plt = _pyplot()
    metrics = data["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    lines = []
    for ax, metric in zip(axes[0], metrics):
        for layer in data["layers"]:
            xs = [0.0] + [p["sparsity"] for p in layer["points"]]
            ys = [data["baseline"][metric]] + [float("nan") if p["metrics"][metric] is None else p["metrics"][metric]
                                               for p in layer["points"]]
            lines += ax.plot(xs, ys, marker=".")
        ax.set_xlabel("sparsity of the layer")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    _legend(axes[0][0], lines[:len(data["layers"])], [layer["layer"] for layer in data["layers"]], fontsize=7)
    fig.suptitle(f"pruning one layer at a time ({data['criterion']}, {data['iterations']} TEST iterations)")
    fig.tight_layout()
    _save_png(fig, path)


# -- low-rank decomposition ------------------------------------------------------------

def decomposition_rows(rows):
    body = [[r.layer + (f" (weights of {r.shares_with})" if r.shares_with else ""), r.type,
             f"{r.rank}/{r.max_rank}" + (f" x{r.groups} groups" if r.groups > 1 else ""),
             r.params_before, r.params_after, r.macs_before, r.macs_after, f"{r.discarded_energy:.4g}"]
            for r in rows]
    params = [sum(r.params_before - r.shared_before for r in rows), sum(r.params_after - r.shared_after for r in rows)]
    macs = [sum(getattr(r, f) for r in rows) for f in ("macs_before", "macs_after")]
    body.append(["total", "", "", *params, *macs, ""])
    return ["layer", "type", "rank", "params before", "params after", "MACs before", "MACs after",
            "discarded energy"], body


def decomposition_table(rows):
    header, body = decomposition_rows(rows)
    return format_table(header, body, "lllrrrrr")


def skipped_lines(skipped):
    return [f"{s.layer} ({s.type}): {s.reason}" for s in skipped]


NETS_WRITTEN = "Nets written: "


def decomposition_markdown(rows, weights, skipped=(), nets=()):
    """decompose's report.md; ``nets``: the names of the prototxts it
    wrote, on a line of their own that a later decompose into the folder
    reads (lowrank.earlier_nets)."""
    header, body = decomposition_rows(rows)
    lines = [f"# Low-rank decomposition of {weights}", ""]
    if nets:
        lines += [NETS_WRITTEN + ", ".join(f"`{name}`" for name in nets) + " (with model.caffemodel; a later "
                  "decompose into this folder removes those it does not write again)", ""]
    lines += ["Each layer becomes a rank-r layer and a 1x1 (or r-input) layer carrying the bias. "
              "MACs: multiply-adds per image of the decomposed layers. Discarded energy: sum of the "
              "squared singular values left out (the squared Frobenius error of the weights). Totals "
              "count the weights layers share once.", "",
              markdown_table(header, body)]
    if skipped:
        lines += ["", "## Left as they are", "",
                  "A split is made only where it has fewer weights and fewer multiply-adds than the layer "
                  "(or where --rank asks for it).", ""]
        lines += [f"- {line}" for line in skipped_lines(skipped)]
    return "\n".join(lines) + "\n"


def plan_table(result):
    """The chosen sparsity and predicted drop of each layer (``plan_from_scan.make_plan``)."""
    body = [[c.layer, c.params, number_text(c.sparsity), f"{c.counted_drop:.4g}"] for c in result.choices]
    return format_table(["layer", "weights", "sparsity", f"predicted drop ({result.unit})"], body, "lrrr")


def plan_summary(result):
    """Overall sparsity, predicted drop and, for a verified plan, the measured
    drop and the back-off measurements that led to it."""
    unit, metric = result.unit, result.metric
    of = f"points of {metric}" if unit == "points" else f"in {metric} (a loss: how much it rises)"
    lines = [f"predicted overall sparsity {result.overall:.4f} of {result.prunable} prunable weights; "
             f"predicted total drop {result.drop:.4g} {of}"]
    if result.verified:
        history = result.history
        if len(history) > 1:
            steps = "; ".join(f"{h['overall']:.4f}: predicted {h['predicted_drop']:.4g}, measured "
                              f"{h['measured_drop']:.4g}" for h in history)
            lines.append(f"backed off in {len(history) - 1} more measurement(s) (overall sparsity: drops, "
                         f"in the order measured) {steps}")
        verified = result.verified
        budget = "" if verified["max_total_drop"] is None else f" (budget {verified['max_total_drop']:g})"
        lines.append(f"measured drop of the whole pruned net {result.measured_drop:.4g} {unit}{budget}: "
                     f"{metric} {verified['baseline']:.4f} -> {verified['measured']:.4f} "
                     f"over {verified['iterations']} TEST iterations")
    if result.unfed:
        weights = sum(c.params for c in result.unfed)
        lines.append(f"note: {', '.join(c.layer for c in result.unfed)} ({weights} weights) do not feed {metric}: "
                     "pruning them costs it nothing (with --max-drop a plan takes them as far as the scan went), "
                     f"and the overall sparsity counts them; the scanned weights that feed {metric} are "
                     f"{result.overall_fed:.4f} sparse (--metric plans them by an output they feed; a rule in "
                     "the plan sets them as wanted)")
    return "\n".join(lines)


# -- experiments ----------------------------------------------------------------------------

def plot_paired_differences(path, groups):
    """One row per comparison: each seed's paired difference (points) as a dot,
    the mean with its confidence interval as a bar. ``groups``: dicts with
    net, regime, comparison, per_seed {seed: difference}, mean, half_width."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(groups) + 1.4))
    labels = []
    for row, group in enumerate(groups):
        y = len(groups) - 1 - row
        values = [100 * v for v in group["per_seed"].values()]
        ax.plot(values, [y] * len(values), "o", color="tab:blue", alpha=0.7, ms=5)
        for seed, value in group["per_seed"].items():
            ax.annotate(str(seed), (100 * value, y), textcoords="offset points", xytext=(0, 5), ha="center",
                        fontsize=6, color="tab:blue")
        if group.get("half_width") is not None:
            ax.errorbar(100 * group["mean"], y - 0.25, xerr=100 * group["half_width"], fmt="s", color="black",
                        ms=4, capsize=3)
        labels.append(f"{group['net']} {group['regime']}: {group['comparison']} (n={len(values)})")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(list(reversed(labels)), fontsize=8)
    ax.set_ylim(-0.8, len(groups) - 0.4)
    ax.set_xlabel("paired difference of final test accuracy (points)\ndots: one per seed (labelled); square: mean ± 95% CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save_png(fig, path)


def plot_panels(path, panels):
    """Line plots side by side, two per row. ``panels``: dicts with title,
    xlabel, ylabel and series [{label, x, y}]."""
    plt = _pyplot()
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for series in panel["series"]:
            ax.plot(series["x"], series["y"], marker=".", label=series["label"])
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(alpha=0.3)
        if len(panel["series"]) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save_png(fig, path)


def compression_table(rows):
    """Deep Compression sizes per layer and stage, like the paper's Table 2:
    kept weights, weight and index bits per kept weight before and after
    Huffman coding, bytes and ratio. ``rows``: dcz.LayerSizes. Before
    Huffman, a code width times the entries over the kept weights: a gap
    wider than the index bits reach takes padding entries, which the
    Huffman columns count too (1-bit indices at 99% sparsity: 50 entries a
    weight). The file's own container (header, checksum) is not in it: it
    depends on how the source stored its layer parameters, not on the
    weights."""

    def name(layer):
        return layer.decode("utf-8", "backslashreplace") if isinstance(layer, bytes) else layer

    def per_kept(bits, kept):
        return f"{bits / kept:.2f}" if kept else "-"

    body = []
    for r in rows:
        shared = [pct(r.kept / r.weights) if r.weights else "-", per_kept(r.bits * r.entries, r.kept),
                  per_kept(r.value_bits, r.kept), per_kept(r.index_bits * r.entries, r.kept),
                  per_kept(r.index_stream_bits, r.kept)] if r.shared else ["", "exact", "", "", ""]
        body.append([name(r.layer), *shared, r.dense, r.before_huffman, r.stored,
                     ratio_text(r.dense, r.stored)])
    shared = [r for r in rows if r.shared]
    kept = sum(r.kept for r in shared)
    weights = sum(r.weights for r in shared)
    dense = sum(r.dense for r in rows)
    before = sum(r.before_huffman for r in rows)
    stored = sum(r.stored for r in rows)
    # Bits per kept weight in total: weighted by each layer's kept count.
    body.append(["total", pct(kept / weights) if weights else "-",
                 per_kept(sum(r.bits * r.entries for r in shared), kept),
                 per_kept(sum(r.value_bits for r in shared), kept),
                 per_kept(sum(r.index_bits * r.entries for r in shared), kept),
                 per_kept(sum(r.index_stream_bits for r in shared), kept),
                 dense, before, stored, ratio_text(dense, stored)])
    return format_table(["layer", "kept", "weight bits", "after Huffman", "index bits", "after Huffman",
                         "dense B", "P+Q B", "P+Q+H B", "ratio"], body, "lrrrrrrrrr")
