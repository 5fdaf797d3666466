#!/usr/bin/env python3
"""Merges the report.json files of several `inspect3d eval --report DIR` runs (e.g. one process per class, so
that finished classes survive an interrupted run) into the Markdown tables `inspect3d eval` prints: one table per
metric with a row per class and the mean, then point AUROC per defect kind. Standard library only.

    python3 scripts/merge_eval_reports.py out/eval/classes/*/report/report.json > table.md
"""
import json
import sys


def cell(value):
    return "–" if value is None else f"{value:.3f}"


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def main(paths):
    if not paths:
        sys.exit("usage: merge_eval_reports.py report.json [report.json ...]")
    results = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            results.extend(json.load(f))
    methods, classes = [], []
    for r in results:
        if r["method"] not in methods:
            methods.append(r["method"])
        if r["class"] not in classes:
            classes.append(r["class"])
    find = {(r["method"], r["class"]): r for r in results}
    out = []
    tables = [
        ("Object AUROC", "object_auroc"),
        ("Object AUPR", "object_ap"),
        ("Point AUROC", "point_auroc"),
        ("Point AUPR", "point_ap"),
        ("Clouds per second", "clouds_per_second"),
    ]
    for title, key in tables:
        out.append(f"#### {title}\n\n| class | {' | '.join(methods)} |\n|---|{'---:|' * len(methods)}")
        for c in classes:
            row = [cell(find.get((m, c), {}).get(key)) for m in methods]
            out.append(f"| {c} | {' | '.join(row)} |")
        means = [f"**{cell(mean(r.get(key) for r in results if r['method'] == m))}**" for m in methods]
        out.append(f"| **mean** | {' | '.join(means)} |\n")
    kinds = sorted({k for r in results for k in r.get("point_auroc_by_kind", {})})
    if kinds:
        out.append(
            f"#### Point AUROC by defect kind (mean over classes)\n\n| kind | {' | '.join(methods)} |\n"
            f"|---|{'---:|' * len(methods)}"
        )
        for kind in kinds:
            row = [
                cell(mean(r.get("point_auroc_by_kind", {}).get(kind) for r in results if r["method"] == m))
                for m in methods
            ]
            out.append(f"| {kind} | {' | '.join(row)} |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
