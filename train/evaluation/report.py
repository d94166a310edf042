"""Results of an evaluation: results.json, a Markdown table and a plot, each
written to a temporary name and renamed, so no file is ever half-written."""

from __future__ import annotations

import json
import os
from typing import Any

from cosjax import analysis
from cosjax.files import atomic_write


def write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def markdown_table(results: dict) -> str:
    """Accuracy (%) at each reported T: the ANN, plain conversion, COS and
    the other methods (SRP's T after its tau steps: its total latency is in
    the equal-latency table)."""
    ts = results["time_steps"]
    ann = f"ANN accuracy: {100 * results['ann_accuracy']:.2f}%"
    if "ann_accuracy_tta" in results:
        ann += (f"; with test-time augmentation ({results['tta']['views']} views): "
                f"{100 * results['ann_accuracy_tta']:.2f}%")
    lines = [f"# {results['arch']} on {results['dataset']} (L={results['levels']}, "
             f"{results['num_test_images']} test images)", "", ann, ""]
    if not results["snn_accuracy"]:
        return "\n".join(lines + [f"No SNN rows: {results.get('snn_skipped', 'none evaluated')}."]) + "\n"
    lines += ["| method | " + " | ".join(f"T={t}" for t in ts) + " |",
              "|---|" + "---|" * len(ts)]
    rows = [(results["methods"][key], curve) for key, curve in results["snn_accuracy"].items()]
    rows += [(f"{results['methods'][key]} + TTA ({results['tta']['views']} views)", curve)
             for key, curve in results.get("snn_accuracy_tta", {}).items()]
    for label, curve in rows:
        lines.append(f"| {label} | " + " | ".join(
            "-" if curve[t - 1] is None else f"{100 * curve[t - 1]:.2f}" for t in ts) + " |")
    if results.get("latency"):
        lines += ["", "Equal total latency (rho + T steps):", "",
                  "| method | " + " | ".join(f"rho+T={t}" for t in results["latency"]["total"]) + " |",
                  "|---|" + "---|" * len(results["latency"]["total"])]
        for key, curve in results["latency"]["accuracy"].items():
            cells = " | ".join("-" if a is None else f"{100 * a:.2f}" for a in curve)
            lines.append(f"| {results['methods'][key]} | {cells} |")
    return "\n".join(lines) + "\n"


def latency_table(results: dict) -> dict:
    """Accuracy at each reported total latency rho + T for each method (None
    where the total is shorter than rho + 1 or longer than rho + max T), placed
    by ``cosjax.analysis.latency_comparison``."""
    curves = results["snn_accuracy"]
    totals = list(results["time_steps"])
    table = {}
    if "plain" not in curves:
        return {}
    for key, curve in curves.items():
        cos = analysis.latency_comparison(curves["plain"], curve,
                                          results["settings"][key]["presim"])["cos"]
        at = dict(zip(cos["latency"], cos["accuracy"], strict=True))
        table[key] = [at.get(total) for total in totals]
    return {"total": totals, "accuracy": table}


def plot_accuracy(results: dict, path: str) -> None:
    """Accuracy against time step: the ANN as a line, plain conversion and COS."""
    from cosjax import plots  # matplotlib only when a plot is drawn

    curves = {results["methods"][key]: curve for key, curve in results["snn_accuracy"].items()}
    plots.plot_accuracy_vs_time(
        path, curves, ann_accuracy=results["ann_accuracy"],
        title=f"{results['arch']} on {results['dataset']}: SNN accuracy vs time step")


def write_results(results: dict, workdir: str) -> None:
    """results.json, results.md and accuracy_vs_T.png in ``workdir``."""
    write_json(os.path.join(workdir, "results.json"), results)
    write_text(os.path.join(workdir, "results.md"), markdown_table(results))
    if results["snn_accuracy"]:
        plot_accuracy(results, os.path.join(workdir, "accuracy_vs_T.png"))
