"""Figures of the SNN analysis (matplotlib, Agg canvas, PNG files).

Import this module explicitly (``from cosjax import plots``); ``import
cosjax`` does not import matplotlib. Every function takes plain dicts and
lists (e.g. the output of :func:`cosjax.analysis.summarize` and
:func:`cosjax.analysis.latency_comparison`) and an output path, draws on a
private ``Figure`` with an Agg canvas (no pyplot state, no backend switch),
writes to a temporary file in the same folder and renames it onto ``path``,
so a reader never sees a half-written file. Each returns ``path``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from cosjax.files import atomic_write

__all__ = [
    "OFFSET_LABELS", "plot_accuracy_vs_cost", "plot_accuracy_vs_latency", "plot_accuracy_vs_time",
    "plot_firing_rates", "plot_offset_histograms"
]

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as error:   # matplotlib is an optional dependency
    raise ImportError("cosjax.plots needs matplotlib: pip install 'cosjax[plots]' "
                      "(or matplotlib)") from error

OFFSET_LABELS = ("0", "+1", "-1", "+2", "-2", "|o|≥3")
# Curves of different settings often coincide: vary marker and dash as well as colour.
_STYLES = (("o", "-"), ("s", "--"), ("^", "-."), ("v", ":"), ("D", "-"), ("x", "--"))


def _style(index: int) -> dict:
    marker, line = _STYLES[index % len(_STYLES)]
    return {"marker": marker, "linestyle": line, "markersize": 4, "markerfacecolor": "none"}


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """Writes ``fig`` as PNG to a temporary name beside ``path``, then renames it."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                      bbox_inches="tight"))


def _check_curves(curves: Mapping[str, Sequence[float]], what: str) -> None:
    if not curves or any(len(values) == 0 for values in curves.values()):
        raise ValueError(f"{what} needs at least one non-empty curve")


def plot_accuracy_vs_time(path: str | os.PathLike, curves: Mapping[str, Sequence[float]], *,
                          ann_accuracy: float | None = None,
                          title: str = "SNN accuracy vs simulation steps T") -> str:
    """Accuracy against T for several SNN settings, with the ANN as a line.

    Args:
      curves: ``{label: [accuracy at T = 1, 2, ...]}``, e.g.
        ``{"plain": [...], "COS ρ=4, k=1": [...], "COS ρ=4, k=2": [...]}``.
      ann_accuracy: the QCFS ANN's accuracy (a horizontal dashed line).
    """
    _check_curves(curves, "plot_accuracy_vs_time")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for index, (label, accs) in enumerate(curves.items()):
        steps = np.arange(1, len(accs) + 1)
        ax.plot(steps, 100 * np.asarray(accs, float), label=label, **_style(index))
    if ann_accuracy is not None:
        ax.axhline(100 * ann_accuracy, color="black", linestyle="--", linewidth=1,
                   label=f"ANN ({100 * ann_accuracy:.2f}%)")
    longest = max(len(a) for a in curves.values())
    if longest >= 16:
        ax.set_xscale("log", base=2)
        ticks = [2 ** i for i in range(int(np.log2(longest)) + 1)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("simulation steps T")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_accuracy_vs_latency(path: str | os.PathLike,
                             curves: Mapping[str, Mapping[str, Sequence[float]]], *,
                             ann_accuracy: float | None = None,
                             title: str = "SNN accuracy vs total latency ρ + T") -> str:
    """Accuracy against total latency (pre-simulation rho plus T).

    Args:
      curves: ``{label: {"latency": [...], "accuracy": [...]}}``; the
        ``"plain"`` and ``"cos"`` entries of
        :func:`cosjax.analysis.latency_comparison` have this form.
      ann_accuracy: the QCFS ANN's accuracy (a horizontal dashed line).
    """
    return _accuracy_against(path, curves, "latency", "total latency ρ + T (time steps)",
                             ann_accuracy, title, log_x=False)


def plot_accuracy_vs_cost(path: str | os.PathLike,
                          curves: Mapping[str, Mapping[str, Sequence[float]]], *,
                          cost: str = "synaptic operations per image",
                          ann_accuracy: float | None = None, log_x: bool = True,
                          title: str = "SNN accuracy vs cost") -> str:
    """Accuracy against a cost (synaptic operations, energy, ...), one curve
    per method, each point one latency.

    Args:
      curves: ``{label: {"cost": [...], "accuracy": [...]}}``, equal lengths.
      cost: the x-axis label.
      ann_accuracy: the QCFS ANN's accuracy (a horizontal dashed line).
      log_x: a logarithmic cost axis.
    """
    return _accuracy_against(path, curves, "cost", cost, ann_accuracy, title, log_x=log_x)


def _accuracy_against(path, curves, x_key: str, x_label: str, ann_accuracy: float | None,
                      title: str, *, log_x: bool) -> str:
    """One accuracy curve per ``{label: {x_key: [...], "accuracy": [...]}}``."""
    if not curves:
        raise ValueError(f"a plot of accuracy against {x_key} needs at least one curve")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for index, (label, curve) in enumerate(curves.items()):
        xs, accs = list(curve[x_key]), list(curve["accuracy"])
        if len(xs) != len(accs) or not accs:
            raise ValueError(f"curve {label!r}: {x_key} and accuracy must be non-empty and "
                             f"of equal length, got {len(xs)} and {len(accs)}")
        ax.plot(xs, 100 * np.asarray(accs, float), label=label, **_style(index))
    if ann_accuracy is not None:
        ax.axhline(100 * ann_accuracy, color="black", linestyle="--", linewidth=1,
                   label=f"ANN ({100 * ann_accuracy:.2f}%)")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _grid(count: int) -> tuple[int, int]:
    cols = min(count, 4)
    return (count + cols - 1) // cols, cols


def plot_offset_histograms(path: str | os.PathLike,
                           distributions: Mapping[str, Mapping[str, Sequence[float]]], *,
                           title: str = "Offset spikes per layer (actual − QCFS-demanded count)",
                           log_scale: bool = True) -> str:
    """Grouped bars of the offset-spike distribution, one panel per layer.

    Args:
      distributions: ``{setting: {layer: [6 fractions]}}`` over the bins
        0, +1, -1, +2, -2, |o| >= 3 (the ``offsets`` of
        :func:`cosjax.analysis.summarize`), e.g. ``{"plain": ..., "COS k=1": ...}``.
        Every setting must name the same layers.
      log_scale: logarithmic y axis (offsets other than 0 are rare).
    """
    if not distributions:
        raise ValueError("plot_offset_histograms needs at least one setting")
    settings = list(distributions)
    layers = list(distributions[settings[0]])
    for name in settings:
        if list(distributions[name]) != layers:
            raise ValueError(f"setting {name!r} names layers {list(distributions[name])}, "
                             f"expected {layers}")
        for layer, fractions in distributions[name].items():
            if len(fractions) != len(OFFSET_LABELS):
                raise ValueError(f"{name}/{layer}: expected {len(OFFSET_LABELS)} fractions, "
                                 f"got {len(fractions)}")
    rows, cols = _grid(len(layers))
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    positions = np.arange(len(OFFSET_LABELS))
    width = 0.8 / len(settings)
    floor = 1e-5
    for index, layer in enumerate(layers):
        ax = axes[index // cols][index % cols]
        for j, name in enumerate(settings):
            values = 100 * np.asarray(distributions[name][layer], float)
            ax.bar(positions + (j - (len(settings) - 1) / 2) * width,
                   np.maximum(values, 100 * floor) if log_scale else values,
                   width, label=name)
        ax.set_xticks(positions, OFFSET_LABELS)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("offset (spikes)")
        ax.set_ylabel("neurons (%)")
        if log_scale:
            ax.set_yscale("log")
            ax.set_ylim(100 * floor, 150)
        ax.grid(True, axis="y", alpha=0.3)
    for index in range(len(layers), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    top = 1 - 0.9 / fig.get_figheight()          # room for the title and the legend row
    fig.suptitle(title, y=0.995, va="top")
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, top + 0.45 / fig.get_figheight()),
               ncols=min(len(settings), 4), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    return _save(fig, path)


def plot_firing_rates(path: str | os.PathLike, rates: Mapping[str, Mapping[str, float]], *,
                      title: str = "Firing rate per spiking layer") -> str:
    """Grouped bars of firing rates (spikes per neuron per step) per layer.

    Args:
      rates: ``{setting: {layer: rate}}`` (the ``firing_rate`` of
        :func:`cosjax.analysis.summarize`); every setting names the same layers.
    """
    if not rates:
        raise ValueError("plot_firing_rates needs at least one setting")
    settings = list(rates)
    layers = list(rates[settings[0]])
    for name in settings:
        if list(rates[name]) != layers:
            raise ValueError(f"setting {name!r} names layers {list(rates[name])}, expected {layers}")
    fig = Figure(figsize=(max(6.4, 0.55 * len(layers) * max(1, len(settings)) + 2), 4.2))
    ax = fig.add_subplot()
    positions = np.arange(len(layers))
    width = 0.8 / len(settings)
    for j, name in enumerate(settings):
        ax.bar(positions + (j - (len(settings) - 1) / 2) * width,
               [float(rates[name][layer]) for layer in layers], width, label=name)
    ax.set_xticks(positions, layers, rotation=45, ha="right")
    ax.set_xlabel("spiking layer")
    ax.set_ylabel("spikes per neuron per time step")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)
