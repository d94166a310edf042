"""Every conversion method on one trained QCFS network, at equal total latency.

Usage::

    python -m benchmarks.methods_compared --config=configs/cifar10_cpu_resnet20.py \\
        --workdir=WORKDIR [--set dataset.root=DIR] [--examples 10000] \\
        [--max-latency 32] [--methods plain,cos:4,srp:4,group:4,parallel,signed] \\
        [--json out.json [--resume]] [--plots DIR]

Loads the latest checkpoint of a pipeline workdir (or ``init_from``), and for
each method measures top-1 accuracy at every total latency ``L = 1..max`` on
the first ``--examples`` test images (the pipeline's evaluation transform),
and the spikes the network sends per image:

- latency counts every step an input spends in the network: T for plain
  conversion, group neurons, signed spikes and parallel neurons; rho + T for
  COS; tau + T for SRP (docs/method.md section 5);
- ``spikes/img``: all spikes of all spiking layers over those steps (a group
  neuron's n member spikes in one step count n; a signed -1 counts one);
  ``events/img``: neuron-steps that send anything (a group's n spikes in a
  step are one multi-bit event). COS's pre-simulation spikes stay inside
  each layer's calibration and are not counted; SRP's tau steps are;
- ``synops/img``: every nonzero input of a linear layer fed by spikes times
  its fan-out (``cosjax.analysis``'s accumulates: one per synapse per event),
  and ``energy_uj/img``: those at 0.9 pJ plus the MACs of the layers in front
  of the first spiking layer at 4.6 pJ (``cosjax.analysis.energy_pj``);
- parallel neurons are run once per T in 1, 2, 4, ... (a T-step run is not
  the prefix of a longer one).

Prints a Markdown table per measure and writes everything as JSON; ``--plots``
draws accuracy against total latency and against synaptic operations. The JSON
file is rewritten (atomically) after each method, so a long run that is
interrupted keeps the methods it finished; ``--resume`` reuses them from the
file, after checking that it was measured with the same config, workdir,
examples and maximum latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import cli
from cosjax import Method, analysis, run_snn, xla_options
from cosjax.simulate import correct_per_step, to_steps
from train.evaluation.eval_steps import SnnSetting, method_setting


def _spec(text: str) -> tuple[str, Method, int]:
    """``plain``, ``cos:RHO`` or an ``snn.methods`` entry (``srp:TAU``,
    ``group:M``, ``parallel``, ``signed``) -> (label, method, presim)."""
    name, _, arg = text.partition(":")
    if name == "plain" and not arg:
        setting = SnnSetting(0)
    elif name == "cos" and arg.isdigit() and int(arg) > 0:
        setting = SnnSetting(int(arg))
    else:
        try:
            setting = method_setting(text, 0)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err}, or plain, cos:RHO") from err
    return setting.label, setting.method, setting.presim


def _at_least(low: int):
    """An argparse type: an int >= ``low``, else one line saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
        return value
    return parse


def _step(model, method: Method, presim: int, time_steps: int, fans: dict):
    """Jitted ``(variables, images, labels, mask) -> (correct [T], spikes [T],
    events [T], synops [T])``, the counts cumulative over the reported steps
    (SRP: plus its tau steps, counted at every T). ``fans``: the fan-out maps
    of the linear layers fed by spikes (``cosjax.analysis.network_profile``);
    ``synops`` counts, per step, every nonzero input of those layers times its
    fan-out (one accumulate per synapse per event, as ``cosjax.analysis``)."""
    steps = method.steps(time_steps, presim)
    first = presim if method.name == "srp" else 0

    def cumulative(per_step):
        if first == 0:
            return jnp.cumsum(per_step)[:time_steps]
        return (jnp.cumsum(per_step[first:]) + per_step[:first].sum())[:time_steps]

    def step(variables, images, labels, mask):
        layers, linear = [], []
        batch = images.shape[0]

        def on_linear(name, module, x):
            if name in fans:
                nonzero = to_steps(x, batch, steps) != 0
                ops = jnp.where(nonzero, fans[name], 0).reshape(steps, batch, -1)
                linear.append(ops.sum(-1, dtype=jnp.int32).astype(jnp.float32))   # [S, B]

        out, _ = run_snn(model, variables, images, steps=steps, presim=presim, iterations=1,
                         method=method, on_layer=lambda name, x, lam, s: layers.append(s),
                         on_linear=on_linear)
        keep = mask.astype(jnp.float32)
        per_step = lambda f: sum(
            (f(s).reshape(s.shape[0], s.shape[1], -1).sum(-1) * keep).sum(1) for s in layers)
        spikes, events = per_step(jnp.abs), per_step(lambda s: (s != 0).astype(jnp.float32))
        synops = sum((ops * keep).sum(1) for ops in linear)
        return (correct_per_step(out[first:first + time_steps], labels, mask),
                cumulative(spikes), cumulative(events), cumulative(synops))

    return xla_options.jit(step)


def measure(model, variables, batches, label: str, method: Method, presim: int,
            max_latency: int, profile: dict) -> dict:
    """``{"latency", "accuracy", "spikes", "events", "synops", "energy_uj"}``
    lists, per image, at each measured total latency <= max_latency.
    ``energy_uj``: ``cosjax.analysis.energy_pj`` of the synops (accumulates)
    and of the layers in front of the first spiking layer (MACs, once), in
    microjoules. ``profile``: ``cosjax.analysis.network_profile`` of the model."""
    fans = {name: jnp.asarray(fan, jnp.int32) for name, fan in profile["fan_out"].items()}
    analog_macs = sum(layer["ann_macs"] for layer in profile["linear"].values() if layer["analog"])
    if method.name == "parallel":
        runs = [t for t in (2 ** i for i in range(12)) if t <= max_latency]
    else:
        runs = [max_latency - presim]
    rows = {"latency": [], "accuracy": [], "spikes": [], "events": [], "synops": [], "energy_uj": []}
    for t in runs:
        step = _step(model, method, presim, t, fans)
        correct = spikes = events = synops = 0
        count = 0
        for images, labels, mask in batches:
            c, s, e, o = jax.device_get(step(variables, images, labels, mask))
            correct, spikes, events, synops = correct + c, spikes + s, events + e, synops + o
            count += int(mask.sum())
        measured = [t - 1] if method.name == "parallel" else range(t)
        for i in measured:
            rows["latency"].append(method.latency(i + 1, presim))
            rows["accuracy"].append(float(correct[i]) / count)
            rows["spikes"].append(float(spikes[i]) / count)
            rows["events"].append(float(events[i]) / count)
            rows["synops"].append(float(synops[i]) / count)
            rows["energy_uj"].append(1e-6 * analysis.energy_pj(float(synops[i]) / count, analog_macs))
        print(f"  {label} T={t}: done", file=sys.stderr, flush=True)
    return rows


def _table(results: dict, key: str, latencies: list[int], scale: float, fmt: str) -> str:
    lines = ["| method | " + " | ".join(f"L={t}" for t in latencies) + " |",
             "|---|" + "---|" * len(latencies)]
    for label, rows in results["methods"].items():
        at = dict(zip(rows["latency"], rows[key], strict=True))
        lines.append(f"| {label} | " + " | ".join(
            "-" if t not in at else format(scale * at[t], fmt) for t in latencies) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a config override, e.g. dataset.root=DIR (repeatable)")
    parser.add_argument("--examples", type=_at_least(0), default=10000,
                        help="the first N test images (0: all of them)")
    parser.add_argument("--batch", type=_at_least(1), default=250)
    parser.add_argument("--max-latency", type=_at_least(1), default=32)
    parser.add_argument("--methods", default="plain,cos:4,srp:4,group:4,parallel,signed",
                        type=lambda text: [_spec(part) for part in text.split(",")])
    parser.add_argument("--table-latencies", default="1,2,3,4,5,6,8,12,16,32",
                        type=lambda text: [int(t) for t in text.split(",")])
    parser.add_argument("--json", help="write the results here, after each method")
    parser.add_argument("--plots", metavar="DIR",
                        help="write accuracy_vs_latency.png and accuracy_vs_synops.png here")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the methods already in --json (same run settings)")
    args = parser.parse_args(argv)
    if args.resume and not args.json:
        parser.error("--resume reads the results of --json: give --json FILE")
    for label, _, presim in args.methods:
        if args.max_latency <= presim:
            parser.error(f"--max-latency {args.max_latency} leaves no step after the {presim} "
                         f"pre-simulation steps of {label}: use more than {presim}")

    config, model, variables, batches = cli.trained_model(args.config, args.workdir, args.set,
                                                          args.examples, args.batch)
    ann = xla_options.jit(lambda v, x: jnp.argmax(model.apply(v, x), -1))
    ann_correct = sum(int(((ann(variables, x) == y) & m).sum()) for x, y, m in batches)
    count = sum(int(m.sum()) for _, _, m in batches)
    results = {"config": args.config, "workdir": args.workdir, "set": args.set,
               "examples": count, "max_latency": args.max_latency,
               "ann_accuracy": ann_correct / count, "methods": {}, "seconds": {}}
    done = _resumed(args.json, results) if args.resume else {"methods": {}, "seconds": {}}
    profile = analysis.network_profile(model, variables, batches[0][0].shape[1:])
    for label, method, presim in args.methods:
        if label in done["methods"]:
            print(f"  {label}: reused from {args.json}", file=sys.stderr, flush=True)
            results["methods"][label] = done["methods"][label]
            results["seconds"][label] = done["seconds"][label]
            continue
        start = time.perf_counter()
        results["methods"][label] = measure(model, variables, batches, label, method, presim,
                                            args.max_latency, profile)
        results["seconds"][label] = round(time.perf_counter() - start, 1)
        if args.json:
            _write_json(args.json, results)
    lats = [t for t in args.table_latencies if t <= args.max_latency]
    print(f"{config.model.arch}, {count} test images, ANN {100 * results['ann_accuracy']:.2f}%")
    print("\nTop-1 accuracy (%) at total latency L:\n")
    print(_table(results, "accuracy", lats, 100, ".2f"))
    print("\nSpikes per image (thousands) up to L:\n")
    print(_table(results, "spikes", lats, 1e-3, ".1f"))
    print("\nEvents per image (thousands; a multi-spike step is one event) up to L:\n")
    print(_table(results, "events", lats, 1e-3, ".1f"))
    print("\nSynaptic operations per image (millions; one per synapse per event) up to L:\n")
    print(_table(results, "synops", lats, 1e-6, ".2f"))
    print("\nEnergy per image (microjoules; 0.9 pJ per accumulate, 4.6 pJ per MAC of the "
          "layers in front of the first spiking layer) up to L:\n")
    print(_table(results, "energy_uj", lats, 1, ".2f"))
    print("\nseconds per method:", results["seconds"])
    if args.plots:
        for path in write_plots(results, args.plots, f"{config.model.arch}, {count} test images"):
            print("wrote", path)
    return 0


def write_plots(results: dict, directory: str, title: str) -> list[str]:
    """``accuracy_vs_latency.png`` and ``accuracy_vs_synops.png`` of every
    method in ``directory``; returns their paths."""
    from cosjax import plots

    os.makedirs(directory, exist_ok=True)
    methods, ann = results["methods"], results["ann_accuracy"]
    return [
        plots.plot_accuracy_vs_latency(
            os.path.join(directory, "accuracy_vs_latency.png"),
            {label: {"latency": rows["latency"], "accuracy": rows["accuracy"]}
             for label, rows in methods.items()},
            ann_accuracy=ann, title=f"{title}: accuracy vs total latency"),
        plots.plot_accuracy_vs_cost(
            os.path.join(directory, "accuracy_vs_synops.png"),
            {label: {"cost": rows["synops"], "accuracy": rows["accuracy"]}
             for label, rows in methods.items()},
            cost="synaptic operations per image (one per synapse per event)", ann_accuracy=ann,
            title=f"{title}: accuracy vs synaptic operations"),
    ]


def _resumed(path: str, results: dict) -> dict:
    """The results stored at ``path`` by an earlier run with the same settings
    as ``results`` (none when the file does not exist yet); exits with one
    line when they were measured otherwise."""
    if not os.path.exists(path):
        return {"methods": {}, "seconds": {}}
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: --resume cannot read {path}: {err}") from err
    for key in ("config", "workdir", "set", "examples", "max_latency", "ann_accuracy"):
        if stored.get(key) != results[key]:
            raise SystemExit(f"error: --resume: {path} was measured with {key}="
                             f"{stored.get(key)!r}, this run has {results[key]!r}")
    return stored


def _write_json(path: str, results: dict) -> None:
    """Writes ``results`` to ``path`` whole or not at all (temporary file, then rename)."""
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
