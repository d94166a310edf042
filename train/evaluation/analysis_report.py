"""The files of ``--config.mode=analyze``: analysis.json, analysis.md and the
plots of offset spikes, firing rates and latency-fair accuracy. The numbers
come from ``train.evaluation.evaluators.AnalysisEvaluator``.
"""

from __future__ import annotations

import os

from train.evaluation import report


def markdown(results: dict) -> str:
    settings, methods = results["settings"], results["methods"]
    lines = [f"# Analysis: {results['arch']} on {results['dataset']} (L={results['levels']})", "",
             f"Offset window W = {results['window']} steps; "
             f"{next(iter(settings.values()))['samples']} test images; "
             f"ANN accuracy {100 * results['ann_accuracy']:.2f}%.", "",
             "## Offset spikes (fraction of neurons per bin: actual - QCFS-demanded count)", ""]
    bins = next(iter(settings.values()))["offset_bins"]
    with_offsets = {key: s for key, s in settings.items() if s["offsets"] is not None}
    lines += ["| layer | method | " + " | ".join(bins) + " |", "|---|---|" + "---|" * len(bins)]
    for layer in next(iter(with_offsets.values()))["offsets"]:
        for key, s in with_offsets.items():
            cells = " | ".join(f"{100 * f:.2f}%" for f in s["offsets"][layer])
            lines.append(f"| {layer} | {methods[key]} | {cells} |")
    if len(with_offsets) < len(settings):
        lines += ["", "Offsets are defined for IF neurons; "
                  + ", ".join(methods[k] for k in settings if k not in with_offsets)
                  + " have none."]
    lines += ["", "## Firing rate, spikes, operations and energy per image", "",
              "Latency counts every step an input is in the network (rho + T; the firing rate "
              "is per step of it for SRP, of the T steps otherwise); spikes count a group "
              "neuron's n member spikes in a step as n, events as one; SNN ACs are one per "
              "synapse per event.", "",
              "| method | T | latency | firing rate | spikes | events | SNN ACs | SNN MACs | "
              "ANN MACs | energy SNN/ANN |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in settings.items():
        for t, tot in s["totals_by_T"].items():
            lines.append(f"| {methods[key]} | {t} | {tot['latency']} | {tot['firing_rate']:.4f} | "
                         f"{tot['spikes']:.4g} | {tot['events']:.4g} | {tot['snn_acs']:.4g} | "
                         f"{tot['snn_macs']:.4g} | {tot['ann_macs']:.4g} | "
                         f"{tot['energy_ratio']:.3f} |")
    lines += ["", "Energy: 0.9 pJ per AC, 4.6 pJ per MAC (45 nm CMOS, Horowitz, ISSCC 2014); the "
              "first layer's MACs once per image.", "",
              "## Accuracy at equal total latency (rho + T; tau + T for SRP)", ""]
    for key, lat in results["latency"].items():
        lines += [f"{methods[key]} vs plain conversion:", "", "| rho + T | method | plain |", "|---|---|---|"]
        lines += [f"| {row['latency']} | {100 * row['cos']:.2f} | {100 * row['plain']:.2f} |"
                  for row in lat["matched"] if row["cos"] is not None]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, workdir: str) -> None:
    """analysis.json, analysis.md and four PNG plots in ``workdir``."""
    from cosjax import plots

    settings, methods = results["settings"], results["methods"]
    report.write_json(os.path.join(workdir, "analysis.json"), results)
    report.write_text(os.path.join(workdir, "analysis.md"), markdown(results))
    title = f"{results['arch']} on {results['dataset']}"
    plots.plot_accuracy_vs_time(os.path.join(workdir, "analysis_accuracy_vs_T.png"),
                                {methods[k]: s["accuracy"] for k, s in settings.items()},
                                ann_accuracy=results["ann_accuracy"], title=f"{title}: SNN accuracy vs T")
    latency = results["latency"]
    curves = {methods["plain"]: next(iter(latency.values()))["plain"]} if latency else {}
    for key, lat in results["latency"].items():
        curves[methods[key]] = lat["cos"]
    if curves:
        plots.plot_accuracy_vs_latency(os.path.join(workdir, "analysis_accuracy_vs_latency.png"),
                                       curves, ann_accuracy=results["ann_accuracy"],
                                       title=f"{title}: accuracy vs total latency rho + T")
    plots.plot_offset_histograms(
        os.path.join(workdir, "analysis_offsets.png"),
        {methods[k]: s["offsets"] for k, s in settings.items() if s["offsets"] is not None},
        title=f"{title}: offset spikes per layer over W={results['window']} steps")
    plots.plot_firing_rates(os.path.join(workdir, "analysis_firing_rates.png"),
                            {methods[k]: s["firing_rate"] for k, s in settings.items()},
                            title=f"{title}: firing rate per spiking layer (T={max(results['time_steps'])})")
