"""Turning results into text: tables for the terminal, JSON, Markdown."""
import json


def format_table(headers, rows, align=None):
    """A plain-text table; ``align`` is a string of 'l'/'r' per column."""
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" * len(headers)
    lines = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(data):
    return json.dumps(data, indent=2, sort_keys=False)


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def pct(x):
    return f"{100 * x:.1f}%"


def prune_table(rows):
    body = []
    total_params = total_pruned = 0
    for r in rows:
        total_params += r.params
        total_pruned += r.pruned
        shared = f" (+{', '.join(r.shared_by[1:])})" if len(r.shared_by) > 1 else ""
        body.append([r.layer + shared, "x".join(map(str, r.shape)),
                     "kept" if r.amount is None else f"{r.amount:g}", r.params, r.pruned, pct(r.sparsity)])
    body.append(["total", "", "", total_params, total_pruned,
                 pct(total_pruned / total_params if total_params else 0.0)])
    return format_table(["layer", "shape", "amount", "weights", "pruned", "sparsity"], body, "llrrrr")


def stats_table(stats):
    body = []
    for r in stats["layers"]:
        body.append([r["layer"], r["type"], " ".join("x".join(map(str, s)) for s in r["shapes"]),
                     r["params"], r["nonzero"], pct(r["sparsity"]),
                     "" if r["masked"] is None else r["masked"], human_bytes(r["bytes"])])
    t = stats["totals"]
    body.append(["total", "", "", t["params"], t["nonzero"], pct(t["sparsity"]),
                 "" if t["masked"] is None else t["masked"], human_bytes(t["bytes"])])
    return format_table(["layer", "type", "shapes", "params", "nonzero", "sparsity", "masked", "bytes"],
                        body, "lllrrrrr")


def checks_table(checks):
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" for c in checks)


def info_text(info):
    return "\n".join(f"{k}: {v}" for k, v in info.items())
