"""Random-access data sources: TFDS, image folders, and scikit-learn's digits.

A source is a sequence of examples ``{"image": uint8 [H, W, C], "label": int}``
with ``len()`` and integer indexing, as Grain's ``MapDataset.source`` expects.
An image folder read for the ImageNet recipe may give a JPEG's image as a
``train.data.decoding.EncodedImage`` instead (decoded by the transform at reduced size).
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from train.data.decoding import EncodedImage, broken_message, check_decodes, full_size, to_rgb
from train.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
TFDS_DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000}
KNOWN_DATASETS = tuple(TFDS_DATASETS) + ("image_folder", "digits")


@dataclasses.dataclass
class Splits:
    train: Sequence[dict[str, Any]]
    test: Sequence[dict[str, Any]]
    num_classes: int
    class_names: list[str] | None = None


class ArraySource:
    """Examples held in memory: ``images uint8 [N, H, W, C]``, ``labels int [N]``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index])}


class SubsetSource:
    """The examples of ``source`` at ``indices`` (a read-only view)."""

    def __init__(self, source: Sequence[dict[str, Any]], indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[int(self.indices[index])]


def random_subset(source: Sequence[dict[str, Any]], size: int, seed: int) -> SubsetSource:
    """``size`` examples of ``source`` drawn without replacement (seeded), in
    index order. Unlike the first ``size`` examples, the draw follows the
    class mix of sources stored class by class (image folders)."""
    rng = np.random.default_rng(seed)
    return SubsetSource(source, np.sort(rng.choice(len(source), size=size, replace=False)))


class ImageFolderSource:
    """``root/<split>/<class>/<image>`` files, decoded with PIL on access.

    With ``encoded``, a JPEG is returned undecoded, as a
    ``train.data.decoding.EncodedImage`` (bytes and full size from the header): the
    ImageNet transforms decode it at the reduced size they need. Other
    formats are decoded here as without ``encoded``.

    A file that does not decode (or, when ``encoded``, whose header does not
    parse), or whose size is not ``size`` ``(H, W)`` (when given), raises
    ``DataError`` naming it and is recorded in ``broken`` (file -> reason;
    thread-safe, Grain reads on threads)."""

    def __init__(self, files: list[str], labels: list[int], size: tuple[int, int] | None = None,
                 encoded: bool = False):
        self.files, self.labels, self.size, self.encoded = files, labels, size, encoded
        self.broken: dict[str, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self) -> dict:
        """Picklable for Grain's worker processes (``data_workers``); the lock
        is not sent."""
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _fail(self, path: str, reason: str):
        with self._lock:
            self.broken[path] = reason
        return DataError(broken_message(path, reason))

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            image = self._read(path)
        except Exception as error:   # PIL raises OSError, SyntaxError, ValueError, ...
            reason = "empty file" if _empty(path) else f"cannot decode ({str(error) or type(error).__name__})"
            raise self._fail(path, reason) from error
        height, width = full_size(image)
        if self.size is not None and (height, width) != tuple(self.size):
            raise self._fail(path, f"{height}x{width} pixels, expected "
                                   f"{self.size[0]}x{self.size[1]} (dataset.image_size)")
        return {"image": image, "label": self.labels[index]}

    def _read(self, path: str) -> np.ndarray | EncodedImage:
        from PIL import Image

        file = path
        if self.encoded:
            encoded = EncodedImage.read(path)
            if encoded.is_jpeg:
                return encoded
            file = io.BytesIO(encoded.data)     # another format: decoded here, not read twice
        with Image.open(file) as image:
            return to_rgb(image)

    def verify(self, skip: bool = False, threads: int = 4) -> None:
        """Decodes every file (on ``threads`` threads; PIL decodes without the
        GIL): the first broken one raises its ``DataError``, or with ``skip``
        all are only recorded in ``broken``."""
        from concurrent.futures import ThreadPoolExecutor

        def check(index: int) -> DataError | None:
            try:
                check_decodes(self[index]["image"])
            except DataError as error:
                return error
            return None

        with ThreadPoolExecutor(max(1, threads)) as pool:
            errors = [e for e in pool.map(check, range(len(self))) if e is not None]
        if errors and not skip:
            raise errors[0]


def _empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


class SkipBroken:
    """``source`` with each broken example (``DataError``) replaced by the
    next example that loads (index + 1, + 2, ... cyclically): a pure function
    of the index, so shuffled, resumed training stays deterministic."""

    def __init__(self, source: Sequence[dict[str, Any]]):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.source)):
            try:
                return self.source[(index + offset) % len(self.source)]
            except DataError:
                continue
        raise DataError("every example of the training set is broken")


def broken_files(splits: Splits) -> dict[str, str]:
    """Files found broken so far in either split (file -> reason)."""
    found = {}
    for source in (splits.train, splits.test):
        found.update(getattr(source, "broken", {}))
    return found


class TfdsSource:
    """A TFDS array-record data source, keeping only image and label."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.source[index]
        image = np.asarray(record["image"], dtype=np.uint8)
        return {"image": image, "label": int(record["label"])}


def _scan_split(root: str, split: str) -> tuple[list[str], list[int], list[str]]:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise DataError(f"image folder {root!r} has no '{split}' directory "
                        f"(expected {root}/{split}/<class>/<image files>)")
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not classes:
        raise DataError(f"image folder split {split_dir!r} has no class directories")
    files, labels = [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        found = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise DataError(f"class directory {class_dir!r} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        files.extend(os.path.join(class_dir, f) for f in found)
        labels.extend([label] * len(found))
    return files, labels, classes


def image_folder(root: str, size: tuple[int, int] | None = None, encoded: bool = False) -> Splits:
    """Loads ``root/train/<class>/*`` and ``root/test/<class>/*``; both splits
    must hold the same class names. ``size``: the ``(H, W)`` every image must
    have; ``encoded``: JPEGs stay undecoded (``ImageFolderSource``)."""
    if not root or not os.path.isdir(root):
        raise DataError(f"image folder root {root!r} does not exist; set --config.dataset.root")
    train_files, train_labels, train_classes = _scan_split(root, "train")
    test_files, test_labels, test_classes = _scan_split(root, "test")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(f"image folder {root!r}: train and test classes differ "
                        f"(only in train: {only_train}, only in test: {only_test})")
    return Splits(ImageFolderSource(train_files, train_labels, size, encoded),
                  ImageFolderSource(test_files, test_labels, size, encoded), len(train_classes),
                  train_classes)


def digits() -> Splits:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes):
    a fixed 80/20 split, images as uint8 ``[8, 8, 3]``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(data.images * 16.0, 0, 255).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return Splits(ArraySource(images[train], labels[train]),
                  ArraySource(images[test], labels[test]), 10)


def tfds_splits(name: str, data_dir: str | None, train_split: str, test_split: str) -> Splits:
    """A prepared TFDS data set in array-record format (no download at run time)."""
    import tensorflow_datasets as tfds
    from absl import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)   # TFDS warns about each folder it probes
    try:
        train = tfds.data_source(name, split=train_split, data_dir=data_dir or None, download=False)
        test = tfds.data_source(name, split=test_split, data_dir=data_dir or None, download=False)
    except Exception as error:  # TFDS raises several types for a missing data set
        raise DataError(
            f"TFDS data set {name!r} is not prepared in data_dir={data_dir or '~/tensorflow_datasets'} "
            f"({type(error).__name__}). Prepare it once with: python -m train.prepare "
            f"--dataset={name} --data_dir=DIR" + (" --manual_dir=DIR_WITH_IMAGENET_TARS"
                                                  if name == "imagenet2012" else "")) from error
    finally:
        logging.set_verbosity(level)
    return Splits(TfdsSource(train), TfdsSource(test), TFDS_DATASETS[name])


def jpeg_draft(config) -> bool:
    """Whether image-folder JPEGs reach the transforms undecoded, to be decoded
    at reduced size: ``dataset.jpeg_draft`` with the ImageNet recipe, except
    with ``dataset.skip_broken`` (a file must decode in the source to be
    skipped there)."""
    ds = config.dataset
    return bool(ds.augment == "imagenet" and ds.jpeg_draft
                and not ds.skip_broken)


def load_splits(config) -> Splits:
    """The train and test sources selected by ``config.dataset``."""
    name = config.dataset.name
    if name in TFDS_DATASETS:
        splits = tfds_splits(name, config.dataset.root, config.dataset.train_split,
                             config.dataset.test_split)
    elif name == "image_folder":
        size, augment = config.dataset.image_size, config.dataset.augment
        splits = image_folder(config.dataset.root,
                              (size, size) if augment in ("cifar", "none") else None,
                              encoded=jpeg_draft(config))
    elif name == "digits":
        splits = digits()
    else:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(KNOWN_DATASETS)}")
    if len(splits.train) == 0 or len(splits.test) == 0:
        raise DataError(f"data set {name!r} has an empty split "
                        f"(train {len(splits.train)}, test {len(splits.test)})")
    return splits
