"""Host time per image of the ImageNet transforms, JPEGs decoded at full size
or at the reduced size the transform needs (``dataset.jpeg_draft``).

Usage::

    python -m benchmarks.jpeg_decode [--sizes=500x375,800x600,1600x1200] [--images=32] [--repeats=3]

Writes ``--images`` synthetic photo-like JPEGs (quality 90) of each size
``WxH`` to a temporary folder and times, in this one thread, reading each
through ``train.data.sources.ImageFolderSource`` and transforming it:

- train: ``imagenet_train`` (decode, random-resized crop to 224, flip, normalise);
- train, host part with ``dataset.device_augment``: decode and random-resized
  crop only (flip and normalisation run on the device);
- eval: ``imagenet_eval`` (decode, resize the shorter side to 256, centre crop 224, normalise).

Each figure is the CPU time of this process (``time.process_time``: on a
machine shared with other jobs it moves far less than wall time), the best
of ``--repeats`` passes over the images, in microseconds per image; the
passes of the two decodings take turns.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
from absl import flags

from benchmarks import cli
from train.data import host_augment
from train.data.sources import ImageFolderSource

MEAN, STD = host_augment.IMAGENET_MEAN, host_augment.IMAGENET_STD

TRANSFORMS = {
    "train": lambda image, rng: host_augment.imagenet_train(image, rng, mean=MEAN, std=STD),
    "train, host part of device_augment":
        lambda image, rng: host_augment.random_resized_crop(image, rng, 224),
    "eval": lambda image, rng: host_augment.imagenet_eval(image, mean=MEAN, std=STD),
}


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth synthetic photo ``uint8 [height, width, 3]``: per channel a
    sum of six sinusoids of random frequency (0.5-12 periods across the
    image), phase and amplitude, plus mild noise (std 4 grey levels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.full((height, width, 3), 128.0)
    for c in range(3):
        for _ in range(6):
            fy, fx = rng.uniform(0.5, 12, 2)
            image[..., c] += rng.uniform(10, 40) * np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 6.3))
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def time_size(directory: str, width: int, height: int, images: int, repeats: int) -> dict:
    """``{(transform, draft): µs per image}`` for ``images`` JPEGs of ``width x height``."""
    from PIL import Image

    files = []
    for i in range(images):
        path = os.path.join(directory, f"{width}x{height}_{i}.jpg")
        Image.fromarray(photo(height, width, i)).save(path, quality=90)
        files.append(path)
    sources = {draft: ImageFolderSource(files, [0] * images, encoded=draft) for draft in (False, True)}
    best: dict = {}
    for _ in range(repeats):
        for name, transform in TRANSFORMS.items():
            for draft, source in sources.items():
                start = time.process_time()
                for i in range(images):
                    transform(source[i]["image"], np.random.default_rng(i))
                seconds = (time.process_time() - start) / images
                best[name, draft] = min(best.get((name, draft), np.inf), seconds * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    values = flags.FlagValues()
    flags.DEFINE_string("sizes", "500x375,800x600,1600x1200", "JPEG sizes WxH, comma separated.",
                        flag_values=values)
    flags.DEFINE_integer("images", 32, "JPEGs per size.", flag_values=values)
    flags.DEFINE_integer("repeats", 3, "Passes over the images; the best is printed.", flag_values=values)
    cli.parse(values, list(sys.argv if argv is None else argv),
              "usage: python -m benchmarks.jpeg_decode [--sizes=500x375,...] [--images=32] [--repeats=3]")
    print(f"one thread; {values.images} synthetic JPEGs (quality 90) per size; CPU µs per image, "
          f"best of {values.repeats}\n")
    print("| JPEG size | transform | full decode | reduced decode (jpeg_draft) | speed-up |\n"
          "|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        for size in values.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            best = time_size(directory, width, height, values.images, values.repeats)
            for name in TRANSFORMS:
                full, draft = best[name, False], best[name, True]
                print(f"| {width}x{height} | {name} | {full:,.0f} | {draft:,.0f} | {full / draft:.2f}x |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
