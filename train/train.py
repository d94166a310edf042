"""Training of QCFS ANNs and their evaluation as SNNs (plain conversion and COS).

One code path for one device, many devices and many hosts: a 1-D mesh over all
devices, the batch sharded over it, parameters and optimiser state replicated.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import cosjax
from cosjax import xla_options
from train import checkpoints, evaluate, input_pipeline, progress, report
from train.data import Splits, load_splits, random_subset
from train.validate import ConfigError, validate_config


class TrainingError(RuntimeError):
    """Training diverged (a NaN or infinite loss)."""


class TrainState(train_state.TrainState):
    batch_stats: Any


def make_mesh() -> tuple[Mesh, NamedSharding, NamedSharding]:
    """A 1-D ``data`` mesh over every device: (mesh, batch sharding, replicated)."""
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    return mesh, NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def learning_rate(config, total_steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(config.optim.lr, max(total_steps, 1))


def create_state(model, config, image_shape, total_steps: int, replicated) -> TrainState:
    """Initial parameters (seeded) and SGD with momentum and weight decay on
    every parameter, lambda included."""
    key = jax.random.PRNGKey(config.seed)
    variables = jax.jit(model.init)(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
    tx = optax.chain(optax.add_decayed_weights(config.optim.weight_decay),
                     optax.sgd(learning_rate(config, total_steps), momentum=config.optim.momentum))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              batch_stats=variables["batch_stats"], tx=tx)
    return jax.device_put(state, replicated)


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def all_finite(tree) -> bool:
    return bool(jax.device_get(_all_finite(tree)))


def make_train_step(model, data_sharding, replicated):
    """``(state, images [B,H,W,C], labels [B]) -> (state, {loss, accuracy})``."""

    def step(state: TrainState, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                          images, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (updates["batch_stats"], logits)

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return state, {"loss": loss, "accuracy": accuracy}

    return xla_options.jit(step, in_shardings=(replicated, data_sharding, data_sharding),
                           out_shardings=(replicated, replicated), donate_argnums=0)


def model_description(config, num_classes: int) -> dict:
    return {"arch": config.model.arch, "num_classes": num_classes, "levels": config.model.levels}


class MetricWriter:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard summaries, on
    process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.enabled:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(name, value, step)
            self.tb.flush()

    def discard_after(self, step: int) -> None:
        """Drops the rows of steps after ``step`` (written before an interruption,
        after the checkpoint training resumes from) and any partly written
        last line, so that a resumed run logs every step once."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(config, workdir: str, model, splits: Splits, mesh_shardings, writer: MetricWriter) -> TrainState:
    """Trains (or resumes) to the configured number of epochs; returns the state."""
    _, data_sharding, replicated = mesh_shardings
    steps_per_epoch = input_pipeline.steps_per_epoch(len(splits.train), config.optim.batch_size)
    total_steps = config.optim.epochs * steps_per_epoch
    image_shape = input_pipeline.transforms(config)[1](splits.test[0])["image"].shape
    state = create_state(model, config, image_shape, total_steps, replicated)
    description = model_description(config, splits.num_classes)
    mngr = checkpoints.manager(workdir, config.keep_checkpoints)
    restored = checkpoints.restore(mngr, state, description)
    if restored is not None:
        state = restored[1]
    start = int(jax.device_get(state.step))
    if start >= total_steps:
        return state
    writer.discard_after(start)
    if jax.process_index() == 0 and start:
        print(f"resuming from step {start} of {total_steps}", flush=True)
    train_step = make_train_step(model, data_sharding, replicated)
    batches = input_pipeline.train_batches(splits, config, start)
    bar = progress.Bar(total_steps, "train", initial=start)
    window = []
    for step in range(start, total_steps):
        batch = evaluate.to_global(next(batches), data_sharding)
        state, metrics = train_step(state, batch["image"], batch["label"])
        window.append(metrics)
        done = step + 1
        if done % config.log_every_steps == 0 or done == total_steps or done % config.checkpoint_every_steps == 0:
            values = jax.device_get(window)
            loss = float(np.mean([m["loss"] for m in values]))
            if not math.isfinite(loss):
                raise TrainingError(f"loss is {loss} at step {done}: training diverged; the last "
                                    f"good checkpoint is kept (lower config.optim.lr?)")
            acc = float(np.mean([m["accuracy"] for m in values]))
            writer.write(done, train_loss=loss, train_accuracy=acc,
                         learning_rate=float(learning_rate(config, total_steps)(done)),
                         epoch=done / steps_per_epoch)
            bar.update(len(window), images=len(window) * config.optim.batch_size, loss=loss, acc=acc)
            window = []
        if done % config.checkpoint_every_steps == 0 or done == total_steps:
            if not all_finite(state.params):
                raise TrainingError(f"parameters are not finite at step {done}: training diverged; "
                                    f"the last good checkpoint is kept (lower config.optim.lr?)")
            checkpoints.save(mngr, done, state, description)
    bar.close()
    mngr.close()
    return state


def load_for_eval(config, workdir: str, model, splits: Splits, replicated) -> dict:
    """Variables to evaluate: an imported PyTorch checkpoint, or the latest
    checkpoint in the workdir."""
    if config.init_from:
        from cosjax.torch_interop import load_torch_checkpoint

        try:
            size = config.dataset.image_size if config.model.arch.startswith("vgg") else None
            variables = load_torch_checkpoint(config.init_from, config.model.arch, splits.num_classes,
                                              image_size=size)
        except (OSError, ValueError, ImportError) as error:
            raise checkpoints.CheckpointError(f"cannot import {config.init_from}: {error}") from None
        return jax.device_put(variables, replicated)
    image_shape = input_pipeline.transforms(config)[1](splits.test[0])["image"].shape
    state = create_state(model, config, image_shape, 1, replicated)
    mngr = checkpoints.manager(workdir, config.keep_checkpoints, create=False)
    restored = checkpoints.restore(mngr, state, model_description(config, splits.num_classes))
    if restored is None:
        raise checkpoints.CheckpointError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')} to evaluate; train first "
            f"(--config.mode=train_eval) or pass --config.init_from=model.pth")
    return {"params": restored[1].params, "batch_stats": restored[1].batch_stats}


def test_source(config, splits: Splits):
    """The test set, or a seeded random subset of ``snn.max_eval_examples``."""
    limit = config.snn.max_eval_examples
    if limit and limit < len(splits.test):
        return random_subset(splits.test, limit, config.seed)
    return splits.test


def evaluate_all(config, variables, model, splits: Splits, mesh_shardings) -> dict:
    """ANN accuracy and SNN accuracy at every t = 1..max(T) for plain
    conversion and each COS setting."""
    _, data_sharding, replicated = mesh_shardings
    source = test_source(config, splits)
    batch = config.snn.eval_batch_size
    t_max = max(config.snn.time_steps)

    def batches():
        return input_pipeline.eval_batches(source, config, batch)

    num_batches, it = batches()
    ann_step = evaluate.make_ann_eval_step(model, data_sharding, replicated)
    correct, count, ann_seconds = evaluate.run_eval(ann_step, variables, it, num_batches,
                                                    data_sharding, "ANN eval", batch)
    results: dict[str, Any] = {"ann_accuracy": float(correct) / count, "num_test_images": count,
                               "snn_accuracy": {}, "settings": {}, "methods": {},
                               "eval_seconds": {"ann": ann_seconds}}
    for setting in evaluate.snn_settings(config):
        step_fn = evaluate.make_snn_eval_step(model, setting, t_max, data_sharding, replicated,
                                              config.snn.micro_batch or None)
        num_batches, it = batches()
        correct, seen, seconds = evaluate.run_eval(step_fn, variables, it, num_batches, data_sharding,
                                                   f"SNN {setting.key}", batch)
        if seen != count:
            raise RuntimeError(f"evaluation saw {seen} images, expected {count}")
        results["snn_accuracy"][setting.key] = [float(c) / count for c in correct]
        results["settings"][setting.key] = {"presim": setting.presim, "iterations": setting.iterations}
        results["methods"][setting.key] = ("plain conversion" if setting.presim == 0 else
                                           f"COS rho={setting.presim} k={setting.iterations}")
        results["eval_seconds"][setting.key] = seconds
    return results


def run(config, workdir: str) -> dict | None:
    """The main job: train (unless mode=eval), then evaluate and write results."""
    start_time = time.time()
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    splits = load_splits(config)
    model = cosjax.create_model(config.model.arch, splits.num_classes, config.model.levels)
    mesh_shardings = make_mesh()
    writer = MetricWriter(workdir)
    try:
        with jax.default_matmul_precision(config.precision):
            if config.mode == "train_eval":
                if config.init_from:
                    raise ConfigError("init_from evaluates an imported checkpoint: use --config.mode=eval")
                state = train(config, workdir, model, splits, mesh_shardings, writer)
                variables = {"params": state.params, "batch_stats": state.batch_stats}
            else:
                variables = load_for_eval(config, workdir, model, splits, mesh_shardings[2])
            if config.mode == "analyze":
                from train import analyze

                return analyze.run(config, workdir, model, variables, splits, mesh_shardings)
            results = evaluate_all(config, variables, model, splits, mesh_shardings)
    finally:
        writer.close()
    results = {
        "dataset": config.dataset.name, "arch": config.model.arch, "levels": config.model.levels,
        "presim": config.snn.presim, "iterations": list(config.snn.iterations),
        "time_steps": sorted(config.snn.time_steps), **results,
        "num_devices": jax.device_count(), "num_processes": jax.process_count(),
        "wall_time_s": time.time() - start_time,
    }
    results["latency"] = report.latency_table(results)
    if jax.process_index() == 0:
        report.write_json(os.path.join(workdir, "results.json"), results)
        report.write_text(os.path.join(workdir, "results.md"), report.markdown_table(results))
        report.plot_accuracy(results, os.path.join(workdir, "accuracy_vs_T.png"))
        print(report.markdown_table(results), flush=True)
    return results
