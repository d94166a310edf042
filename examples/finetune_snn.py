"""Fine-tune a converted SNN at small T with surrogate gradients.

    python -m examples.finetune_snn --time-steps 1 --presim 4 --steps 30   # from the checkout root
    python -m examples.finetune_snn --method group:4 --time-steps 2        # any conversion method

Trains a small QCFS VGG on scikit-learn's digits as an ANN, converts it
(:func:`cosjax.simulate`), and fine-tunes the SNN itself at T steps: the loss
is the cross-entropy of the time-averaged SNN output, and ``jax.grad`` reaches
every layer through the spike function's surrogate derivative
(:mod:`cosjax.surrogate`), for every conversion method (``--method``: ``if``,
``signed``, ``srp``, ``group:M``, ``parallel``). The calibrated initial
potentials (``--presim``) are held fixed by the gradient. Prints the SNN's accuracy at t = 1..T before
and after. Run it from a checkout (it uses the pipeline's training step,
``train.training_loop.train_step``); needs the ``train`` extra.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cosjax
from cosjax import surrogate as surrogates
from cosjax import xla_options
from train.training_loop import TrainState, train_step


def parse_method(text: str) -> cosjax.Method:
    """``if``, ``signed``, ``srp``, ``group:M`` or ``parallel`` -> a :class:`cosjax.Method`."""
    name, _, members = text.partition(":")
    try:
        if name == "signed" and not members:
            return cosjax.Method("if", signed=True)
        if name == "group":
            return cosjax.Method("group", members=int(members or 4))
        if not members:
            return cosjax.Method(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    raise argparse.ArgumentTypeError(f"method must be if, signed, srp, group:M or parallel, "
                                     f"got {text!r}")


def snn_loss(params, model, variables, images, labels, *, time_steps: int, presim: int,
             surrogate: surrogates.Surrogate, method: cosjax.Method = cosjax.methods.IF
             ) -> jax.Array:
    """Cross-entropy of the SNN's mean output over T steps (a scalar)."""
    outputs = cosjax.simulate(model, {**variables, "params": params}, images,
                              time_steps=time_steps, presim=presim, surrogate=surrogate,
                              method=method)
    return optax.softmax_cross_entropy_with_integer_labels(outputs.mean(0), labels).mean()


def finetune(model, variables: dict[str, Any], images: np.ndarray, labels: np.ndarray, *,
             time_steps: int, steps: int, learning_rate: float = 1e-3, batch: int = 128,
             presim: int = 0, surrogate: surrogates.Surrogate = surrogates.DEFAULT,
             method: cosjax.Method = cosjax.methods.IF,
             seed: int = 0) -> tuple[dict[str, Any], list[float]]:
    """Fine-tunes ``variables['params']`` of the SNN with Adam on minibatches.

    Batch-norm statistics stay as they are (eval mode: BN is a fixed affine
    map in the SNN). Returns the new variables and the minibatch losses.
    """
    tx = optax.adam(learning_rate)
    params = variables["params"]
    opt_state = tx.init(params)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(snn_loss)(params, model, variables, x, y,
                                                   time_steps=time_steps, presim=presim,
                                                   surrogate=surrogate, method=method)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = xla_options.jit(step)   # simulate is traced into this program
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(labels), size=min(batch, len(labels)), replace=False)
        params, opt_state, loss = step(params, opt_state, jnp.asarray(images[idx]),
                                       jnp.asarray(labels[idx]))
        losses.append(float(loss))
    return {**variables, "params": params}, losses


def snn_accuracy(model, variables, images, labels, *, time_steps: int, presim: int = 0,
                 method: cosjax.Method = cosjax.methods.IF):
    """Accuracy of the SNN's accumulated output at t = 1..T (a list)."""
    outputs = cosjax.simulate(model, variables, jnp.asarray(images), time_steps=time_steps,
                              presim=presim, method=method)
    correct = cosjax.correct_per_step(outputs, jnp.asarray(labels))
    return (np.asarray(correct) / len(labels)).tolist()


def digits():
    """scikit-learn's 8x8 digits as ``[N, 8, 8, 1]`` in [-1, 1]: (train, test) splits."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    labels = data.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[perm], labels[perm]
    return (images[:1400], labels[:1400]), (images[1400:], labels[1400:])


def train_ann(model, images, labels, steps: int = 300, seed: int = 0):
    """A short SGD run of the QCFS ANN (BN in training mode)."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.asarray(images[:1]))
    tx = optax.sgd(optax.cosine_decay_schedule(0.05, steps), momentum=0.9)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                              batch_stats=variables["batch_stats"], tx=tx)
    step = xla_options.jit(train_step(model))   # the pipeline's training step
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(labels), 64)
        state, _ = step(state, jnp.asarray(images[idx]), jnp.asarray(labels[idx]))
    return {"params": state.params, "batch_stats": state.batch_stats}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-steps", type=int, default=1, help="T of the fine-tuned SNN")
    parser.add_argument("--steps", type=int, default=30, help="fine-tuning steps")
    parser.add_argument("--presim", type=int, default=None,
                        help="rho (COS calibration; 0: none) or SRP's tau; default 4 for "
                             "if and srp, 0 for the others (they have none)")
    parser.add_argument("--method", type=parse_method, default=cosjax.methods.IF,
                        help="if (default), signed, srp, group:M or parallel")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--surrogate", choices=surrogates.KINDS, default="triangle")
    args = parser.parse_args(argv)
    method = args.method
    if args.presim is None:
        args.presim = 4 if method.name in ("if", "srp") and not method.signed else 0
    try:
        method.check(args.presim, 1)
    except ValueError as err:
        parser.error(str(err))
    (train_x, train_y), (test_x, test_y) = digits()
    model = cosjax.VGG(blocks=((16,), (32,)), num_classes=10, levels=4, hidden=64)
    variables = train_ann(model, train_x, train_y)
    before = snn_accuracy(model, variables, test_x, test_y, time_steps=args.time_steps,
                          presim=args.presim, method=method)
    variables, losses = finetune(model, variables, train_x, train_y, time_steps=args.time_steps,
                                 steps=args.steps, learning_rate=args.learning_rate,
                                 presim=args.presim, method=method,
                                 surrogate=surrogates.Surrogate(args.surrogate))
    after = snn_accuracy(model, variables, test_x, test_y, time_steps=args.time_steps,
                         presim=args.presim, method=method)
    print(f"loss: {losses[0]:.4f} (first step) -> {losses[-1]:.4f} (last step)")
    for t, (a, b) in enumerate(zip(before, after, strict=True), start=1):
        print(f"SNN accuracy at t={t}: {a:.4f} before, {b:.4f} after fine-tuning")


if __name__ == "__main__":
    main()
