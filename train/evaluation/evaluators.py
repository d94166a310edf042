"""Evaluators: each measures one thing about a trained network on the test set
and returns it as named metrics, ``run(variables) -> dict``.

The job (``train/job.py``) picks them by ``config.mode`` through
``MODE_EVALUATORS`` and merges their metrics into one results dict:

  * ``ann``: the QCFS ANN's top-1 accuracy;
  * ``snn``: SNN accuracy at every t = 1..max(T) for each SNN setting;
  * ``analysis``: offset spikes, firing rates, synaptic operations, energy and
    latency-fair accuracy per SNN setting (``cosjax.analysis``).

The SNN settings are one list for both (:func:`setting_runs`): plain
conversion, each COS setting, each method of ``snn.methods``
(``eval_steps.snn_settings``; parallel neurons run once per reported T) and,
with ``snn.static.enabled``, the static initial potentials
(``train/evaluation/static_potentials.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from cosjax import analysis
from cosjax.methods import IF
from train import progress
from train.data import batching
from train.evaluation import eval_steps, static_potentials, tta
from train.sharding import Shardings, to_global

Metrics = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What every evaluator needs: the config, the model, the test examples
    (``{"image": uint8 [H, W, C], "label": int}``) and the device shardings;
    with static calibration, the calibration examples (training images), the
    workdir its potentials are saved to and reused from, and the step of the
    evaluated checkpoint (None: an imported one), recorded with them."""

    config: Any
    model: Any
    source: Sequence[dict[str, Any]]
    shardings: Shardings
    calib_source: Sequence[dict[str, Any]] | None = None
    workdir: str | None = None
    checkpoint_step: int | None = None

    def calibrate_static(self, variables) -> static_potentials.Calibrated | None:
        """Static potentials (``train/evaluation/static_potentials.py``: given, reused or
        calibrated), or None when disabled."""
        if self.calib_source is None:
            return None
        return static_potentials.potentials(self.config, self.model, variables, self.calib_source,
                                            self.workdir, self.checkpoint_step, self.source)

    def batches(self):
        """``(num_batches, iterator)`` of padded, masked test batches."""
        return batching.eval_batches(self.source, self.config, self.config.snn.eval_batch_size)


@dataclasses.dataclass(frozen=True)
class SettingRun:
    """One SNN setting as an evaluator runs it: a setting of
    ``eval_steps.snn_settings`` (plain, COS, a method), or the static
    potentials (``setting`` None, ``potentials`` ``{layer: v0}`` on the
    devices). ``info``: what results record about it."""

    key: str
    label: str
    info: dict[str, Any]
    setting: eval_steps.SnnSetting | None = None
    potentials: dict[str, Any] | None = None


def setting_runs(ctx: EvalContext, variables) -> list[SettingRun]:
    """Every SNN setting of the config, the static potentials last (given,
    reused or calibrated here) when ``snn.static.enabled``."""
    runs = [SettingRun(s.key, s.label, {"presim": s.presim, "iterations": s.iterations,
                                        "method": s.method.label}, setting=s)
            for s in eval_steps.snn_settings(ctx.config)]
    calibrated = ctx.calibrate_static(variables)
    if calibrated is not None:
        runs.append(SettingRun(static_potentials.KEY, calibrated.label, calibrated.settings,
                               potentials=jax.device_put(calibrated.per_neuron,
                                                         ctx.shardings.replicated)))
    return runs


class Evaluator(Protocol):
    def run(self, variables) -> Metrics: ...


class AnnEvaluator:
    """``ann_accuracy``, ``num_test_images``, ``eval_seconds.ann``."""

    def __init__(self, ctx: EvalContext):
        self.ctx = ctx
        self.tta = ctx.config.snn.tta
        self.step = eval_steps.make_ann_eval_step(ctx.model, ctx.shardings.data,
                                                  ctx.shardings.replicated, self.tta)

    def run(self, variables) -> Metrics:
        num_batches, batches = self.ctx.batches()
        correct, count, seconds = eval_steps.run_eval(
            self.step, variables, batches, num_batches, self.ctx.shardings.data, "ANN eval",
            self.ctx.config.snn.eval_batch_size)
        metrics = {"num_test_images": count, "eval_seconds": {"ann": seconds}}
        if self.tta:
            metrics.update(ann_accuracy=float(correct[0]) / count,
                           ann_accuracy_tta=float(correct[1]) / count,
                           tta={"level": self.tta, "views": tta.number_of_views(self.tta)})
        else:
            metrics["ann_accuracy"] = float(correct) / count
        return metrics


class SnnEvaluator:
    """Per setting (``plain``, ``cos_rho{rho}_k{k}``, ``static``):
    ``snn_accuracy`` (a list, index t - 1), ``settings`` (rho, k; for
    ``static`` also W, the calibration set size, estimator, granularity,
    calibration seconds and whether its potentials were ``calibrated``,
    ``reused`` or ``loaded``), ``methods`` (label), ``eval_seconds``."""

    def __init__(self, ctx: EvalContext):
        self.ctx = ctx

    def run(self, variables) -> Metrics:
        t_max = max(self.ctx.config.snn.time_steps)
        metrics: Metrics = {"snn_accuracy": {}, "settings": {}, "methods": {}, "eval_seconds": {}}
        if not convertible(self.ctx.model):
            return {"snn_accuracy": {}, "snn_skipped": "the model has no QCFS layers (an ANN "
                                                       "that cannot be converted)"}
        tta_level = self.ctx.config.snn.tta
        if tta_level:
            metrics["snn_accuracy_tta"] = {}
        for run in setting_runs(self.ctx, variables):
            curve, seconds = self._accuracy(variables, run, t_max)
            if tta_level and run.setting is not None:
                curve, metrics["snn_accuracy_tta"][run.key] = curve
            info = run.info if run.setting is None else {**run.info, "latency": [
                None if a is None else run.setting.method.latency(t, run.setting.presim)
                for t, a in enumerate(curve, start=1)]}
            metrics["snn_accuracy"][run.key] = curve
            metrics["settings"][run.key] = info
            metrics["methods"][run.key] = run.label
            metrics["eval_seconds"][run.key] = seconds
        return metrics

    def _step(self, run: SettingRun, time_steps: int):
        """The jitted ``(variables, images, labels, mask) -> (correct, count)``."""
        model, shardings = self.ctx.model, self.ctx.shardings
        micro_batch = self.ctx.config.snn.micro_batch or None
        if run.setting is not None:
            return eval_steps.make_snn_eval_step(model, run.setting, time_steps, shardings.data,
                                                 shardings.replicated, micro_batch,
                                                 self.ctx.config.snn.tta)
        step = eval_steps.make_static_eval_step(model, time_steps, shardings.data,
                                                shardings.replicated, micro_batch)
        return lambda v, images, labels, mask: step(v, run.potentials, images, labels, mask)

    def _accuracy(self, variables, run: SettingRun, t_max: int) -> tuple[Any, float]:
        """Accuracy at t = 1..t_max (None where not measured) and seconds:
        one pass for a causal setting, one pass per reported T for parallel
        neurons (whose step t depends on all T steps). With ``snn.tta`` (not
        for static potentials) the accuracy is a pair of such lists, without
        and with test-time augmentation."""
        config = self.ctx.config
        per_run = run.setting is not None and run.setting.per_run
        pair = bool(config.snn.tta) and run.setting is not None
        curves, total_seconds = [[None] * t_max for _ in range(2 if pair else 1)], 0.0
        for t in (sorted(config.snn.time_steps) if per_run else [t_max]):
            num_batches, batches = self.ctx.batches()
            correct, count, seconds = eval_steps.run_eval(
                self._step(run, t), variables, batches, num_batches, self.ctx.shardings.data,
                f"SNN {run.key}" + (f" T={t}" if per_run else ""), config.snn.eval_batch_size)
            rows = correct if pair else [correct]
            for curve, row in zip(curves, rows):
                if per_run:
                    curve[t - 1] = float(row[-1]) / count
                else:
                    curve[:] = [float(c) / count for c in row]
            total_seconds += seconds
        return (tuple(curves) if pair else curves[0]), total_seconds


def convertible(model) -> bool:
    """Whether the model's activations are all QCFS layers: a FastNet with
    GELU activations or max pooling is an ANN only and gets no SNN rows."""
    return getattr(model, "activation", "qcfs") == "qcfs" and getattr(model, "pool", "avg") == "avg"


def analysis_window(config) -> int:
    """The offset window W: ``config.analysis.window``, else rho (or L for rho = 0)."""
    w = config.analysis.window
    return w or config.snn.presim or config.model.levels


class AnalysisEvaluator:
    """One simulation pass per setting (per reported T for parallel neurons)
    yields every statistic: ``window``,
    ``methods``, ``settings`` (``cosjax.analysis.summarize`` plus totals per
    reported T; for ``static`` also its ``calibration`` settings),
    ``latency`` (each method vs plain at equal total latency; static at T)
    and the energy constants used. Offsets are IF neurons' only (None for
    the other methods); spikes and events are counted for all."""

    def __init__(self, ctx: EvalContext):
        self.ctx = ctx

    def _stats(self, variables, key: str, time_steps: int, setting: eval_steps.SnnSetting | None,
               potentials: dict | None = None) -> dict:
        """:func:`cosjax.analysis.analyze_batch` over the test set, summed, for
        T = ``time_steps``. ``setting`` None: the static ``potentials``
        ``{layer: v0 [...neuron shape]}`` with IF neurons."""
        config, model, data = self.ctx.config, self.ctx.model, self.ctx.shardings.data
        presim, iterations, method = ((0, 1, IF) if setting is None else
                                      (setting.presim, setting.iterations, setting.method))
        num_batches, batches = self.ctx.batches()
        bar = progress.Bar(num_batches, f"analyze {key}" + (
            f" T={time_steps}" if setting is not None and setting.per_run else ""))
        stats, profile = None, None
        for batch in batches:
            arrays = to_global(batch, data)
            if profile is None:
                profile = analysis.network_profile(model, variables, arrays["image"].shape[1:])
            given = None if potentials is None else {
                name: jnp.broadcast_to(v0, arrays["image"].shape[:1] + v0.shape)
                for name, v0 in potentials.items()}
            stats = analysis.add_stats(stats, analysis.analyze_batch(
                model, variables, arrays["image"], time_steps=time_steps, presim=presim,
                iterations=iterations, window=analysis_window(config), mask=arrays["mask"],
                labels=arrays["label"], profile=profile, initial_potentials=given,
                method=method))
            bar.update(images=config.snn.eval_batch_size)
        bar.close()
        return stats

    def _analyze(self, variables, key: str, setting: eval_steps.SnnSetting | None,
                 potentials: dict | None = None) -> Metrics:
        """The summary at the largest T, with ``totals_by_T`` for every
        reported T; parallel neurons get one pass per reported T (a T-step
        run is not the prefix of a longer one), their accuracy at each T
        from its own pass."""
        time_steps = sorted(self.ctx.config.snn.time_steps)
        if setting is None or not setting.per_run:
            stats = self._stats(variables, key, time_steps[-1], setting, potentials)
            return {**analysis.summarize(stats),
                    "totals_by_T": {t: analysis.summarize(stats, time_steps=t)["totals"]
                                    for t in time_steps}}
        by_t, accuracy = {}, [None] * time_steps[-1]
        for t in time_steps:
            summary = analysis.summarize(self._stats(variables, key, t, setting))
            by_t[t], accuracy[t - 1] = summary["totals"], summary["accuracy"][-1]
        return {**summary, "accuracy": accuracy, "totals_by_T": by_t}

    def run(self, variables) -> Metrics:
        config = self.ctx.config
        settings: Metrics = {}
        methods: dict[str, str] = {}
        for run in setting_runs(self.ctx, variables):
            settings[run.key] = self._analyze(variables, run.key, run.setting, run.potentials)
            if run.setting is None:
                settings[run.key]["calibration"] = run.info
            methods[run.key] = run.label
        plain = settings["plain"]["accuracy"]
        latency = {key: analysis.latency_comparison(plain, s["accuracy"], s["presim"])
                   for key, s in settings.items() if key != "plain"}
        return {"window": analysis_window(config), "methods": methods,
                "energy_constants_pj": {"ac": analysis.ENERGY_AC_PJ, "mac": analysis.ENERGY_MAC_PJ,
                                        "source": "Horowitz, ISSCC 2014, 45 nm CMOS"},
                "settings": settings, "latency": latency}


EVALUATORS: dict[str, type] = {"ann": AnnEvaluator, "snn": SnnEvaluator,
                               "analysis": AnalysisEvaluator}
MODE_EVALUATORS: dict[str, tuple[str, ...]] = {"train_eval": ("ann", "snn"), "eval": ("ann", "snn"),
                                               "analyze": ("ann", "analysis")}


def evaluate_all(ctx: EvalContext, variables, names: Sequence[str]) -> Metrics:
    """Runs the named evaluators in order and merges their metrics (dict-valued
    metrics of the same name, e.g. ``eval_seconds``, are merged key by key)."""
    merged: Metrics = {}
    for name in names:
        for key, value in EVALUATORS[name](ctx).run(variables).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged
