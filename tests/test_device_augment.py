"""Device-side crop, flip, normalisation and Cutout against a NumPy reference
of the same operations with the same random draws."""

import jax
import numpy as np
import pytest

from train.data import device_augment as dev
from train.data import host_augment as host

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def numpy_crop_flip(images, draws, padding):
    """The host pipeline's crop and flip (train/data/host_augment.py) at the given offsets."""
    out = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        top, left = int(draws.top[i]), int(draws.left[i])
        padded = np.zeros((h + 2 * padding, w + 2 * padding, 3), np.uint8)
        padded[padding:padding + h, padding:padding + w] = image
        crop = padded[top:top + h, left:left + w]
        out.append(crop[:, ::-1] if bool(draws.flip[i]) else crop)
    return np.stack(out)


def numpy_cutout_mask(draws, h, w, length):
    """The Cutout box of train/augment.cutout at the given centres."""
    mask = np.zeros((len(draws.top), h, w), bool)
    for i in range(len(draws.top)):
        y, x = int(draws.cutout_y[i]), int(draws.cutout_x[i])
        y1, y2 = min(max(y - length // 2, 0), h), min(max(y + length // 2, 0), h)
        x1, x2 = min(max(x - length // 2, 0), w), min(max(x + length // 2, 0), w)
        mask[i, y1:y2, x1:x2] = length > 0
    return mask


@pytest.mark.parametrize("padding,cutout", [(4, 16), (4, 8), (0, 0), (2, 5)])
def test_device_augmentation_equals_numpy_reference(padding, cutout):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    draws = dev.draw(dev.batch_key(7, 3), 64, 32, 32, padding)
    # Pixels moved (crop, flip) and the Cutout box: exact.
    cropped = numpy_crop_flip(images, draws, padding)
    np.testing.assert_array_equal(np.asarray(jax.jit(dev.crop_flip, static_argnums=2)(
        images, draws, padding)), cropped)
    mask = numpy_cutout_mask(draws, 32, 32, cutout)
    np.testing.assert_array_equal(np.asarray(dev.cutout_mask(draws, 32, 32, cutout)), mask)
    assert mask.any() == (cutout > 0)
    # The whole transform: zero inside the box; elsewhere the host's
    # normalisation to a few float32 ulps (XLA on CPU divides through a
    # vectorised reciprocal and may fuse multiply and subtract: 1-2 ulps).
    got = np.asarray(jax.jit(lambda x, d: dev.apply(x, d, padding=padding, cutout=cutout,
                                                    mean=MEAN, std=STD))(images, draws))
    assert got.dtype == np.float32 and got.shape == images.shape
    expected = np.stack([host.normalize(x, MEAN, STD) for x in cropped])
    expected[mask] = 0
    assert np.all(got[mask] == 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=4 * np.finfo(np.float32).eps * 4)


def test_draws_cover_their_ranges_and_depend_only_on_seed_step_and_index():
    draws = dev.draw(dev.batch_key(1, 0), 4000, 32, 32, 4)
    assert set(np.asarray(draws.top).tolist()) == set(range(9))
    assert set(np.asarray(draws.left).tolist()) == set(range(9))
    assert set(np.asarray(draws.cutout_y).tolist()) == set(range(32))
    assert 0.45 < float(np.mean(draws.flip)) < 0.55
    # Example i's draws do not depend on the batch size (or its sharding).
    small = dev.draw(dev.batch_key(1, 0), 10, 32, 32, 4)
    for a, b in zip(small, draws):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[:10])
    other_step = dev.draw(dev.batch_key(1, 1), 10, 32, 32, 4)
    other_seed = dev.draw(dev.batch_key(2, 0), 10, 32, 32, 4)
    assert not np.array_equal(np.asarray(other_step.top), np.asarray(small.top))
    assert not np.array_equal(np.asarray(other_seed.left), np.asarray(small.left))


def test_augment_is_deterministic_and_normalize_matches_host():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    key = dev.batch_key(3, 11)
    a = dev.augment(images, key, padding=4, cutout=16, mean=MEAN, std=STD)
    b = dev.augment(images, key, padding=4, cutout=16, mean=MEAN, std=STD)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(dev.normalize(images, MEAN, STD)),
                               np.stack([host.normalize(x, MEAN, STD) for x in images]),
                               rtol=0, atol=4 * np.finfo(np.float32).eps * 4)


def test_imagenet_device_transform_is_flip_and_normalise_with_the_batch_draws():
    """ImageNet recipe: the step's transform flips each example as its draw
    says (exact) and normalises like the host (a few float32 ulps), with the
    key of (seed, step); no crop, no Cutout."""
    from configs import imagenet
    from train.data import batching

    config = imagenet.get_config()
    config.dataset.device_augment = True
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8)
    apply = batching.device_transform(config)
    got = np.asarray(jax.jit(apply)(images, np.int32(9)))
    draws = dev.draw(dev.batch_key(config.seed, 9), 32, 16, 16, 0)
    flips = np.asarray(draws.flip)
    assert flips.any() and not flips.all()
    flipped = np.stack([x[:, ::-1] if f else x for x, f in zip(images, flips)])
    np.testing.assert_array_equal(np.asarray(dev.crop_flip(images, draws, 0)), flipped)
    mean, std = config.dataset.mean, config.dataset.std
    expected = np.stack([host.normalize(x, mean, std) for x in flipped])
    np.testing.assert_allclose(got, expected, rtol=0, atol=4 * np.finfo(np.float32).eps * 4)
    # A wrong flip would be far outside that tolerance.
    assert np.abs(np.stack([host.normalize(x, mean, std) for x in images]) - got).max() > 0.1
