"""The trainer: QCFS ANN training with the reference recipe, resumable at any
step, sharded over every device (``train.sharding``).

Small named steps, as in flax's examples: ``create_state`` (seeded
parameters, SGD with momentum and weight decay, cosine schedule),
``make_train_step`` (one jitted step), ``fit`` (the loop: resume from the
latest checkpoint, log, checkpoint, stop on a signal). The job that calls it
(train/evaluate modes, results) is ``train/job.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from cosjax import xla_options
from train import checkpoints, optimizer, progress, weight_average
from train.data import batching
from train.data.sources import Splits
from train.errors import Interrupted, TrainingError
from train.metric_writer import MetricWriter
from train.sharding import Shardings, to_global


class TrainState(train_state.TrainState):
    batch_stats: Any
    average: Any = None      # weight_average: {"params", "batch_stats"} or None


def learning_rate(config, total_steps: int) -> optax.Schedule:
    """The base learning rate at each step (``train.optimizer.schedule``)."""
    return optimizer.schedule(config, total_steps)


def create_state(model, config, image_shape, total_steps: int, replicated) -> TrainState:
    """Initial parameters (seeded) and the optimiser (``train.optimizer``: by
    default SGD with momentum and weight decay on every parameter, lambda
    included), and the weight average if ``optim.average`` asks for one."""
    key = jax.random.PRNGKey(config.seed)
    variables = jax.jit(model.init)(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx = optimizer.create(config, params, batch_stats, total_steps)
    state = TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats, tx=tx,
                              average=weight_average.initial(config, params, batch_stats))
    return jax.device_put(state, replicated)


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def all_finite(tree) -> bool:
    return bool(jax.device_get(_all_finite(tree)))


def loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy of ``logits [B, K]`` against ``labels [B]``, the
    targets smoothed (``optax.smooth_labels``) when ``label_smoothing > 0``."""
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean()


def train_step(model, augment: Callable | None = None, config=None,
               total_steps: int = 0) -> Callable:
    """The training step as a plain function, for any jit (the pipeline's
    sharded one below, the benchmarks' own):
    ``(state, images [B,H,W,C], labels [B], indices [B] or None) -> (state,
    {loss, accuracy})``. ``augment``: ``(images, step, indices) -> float32
    images``, applied first with the state's step number and the examples'
    places in the data set (``batching.device_transform``); the images are
    then the host's uint8. ``config`` (optional): its
    ``optim.label_smoothing`` and ``optim.average`` (over ``total_steps``)."""
    smoothing = config.optim.label_smoothing if config is not None else 0.0

    def step(state: TrainState, images, labels, indices=None):
        if augment is not None:
            images = augment(images, state.step, indices)
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                          images, train=True, mutable=["batch_stats"])
            return loss(logits, labels, smoothing), (updates["batch_stats"], logits)

        (value, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        if config is not None:
            state = weight_average.update(config, state, total_steps)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return state, {"loss": value, "accuracy": accuracy}

    return step


def make_train_step(model, data_sharding, replicated, augment: Callable | None = None,
                    config=None, total_steps: int = 0):
    """:func:`train_step` jitted with the batch (images, labels, indices)
    sharded over ``data_sharding`` and the state replicated (donated)."""
    return xla_options.jit(train_step(model, augment, config, total_steps),
                           in_shardings=(replicated, data_sharding, data_sharding, data_sharding),
                           out_shardings=(replicated, replicated), donate_argnums=0)


def indexed_train_step(model, augment: Callable, config=None, total_steps: int = 0) -> Callable:
    """:func:`train_step` on examples gathered from a training set held on
    the device (``dataset.on_device``): ``(state, images uint8 [N,H,W,C],
    labels [N], indices int32 [B]) -> (state, {loss, accuracy})``; the
    gathered batch is what the host pipeline would have sent."""
    step = train_step(model, augment, config, total_steps)

    def gathered(state: TrainState, images, labels, indices):
        return step(state, images[indices], labels[indices], indices)

    return gathered


def make_indexed_train_step(model, data_sharding, replicated, augment: Callable, config=None,
                            total_steps: int = 0):
    """:func:`indexed_train_step` jitted: the held set and the state
    replicated (the state donated), the indices sharded over ``data_sharding``."""
    return xla_options.jit(indexed_train_step(model, augment, config, total_steps),
                           in_shardings=(replicated, replicated, replicated, data_sharding),
                           out_shardings=(replicated, replicated), donate_argnums=0)


def feed(config, model, splits: Splits, shardings: Shardings, start: int):
    """The training step and its batches from step ``start`` on:
    ``(step(state, batch) -> (state, metrics), iterator of host batches)``.

    Host path: the batches are the images and labels (``train_batches``).
    With ``dataset.on_device`` the training set is put on the devices first
    and the batches are the example indices (``train_indices``)."""
    augment = batching.device_transform(config, len(splits.train))
    last = total_steps(config, len(splits.train))
    if not config.dataset.on_device:
        plain = make_train_step(model, shardings.data, shardings.replicated, augment, config, last)
        return (lambda state, batch: plain(state, batch["image"], batch["label"], batch["index"]),
                batching.train_batches(splits, config, start))
    from train.data import on_device_set

    images, labels = on_device_set.decode(splits.train, config)
    if jax.process_index() == 0:
        print(on_device_set.describe(images), flush=True)
    held = on_device_set.put(images, labels, shardings.replicated)
    del images, labels
    indexed = make_indexed_train_step(model, shardings.data, shardings.replicated, augment,
                                      config, last)
    return (lambda state, batch: indexed(state, held.images, held.labels, batch["index"]),
            batching.train_indices(len(splits.train), config, start))


def whitening_init(config, splits: Splits, state: TrainState, replicated) -> TrainState:
    """arch=fastnet with ``model.fastnet.whiten_examples > 0``: the whitening
    convolution's kernel set from the patches of the first that many
    training images, as the network sees them at test time
    (``cosjax.whitening``); the same on every process. Else ``state``."""
    count = config.model.fastnet.whiten_examples if config.model.arch == "fastnet" else 0
    if not count:
        return state
    from cosjax.whitening import whitening_kernel

    _, eval_example = batching.transforms(config)
    images = np.stack([eval_example(splits.train[i])["image"]
                       for i in range(min(count, len(splits.train)))])
    size = state.params["whiten"]["kernel"].shape[0]
    kernel = jax.device_put(whitening_kernel(images, size, config.model.fastnet.whiten_eps), replicated)

    def with_kernel(params, kernel):
        return {**params, "whiten": {**params["whiten"], "kernel": kernel}}

    average = state.average
    if average is not None:      # a buffer of its own (the step donates the state)
        average = {**average, "params": with_kernel(average["params"], jnp.copy(kernel))}
    return state.replace(params=with_kernel(state.params, kernel), average=average)


def total_steps(config, num_train: int) -> int:
    return config.optim.epochs * batching.steps_per_epoch(num_train, config.optim.batch_size)


def fit(config, workdir: str, model, splits: Splits, shardings: Shardings, writer: MetricWriter,
        image_shape: tuple[int, ...], description: dict,
        stop_requested: Callable[[], int] = lambda: 0, deferred=None) -> TrainState:
    """Trains (or resumes) to the configured number of epochs; returns the state.

    ``description`` (model and recipe, ``checkpoints.describe``) is saved with
    every checkpoint and must match the one a resumed checkpoint holds.
    ``stop_requested()`` is asked after every step; a non-zero signal number
    saves a checkpoint at that step and raises ``Interrupted``. ``deferred``:
    a context manager held around the steps, during which a signal waits for
    ``stop_requested`` (``train.preemption.StopSignals.deferred``).
    """
    steps_per_epoch = batching.steps_per_epoch(len(splits.train), config.optim.batch_size)
    last = total_steps(config, len(splits.train))
    state = create_state(model, config, image_shape, last, shardings.replicated)
    mngr = checkpoints.manager(workdir, config.keep_checkpoints)
    if mngr.latest_step() is None:
        state = whitening_init(config, splits, state, shardings.replicated)
    batches = None
    try:
        restored = checkpoints.restore(mngr, state, description, check_recipe=True)
        if restored is not None:
            state = restored[1]
        start = int(jax.device_get(state.step))
        if start >= last:
            return state
        writer.discard_after(start)
        if jax.process_index() == 0 and start:
            print(f"resuming from step {start} of {last}", flush=True)
        train_step, batches = feed(config, model, splits, shardings, start)
        bar = progress.Bar(last, "train", initial=start)
        window = []
        with deferred() if deferred else contextlib.nullcontext():
            for step in range(start, last):
                batch = to_global(next(batches), shardings.data)
                state, metrics = train_step(state, batch)
                window.append(metrics)
                done = step + 1
                if (done % config.log_every_steps == 0 or done == last
                        or done % config.checkpoint_every_steps == 0):
                    _log(config, writer, bar, window, done, last, steps_per_epoch, workdir)
                    window = []
                signum = stop_requested()
                if done % config.checkpoint_every_steps == 0 or done == last or signum:
                    if not all_finite(state.params):
                        raise diverged(f"parameters are not finite at step {done}", workdir)
                    checkpoints.save(mngr, done, state, description)
                if signum and done < last:
                    raise Interrupted(signum, f"{signal.Signals(signum).name} at step {done} of "
                                              f"{last}: checkpoint saved; rerun the same command "
                                              f"to resume")
        bar.close()
    finally:
        if batches is not None:
            batches.close()     # stops worker processes, frees their shared memory
        mngr.close()
    return state


def diverged(what: str, workdir: str) -> TrainingError:
    """The error of a divergence (``what``: the loss or parameters that are not
    finite, and the step), naming the checkpoint it leaves to resume from."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    kept = (checkpoints.kept(directory) if checkpoints.saved_steps(directory)
            else "no checkpoint was saved before it")
    return TrainingError(f"{what}: training diverged; {kept} (lower config.optim.lr?)")


def _log(config, writer, bar, window, done, last, steps_per_epoch, workdir) -> None:
    """Writes the mean loss and accuracy of the steps in ``window``; stops on
    a non-finite loss."""
    values = jax.device_get(window)
    loss = float(np.mean([m["loss"] for m in values]))
    if not math.isfinite(loss):
        raise diverged(f"loss is {loss} at step {done}", workdir)
    acc = float(np.mean([m["accuracy"] for m in values]))
    writer.write(done, train_loss=loss, train_accuracy=acc,
                 learning_rate=float(learning_rate(config, last)(done)),
                 epoch=done / steps_per_epoch)
    bar.update(len(window), images=len(window) * config.optim.batch_size, loss=loss, acc=acc)
