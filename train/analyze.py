"""``--config.mode=analyze``: offset spikes, firing rates, synaptic operations,
energy and latency-fair accuracy of the converted SNN, with plots.

One simulation pass over the test set per setting (plain conversion, COS for
each k) yields every statistic, computed in jitted code on the same sharded
batches as evaluation (``cosjax.analysis``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax

from cosjax import analysis
from train import evaluate, input_pipeline, progress, report


def window(config) -> int:
    """The offset window W: ``config.analysis.window``, else rho (or L for rho = 0)."""
    w = config.analysis.window if "analysis" in config else 0
    return w or config.snn.presim or config.model.levels


def run(config, workdir: str, model, variables, splits, mesh_shardings) -> dict[str, Any]:
    from train.train import test_source

    start_time = time.time()
    _, data_sharding, replicated = mesh_shardings
    source = test_source(config, splits)
    num_batches, batches = input_pipeline.eval_batches(source, config, config.snn.eval_batch_size)
    ann_correct, ann_count, _ = evaluate.run_eval(
        evaluate.make_ann_eval_step(model, data_sharding, replicated), variables, batches,
        num_batches, data_sharding, "ANN eval", config.snn.eval_batch_size)
    t_max = max(config.snn.time_steps)
    w = window(config)
    summaries: dict[str, dict] = {}
    methods: dict[str, str] = {}
    for setting in evaluate.snn_settings(config):
        num_batches, batches = input_pipeline.eval_batches(source, config, config.snn.eval_batch_size)
        bar = progress.Bar(num_batches, f"analyze {setting.key}")
        stats, profile = None, None
        for batch in batches:
            arrays = evaluate.to_global(batch, data_sharding)
            if profile is None:
                profile = analysis.network_profile(model, variables, arrays["image"].shape[1:])
            stats = analysis.add_stats(stats, analysis.analyze_batch(
                model, variables, arrays["image"], time_steps=t_max, presim=setting.presim,
                iterations=setting.iterations, window=w, mask=arrays["mask"],
                labels=arrays["label"], profile=profile))
            bar.update(images=config.snn.eval_batch_size)
        bar.close()
        summaries[setting.key] = {
            "summary": analysis.summarize(stats),
            "by_T": {t: analysis.summarize(stats, time_steps=t)["totals"]
                     for t in sorted(config.snn.time_steps)},
        }
        methods[setting.key] = ("plain conversion" if setting.presim == 0 else
                                f"COS rho={setting.presim} k={setting.iterations}")
    plain = summaries["plain"]["summary"]["accuracy"]
    latency = {key: analysis.latency_comparison(plain, s["summary"]["accuracy"], config.snn.presim)
               for key, s in summaries.items() if key != "plain"}
    results = {
        "dataset": config.dataset.name, "arch": config.model.arch, "levels": config.model.levels,
        "presim": config.snn.presim, "iterations": list(config.snn.iterations), "window": w,
        "time_steps": sorted(config.snn.time_steps), "methods": methods,
        "ann_accuracy": float(ann_correct) / ann_count,
        "energy_constants_pj": {"ac": analysis.ENERGY_AC_PJ, "mac": analysis.ENERGY_MAC_PJ,
                                "source": "Horowitz, ISSCC 2014, 45 nm CMOS"},
        "settings": {k: {**s["summary"], "totals_by_T": s["by_T"]} for k, s in summaries.items()},
        "latency": latency, "wall_time_s": time.time() - start_time,
    }
    if jax.process_index() == 0:
        write_outputs(results, workdir)
    return results


def markdown(results: dict) -> str:
    settings, methods = results["settings"], results["methods"]
    lines = [f"# Analysis: {results['arch']} on {results['dataset']} (L={results['levels']})", "",
             f"Offset window W = {results['window']} steps; "
             f"{next(iter(settings.values()))['samples']} test images; "
             f"ANN accuracy {100 * results['ann_accuracy']:.2f}%.", "",
             "## Offset spikes (fraction of neurons per bin: actual - QCFS-demanded count)", ""]
    bins = next(iter(settings.values()))["offset_bins"]
    lines += ["| layer | method | " + " | ".join(bins) + " |", "|---|---|" + "---|" * len(bins)]
    for layer in next(iter(settings.values()))["offsets"]:
        for key, s in settings.items():
            cells = " | ".join(f"{100 * f:.2f}%" for f in s["offsets"][layer])
            lines.append(f"| {layer} | {methods[key]} | {cells} |")
    lines += ["", "## Firing rate, operations and energy per image", "",
              "| method | T | firing rate | SNN ACs | SNN MACs | ANN MACs | energy SNN/ANN |",
              "|---|---|---|---|---|---|---|"]
    for key, s in settings.items():
        for t, tot in s["totals_by_T"].items():
            lines.append(f"| {methods[key]} | {t} | {tot['firing_rate']:.4f} | {tot['snn_acs']:.4g} | "
                         f"{tot['snn_macs']:.4g} | {tot['ann_macs']:.4g} | {tot['energy_ratio']:.3f} |")
    lines += ["", "Energy: 0.9 pJ per AC, 4.6 pJ per MAC (45 nm CMOS, Horowitz, ISSCC 2014); the "
              "first layer's MACs once per image.", "",
              "## Accuracy at equal total latency (rho + T)", ""]
    for key, lat in results["latency"].items():
        lines += [f"{methods[key]} vs plain conversion:", "", "| rho + T | COS | plain |", "|---|---|---|"]
        lines += [f"| {row['latency']} | {100 * row['cos']:.2f} | {100 * row['plain']:.2f} |"
                  for row in lat["matched"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, workdir: str) -> None:
    from cosjax import plots

    settings, methods = results["settings"], results["methods"]
    report.write_json(os.path.join(workdir, "analysis.json"), results)
    report.write_text(os.path.join(workdir, "analysis.md"), markdown(results))
    title = f"{results['arch']} on {results['dataset']}"
    plots.plot_accuracy_vs_time(os.path.join(workdir, "analysis_accuracy_vs_T.png"),
                                {methods[k]: s["accuracy"] for k, s in settings.items()},
                                ann_accuracy=results["ann_accuracy"], title=f"{title}: SNN accuracy vs T")
    curves = {methods["plain"]: next(iter(results["latency"].values()))["plain"]} if results["latency"] else {}
    for key, lat in results["latency"].items():
        curves[methods[key]] = lat["cos"]
    if curves:
        plots.plot_accuracy_vs_latency(os.path.join(workdir, "analysis_accuracy_vs_latency.png"),
                                       curves, ann_accuracy=results["ann_accuracy"],
                                       title=f"{title}: accuracy vs total latency rho + T")
    plots.plot_offset_histograms(
        os.path.join(workdir, "analysis_offsets.png"),
        {methods[k]: s["offsets"] for k, s in settings.items()},
        title=f"{title}: offset spikes per layer over W={results['window']} steps")
    plots.plot_firing_rates(os.path.join(workdir, "analysis_firing_rates.png"),
                            {methods[k]: s["firing_rate"] for k, s in settings.items()},
                            title=f"{title}: firing rate per spiking layer (T={max(results['time_steps'])})")
