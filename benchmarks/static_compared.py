"""Static calibration of initial potentials against plain conversion and COS.

Loads a trained checkpoint of the pipeline (``python -m train.main``),
calibrates static potentials on a seeded subset of the training set, and
prints (and writes as JSON) for the whole test set:

* accuracy at T = 1..T_max for plain conversion, static calibration (each
  estimator, granularity and window W) and COS (rho, k);
* the share of nonzero offsets over W steps on the calibration and test sets;
* the calibration cost in seconds (wall clock, compilation included);
* accuracy at equal total latency: COS at rho + T beside the others at T.

Usage (after training a model with ``python -m train.main``; the config and
its ``--config.FIELD=VALUE`` overrides are those of the training run)::

    python -m train.main --config=configs/quickstart.py --workdir=/tmp/qs
    python -m benchmarks.static_compared --config=configs/quickstart.py \\
        --workdir=/tmp/qs --calib_size=512 --windows=4,8 --out=/tmp/static.json
"""

from __future__ import annotations

import json
import sys
import time

import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

import cosjax
from benchmarks import cli
from cosjax import static_calibration as sc

USAGE = ("usage: python -m benchmarks.static_compared --config=configs/NAME.py "
         "[--config.FIELD=VALUE ...] --workdir=DIR [--windows=4,8 ...]")


def _flags(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "The config file the model was trained with "
                                    "(with the same --config.FIELD=VALUE overrides).",
                                    flag_values=values, sys_argv=argv)
    define = {str: flags.DEFINE_string, int: flags.DEFINE_integer, bool: flags.DEFINE_bool}
    for name, default, help_text in (
            ("workdir", None, "the training run's workdir (checkpoints)"),
            ("calib_size", 512, "calibration images (train set)"),
            ("windows", "4,8", "offset windows W, comma separated"),
            ("estimators", "grid,mean_cos,mean_cos_clip", "mean_cos_clip: mean_cos with --clip_range"),
            ("clip_range", "-0.5,1.5", "lo,hi of mean_cos_clip"),
            ("granularities", "neuron,channel,layer", "comma separated"),
            ("iterations", 1, "k of the mean_cos estimator"),
            ("presim", 4, "rho of COS"),
            ("cos_iterations", "1,2", "k of COS, comma separated (empty: no COS rows)"),
            ("time_steps", 32, "T_max"),
            ("batch", 120, "evaluation batch"),
            ("chunk", 64, "calibration chunk"),
            ("seed", 0, "seed of the calibration subset"),
            ("max_test", 0, "evaluate only the first N test images (0: all)"),
            ("warm_timing", False, "calibrate twice and also time the second (compiled) run"),
            ("save_dir", None, "write each static pytree here as .npz"),
            ("out", None, "write all results as JSON here"),
            ("tables_from", None, "only print the tables of a JSON file written by --out")):
        kind = str if default is None else type(default)
        define[kind](name, default, help_text, flag_values=values)
    return cli.parse(values, argv, USAGE)


def as_arrays(source, eval_example) -> tuple[np.ndarray, np.ndarray]:
    """All examples of ``source`` preprocessed: ``(images [N, H, W, C], labels [N])``."""
    examples = [eval_example(source[i]) for i in range(len(source))]
    return (np.stack([e["image"] for e in examples]).astype(np.float32),
            np.asarray([e["label"] for e in examples], np.int32))


def accuracy_curve(run, images: np.ndarray, labels: np.ndarray, batch: int) -> list[float]:
    """``run(images [m, ...]) -> outputs [T, m, classes]`` over padded batches;
    returns accuracy at t = 1..T."""
    correct = None
    for start in range(0, len(images), batch):
        part, part_labels = images[start:start + batch], labels[start:start + batch]
        valid = len(part)
        pad = batch - valid
        part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])
        part_labels = np.concatenate([part_labels, np.zeros(pad, part_labels.dtype)])
        mask = np.arange(batch) < valid
        counts = np.asarray(cosjax.correct_per_step(run(jnp.asarray(part)), jnp.asarray(part_labels),
                                                    jnp.asarray(mask)), np.int64)
        correct = counts if correct is None else correct + counts
    return (correct / len(images)).tolist()


def main(argv: list[str] | None = None) -> int:
    args = _flags(list(sys.argv if argv is None else argv))
    if args.tables_from:
        with open(args.tables_from) as f:
            results = json.load(f)
        print_tables(results, results["presim"])
        return 0
    if args.config is None or args.workdir is None:
        print(USAGE, file=sys.stderr)
        return 2

    from train import architectures
    from train.data import batching
    from train.data.sources import load_splits, random_subset
    from train.job import load_for_eval
    from train.sharding import make_mesh

    config = args.config
    splits = load_splits(config)
    model = architectures.from_config(config, splits.num_classes)
    variables = load_for_eval(config, args.workdir, model, splits, make_mesh())
    _, eval_example = batching.transforms(config)
    test = splits.test
    if args.max_test:
        test = [test[i] for i in range(min(args.max_test, len(test)))]
    test_images, test_labels = as_arrays(test, eval_example)
    calib_images, _ = as_arrays(random_subset(splits.train, args.calib_size, args.seed), eval_example)
    shapes = sc.neuron_shapes(model, variables, test_images.shape[1:])
    T = args.time_steps
    print(f"{config.model.arch} on {config.dataset.name}: {len(test_images)} test images, "
          f"{len(calib_images)} calibration images, {len(shapes)} spiking layers", flush=True)

    results = {"arch": config.model.arch, "dataset": config.dataset.name,
               "test_images": len(test_images), "calib_images": len(calib_images),
               "time_steps": T, "presim": args.presim, "accuracy": {}, "calib_seconds": {},
               "calib_seconds_warm": {}, "offset_share": {}}

    def offsets(key, potentials, window):
        results["offset_share"].setdefault(key, {})[f"W{window}"] = {
            name: sc.offset_share(sc.offset_counts(model, variables, data, potentials,
                                                   window=window, chunk=args.chunk))
            for name, data in (("calib", calib_images), ("test", test_images))}

    def record(key, run):
        results["accuracy"][key] = accuracy_curve(run, test_images, test_labels, args.batch)
        acc = results["accuracy"][key]
        print(f"{key}: " + " ".join(f"T{t}={100 * acc[t - 1]:.2f}" for t in (1, 2, 4, 8, 16, 32)
                                    if t <= T), flush=True)

    for k in [int(k) for k in args.cos_iterations.split(",") if k]:
        record(f"cos_rho{args.presim}_k{k}", lambda x, k=k: cosjax.simulate(
            model, variables, x, time_steps=T, presim=args.presim, iterations=k))
    windows = [int(w) for w in args.windows.split(",")]
    clip = tuple(float(v) for v in args.clip_range.split(","))
    plain = lambda x: cosjax.simulate(model, variables, x, time_steps=T)
    record("plain", plain)
    for w in windows:
        offsets("plain", None, w)
    for w in windows:
        for name in args.estimators.split(","):
            estimator = "mean_cos" if name == "mean_cos_clip" else name
            clip_range = clip if name == "mean_cos_clip" else None
            for granularity in args.granularities.split(","):
                key = f"static_{name}_{granularity}_W{w}"
                start = time.perf_counter()
                potentials = sc.calibrate_static(model, variables, calib_images, window=w,
                                                 estimator=estimator, granularity=granularity,
                                                 iterations=args.iterations, clip_range=clip_range,
                                                 chunk=args.chunk)
                results["calib_seconds"][key] = time.perf_counter() - start
                if args.warm_timing:
                    start = time.perf_counter()
                    sc.calibrate_static(model, variables, calib_images, window=w,
                                        estimator=estimator, granularity=granularity,
                                        iterations=args.iterations, clip_range=clip_range,
                                        chunk=args.chunk)
                    results["calib_seconds_warm"][key] = time.perf_counter() - start
                    print(f"{key}: warm {results['calib_seconds_warm'][key]:.1f} s", flush=True)
                print(f"{key}: calibrated in {results['calib_seconds'][key]:.1f} s", flush=True)
                if args.save_dir:
                    sc.save_potentials(f"{args.save_dir}/{key}.npz", potentials, info={
                        "estimator": estimator, "granularity": granularity, "window": w,
                        "clip_range": clip_range,
                        "iterations": args.iterations, "calib_images": len(calib_images)})
                record(key, lambda x, p=potentials: sc.simulate_static(
                    model, variables, x, p, time_steps=T, shapes=shapes))
                offsets(key, potentials, w)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print_tables(results, args.presim)
    return 0


def print_tables(results: dict, presim: int) -> None:
    ts = [t for t in (1, 2, 3, 4, 6, 8, 12, 16, 32) if t <= results["time_steps"]]
    print("\nAccuracy (%) on the test set at T\n")
    print("| method | calib s (warm) | " + " | ".join(f"T={t}" for t in ts) + " |")
    print("|---|---|" + "---|" * len(ts))
    for key, acc in results["accuracy"].items():
        seconds = results["calib_seconds"].get(key)
        warm = results.get("calib_seconds_warm", {}).get(key)
        seconds = "-" if seconds is None else f"{seconds:.1f}" + ("" if warm is None else f" ({warm:.1f})")
        print(f"| {key} | {seconds} | " +
              " | ".join(f"{100 * acc[t - 1]:.2f}" for t in ts) + " |")
    print("\nShare of nonzero offsets (%) over W steps, calibration set / test set\n")
    print("| method | W | calib | test |\n|---|---|---|---|")
    for key, by_window in results["offset_share"].items():
        for window, share in by_window.items():
            print(f"| {key} | {window[1:]} | {100 * share['calib']:.2f} | {100 * share['test']:.2f} |")
    latencies = [t for t in (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32)
                 if presim < t <= results["time_steps"]]
    print(f"\nAccuracy (%) at equal total latency L (COS: rho={presim} + T = L; others: T = L)\n")
    print("| method | " + " | ".join(f"L={t}" for t in latencies) + " |")
    print("|---|" + "---|" * len(latencies))
    for key, acc in results["accuracy"].items():
        shift = presim if key.startswith("cos_") else 0
        print(f"| {key} | " + " | ".join(f"{100 * acc[t - shift - 1]:.2f}" for t in latencies) + " |")


if __name__ == "__main__":
    sys.exit(main())
