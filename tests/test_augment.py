"""Tests for train/data/host_augment.py: exact geometry, exact pixel ops, determinism."""

import math

import numpy as np
import pytest

from train.data import host_augment as A

MEAN, STD = A.CIFAR10_MEAN, A.CIFAR10_STD


def _random_image(seed: int, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _gen(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ input checks


def test_as_rgb_replicates_grayscale():
    gray = _random_image(0, (5, 7))
    for image in (gray, gray[:, :, None]):
        rgb = A.as_rgb(image)
        assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(rgb[:, :, c], gray)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((2, 8, 8, 3), np.uint8),
        np.zeros((8,), np.uint8),
        np.zeros((0, 8, 3), np.uint8),
        [[0, 1], [2, 3]],
    ],
)
def test_bad_images_raise_value_error(bad):
    with pytest.raises(ValueError, match="image"):
        A.as_rgb(bad)
    with pytest.raises(ValueError, match="image"):
        A.cifar_train(bad, _gen(0), mean=MEAN, std=STD)


def test_bad_arguments_raise_value_error():
    image = _random_image(0)
    with pytest.raises(ValueError, match="rng"):
        A.random_flip(image, 0)
    with pytest.raises(ValueError, match="mean and std"):
        A.normalize(image, (0.5, 0.5), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="std"):
        A.normalize(image, (0.5,) * 3, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="larger than the padded"):
        A.random_crop(image, _gen(0), 41, padding=4)
    with pytest.raises(ValueError, match="unknown AutoAugment operation"):
        A.apply_autoaugment_op(image, "blur", 3, _gen(0))
    with pytest.raises(ValueError, match="level"):
        A.apply_autoaugment_op(image, "rotate", 10, _gen(0))
    with pytest.raises(ValueError, match="crop"):
        A.resize_center_crop(image, resize=32, crop=48)
    with pytest.raises(ValueError, match="float"):
        A.cutout(image, _gen(0), 8)


# ------------------------------------------------------------- crop, flip, normalise


def test_random_crop_is_exact_window_of_padded_image():
    image = _random_image(1, (32, 30, 3))
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    seen_top, seen_left = set(), set()
    for seed in range(300):
        expected_rng = _gen(seed)
        top = expected_rng.integers(0, 40 - 32 + 1)
        left = expected_rng.integers(0, 38 - 32 + 1)
        out = A.random_crop(image, _gen(seed), 32, padding=4)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, padded[top : top + 32, left : left + 32])
        seen_top.add(int(top))
        seen_left.add(int(left))
    assert seen_top == set(range(9)) and seen_left == set(range(7))


def test_random_flip_exact_and_balanced():
    image = _random_image(2, (6, 9, 3))
    flips = 0
    for seed in range(400):
        out = A.random_flip(image, _gen(seed))
        if np.array_equal(out, image[:, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(out, image)
        assert out is not image
    assert 150 < flips < 250  # Binomial(400, 1/2): mean 200, sd 10


def test_normalize_exact():
    image = _random_image(3, (4, 5, 3))
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = A.normalize(image, mean, std)
    assert out.dtype == np.float32 and out.shape == (4, 5, 3)
    expected = (image / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    ends = A.normalize(np.array([[[0, 255, 51]]], np.uint8), (0.5,) * 3, (0.5,) * 3)
    np.testing.assert_array_equal(ends, np.array([[[-1.0, 1.0, -0.6]]], np.float32))


def test_cutout_hole_position_and_size():
    h, w, length = 20, 24, 8
    image = np.random.default_rng(4).normal(size=(h, w, 3)).astype(np.float32) + 5.0
    clipped = 0
    for seed in range(100):
        expected_rng = _gen(seed)
        y, x = expected_rng.integers(h), expected_rng.integers(w)
        y1, y2 = np.clip([y - length // 2, y + length // 2], 0, h)
        x1, x2 = np.clip([x - length // 2, x + length // 2], 0, w)
        expected = image.copy()
        expected[y1:y2, x1:x2] = 0.0
        out = A.cutout(image, _gen(seed), length)
        np.testing.assert_array_equal(out, expected)
        assert (out == 0).all(axis=2).sum() == (y2 - y1) * (x2 - x1)
        clipped += (y2 - y1) * (x2 - x1) < length * length
    assert clipped > 0  # some holes were clipped at a border
    assert (image != 0).all()  # the input was not modified


# ------------------------------------------------------------------------ AutoAugment


def test_policy_table():
    assert len(A.CIFAR10_POLICY) == 25
    for sub_policy in A.CIFAR10_POLICY:
        assert len(sub_policy) == 2
        for probability, op, level in sub_policy:
            assert 0.0 <= probability <= 1.0
            assert op in A.AUTOAUGMENT_OPS
            assert isinstance(level, int) and 0 <= level <= 9
    # Table of the AutoAugment paper's appendix, CIFAR-10 policy, in order.
    paper = """
        invert 0.1 7 contrast 0.2 6 | rotate 0.7 2 translateX 0.3 9 | sharpness 0.8 1 sharpness 0.9 3
        shearY 0.5 8 translateY 0.7 9 | autocontrast 0.5 8 equalize 0.9 2 | shearY 0.2 7 posterize 0.3 7
        color 0.4 3 brightness 0.6 7 | sharpness 0.3 9 brightness 0.7 9 | equalize 0.6 5 equalize 0.5 1
        contrast 0.6 7 sharpness 0.6 5 | color 0.7 7 translateX 0.5 8 | equalize 0.3 7 autocontrast 0.4 8
        translateY 0.4 3 sharpness 0.2 6 | brightness 0.9 6 color 0.2 8 | solarize 0.5 2 invert 0.0 3
        equalize 0.2 0 autocontrast 0.6 0 | equalize 0.2 8 equalize 0.8 4 | color 0.9 9 equalize 0.6 6
        autocontrast 0.8 4 solarize 0.2 8 | brightness 0.1 3 color 0.7 0 | solarize 0.4 5 autocontrast 0.9 3
        translateY 0.9 9 translateY 0.7 9 | autocontrast 0.9 2 solarize 0.8 3 | equalize 0.8 8 invert 0.1 3
        translateY 0.7 9 autocontrast 0.9 1"""
    expected = []
    for entry in paper.replace("\n", "|").split("|"):
        if entry.strip():
            op1, p1, l1, op2, p2, l2 = entry.split()
            expected.append(((float(p1), op1, int(l1)), (float(p2), op2, int(l2))))
    assert tuple(expected) == A.CIFAR10_POLICY
    assert len(A.AUTOAUGMENT_OPS) == 14
    for op, levels in A.AUTOAUGMENT_MAGNITUDES.items():
        assert len(levels) == 10, op
    mags = A.AUTOAUGMENT_MAGNITUDES
    np.testing.assert_allclose(mags["shearX"][[0, 9]], [0.0, 0.3])
    np.testing.assert_allclose(mags["translateY"][[0, 9]], [0.0, 150 / 331])
    np.testing.assert_allclose(mags["rotate"][[0, 9]], [0.0, 30.0])
    np.testing.assert_allclose(mags["color"][[0, 9]], [0.0, 0.9])
    np.testing.assert_array_equal(mags["posterize"], [8, 8, 7, 7, 6, 6, 5, 5, 4, 4])
    np.testing.assert_allclose(mags["solarize"][[0, 1, 9]], [256.0, 256 - 256 / 9, 0.0])


def test_invert_posterize_solarize_exact():
    image = _random_image(5, (8, 8, 3))
    np.testing.assert_array_equal(A.apply_autoaugment_op(image, "invert", 3, _gen(0)), 255 - image)
    for level, bits in enumerate(A.AUTOAUGMENT_MAGNITUDES["posterize"]):
        mask = np.uint8((0xFF << (8 - int(bits))) & 0xFF)
        out = A.apply_autoaugment_op(image, "posterize", level, _gen(0))
        np.testing.assert_array_equal(out, image & mask)
    np.testing.assert_array_equal(
        A.apply_autoaugment_op(image, "posterize", 9, _gen(0)), image & 0xF0
    )
    for level, threshold in enumerate(A.AUTOAUGMENT_MAGNITUDES["solarize"]):
        out = A.apply_autoaugment_op(image, "solarize", level, _gen(0))
        np.testing.assert_array_equal(out, np.where(image >= threshold, 255 - image, image))
    np.testing.assert_array_equal(A.apply_autoaugment_op(image, "solarize", 0, _gen(0)), image)


def test_autocontrast_and_equalize_stretch_low_contrast_image():
    # 32x32: PIL's equalize leaves images with fewer than ~2*255 pixels unchanged
    image = np.random.default_rng(6).integers(100, 111, (32, 32, 3), dtype=np.uint8)
    image[0, 0], image[0, 1] = 100, 110  # every channel spans exactly 100..110
    auto = A.apply_autoaugment_op(image, "autocontrast", 0, _gen(0)).astype(int)
    assert (auto.min(axis=(0, 1)) == 0).all() and (auto.max(axis=(0, 1)) == 255).all()
    # a monotone remap: pixel order within each channel is kept
    for c in range(3):
        order = np.argsort(image[:, :, c].ravel(), kind="stable")
        assert (np.diff(auto[:, :, c].ravel()[order]) >= 0).all()
    equal = A.apply_autoaugment_op(image, "equalize", 0, _gen(0)).astype(int)
    assert (equal.max(axis=(0, 1)) - equal.min(axis=(0, 1)) > 200).all()
    assert not np.array_equal(equal, auto)


@pytest.mark.parametrize("axis", [1, 0])
def test_translate_exact_shift_with_gray_fill(axis):
    shape = (4, 331, 3) if axis == 1 else (331, 4, 3)
    op = "translateX" if axis == 1 else "translateY"
    image = _random_image(7, shape)
    signs = set()
    for seed in range(20):
        out = A.apply_autoaugment_op(image, op, 9, _gen(seed))  # 150/331 of 331 = 150 px
        sign = 1 if _gen(seed).random() < 0.5 else -1  # the op's only draw
        signs.add(sign)
        moved, src = np.moveaxis(out, axis, 0), np.moveaxis(image, axis, 0)
        if sign > 0:  # output x samples input x + 150
            np.testing.assert_array_equal(moved[:181], src[150:])
            assert (moved[181:] == 128).all()
        else:
            np.testing.assert_array_equal(moved[150:], src[:181])
            assert (moved[:150] == 128).all()
    assert signs == {1, -1}


@pytest.mark.parametrize("axis", [1, 0])
def test_shear_moves_content_along_one_axis(axis):
    op = "shearX" if axis == 1 else "shearY"
    profile = (np.arange(32) * 7 % 200 + 20).astype(np.uint8)  # never 128
    image = np.broadcast_to(
        (profile[:, None, None] if axis == 1 else profile[None, :, None]), (32, 32, 3)
    ).copy()
    corner_sides = set()
    for seed in range(12):
        out = A.apply_autoaugment_op(image, op, 9, _gen(seed))  # shear 0.3
        # constant along the sheared axis: the middle band only samples the image
        band = out[:, 10:22] if axis == 1 else out[10:22, :]
        np.testing.assert_array_equal(band, image[:, 10:22] if axis == 1 else image[10:22, :])
        # the far corner on one side falls outside the source: gray fill
        first, last = (out[31, 0], out[31, 31]) if axis == 1 else (out[0, 31], out[31, 31])
        assert ((first == 128).all()) != ((last == 128).all())
        corner_sides.add(bool((last == 128).all()))
    assert corner_sides == {True, False}
    np.testing.assert_array_equal(A.apply_autoaugment_op(image, op, 0, _gen(0)), image)


def _bright_centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(image[:, :, 0] == 255)
    return np.array([rows.mean(), cols.mean()])


def test_rotate_counter_clockwise_by_magnitude():
    image = np.zeros((33, 33, 3), np.uint8)
    image[15:18, 27:30] = 255  # a block 12 px right of the centre pixel (16, 16)
    angle = math.radians(30.0)
    ccw = np.array([16 - 12 * math.sin(angle), 16 + 12 * math.cos(angle)])
    cw = np.array([16 + 12 * math.sin(angle), 16 + 12 * math.cos(angle)])
    for seed in range(5):
        out = A.apply_autoaugment_op(image, "rotate", 9, _gen(seed))
        assert np.abs(_bright_centroid(out) - ccw).max() <= 1.0
        assert (out[0, 0] == 128).all() and (out[32, 32] == 128).all()  # gray corners
        assert (out[16, 16] == 0).all()
    directions = set()
    for seed in range(20):
        out = A.apply_autoaugment_op(image, "rotate", 9, _gen(seed), rotate_random_sign=True)
        centroid = _bright_centroid(out)
        is_ccw = np.abs(centroid - ccw).max() <= 1.0
        assert is_ccw or np.abs(centroid - cw).max() <= 1.0
        directions.add(is_ccw)
    assert directions == {True, False}
    np.testing.assert_array_equal(A.apply_autoaugment_op(image, "rotate", 0, _gen(0)), image)


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(float) @ np.array([0.299, 0.587, 0.114])


def test_enhance_ops_blend_with_their_degenerate_image():
    image = _random_image(8, (16, 16, 3))
    x = image.astype(float)
    gray = _luma(image)[:, :, None]
    degenerate = {
        "color": np.broadcast_to(gray, x.shape),
        "contrast": np.full(x.shape, np.floor(gray.mean() + 0.5)),
        "brightness": np.zeros(x.shape),
    }
    for op, base in degenerate.items():
        factors_seen = set()
        for seed in range(12):
            out = A.apply_autoaugment_op(image, op, 9, _gen(seed)).astype(float)
            matches = []
            for factor in (0.1, 1.9):  # 1 -/+ 0.9
                expected = np.clip(base + factor * (x - base), 0, 255)
                matches.append(np.abs(out - expected).max() <= 2.0)
            assert sum(matches) == 1, op
            factors_seen.add(matches.index(True))
        assert factors_seen == {0, 1}, op
        np.testing.assert_array_equal(A.apply_autoaugment_op(image, op, 0, _gen(0)), image)


def test_sharpness_changes_edges_only():
    flat = np.full((12, 12, 3), 90, np.uint8)
    np.testing.assert_array_equal(A.apply_autoaugment_op(flat, "sharpness", 9, _gen(0)), flat)
    step = flat.copy()
    step[:, 6:] = 170
    kinds = set()
    for seed in range(12):
        out = A.apply_autoaugment_op(step, "sharpness", 9, _gen(seed))
        assert not np.array_equal(out, step)
        np.testing.assert_array_equal(out[:, :4], step[:, :4])  # far from the edge
        overshoot = out.min() < 90 or out.max() > 170
        kinds.add(overshoot)  # factor 1.9 sharpens (overshoots), 0.1 blurs (stays inside)
    assert kinds == {True, False}
    np.testing.assert_array_equal(A.apply_autoaugment_op(step, "sharpness", 0, _gen(0)), step)


def test_cifar10_autoaugment_follows_policy_draws():
    image = _random_image(9)
    chosen = set()
    for seed in range(150):
        expected_rng = _gen(seed)
        index = int(expected_rng.integers(25))
        chosen.add(index)
        expected = image
        for probability, op, level in A.CIFAR10_POLICY[index]:
            if expected_rng.random() < probability:
                expected = A.apply_autoaugment_op(expected, op, level, expected_rng)
        out = A.cifar10_autoaugment(image, _gen(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        np.testing.assert_array_equal(out, expected)
    assert len(chosen) == 25


# ------------------------------------------------------------------ ImageNet geometry


@pytest.mark.parametrize("shape", [(64, 64), (48, 100), (120, 40)])
def test_resized_crop_params_within_bounds(shape):
    height, width = shape
    for seed in range(300):
        top, left, h, w = A.resized_crop_params(height, width, _gen(seed))
        assert top >= 0 and top + h <= height and h > 0
        assert left >= 0 and left + w <= width and w > 0
        assert h * w <= height * width
        assert h * w >= 0.08 * height * width * 0.7  # rounding slack on tiny boxes


def test_resized_crop_params_fallback_is_centre_crop():
    # 10x200: no box with area >= 8% and ratio <= 4/3 fits, so always the fallback
    for seed in range(5):
        assert A.resized_crop_params(10, 200, _gen(seed)) == (0, 93, 10, 13)
        assert A.resized_crop_params(200, 10, _gen(seed)) == (93, 0, 13, 10)


def test_random_resized_crop_content_and_size():
    image = _random_image(10, (50, 70, 3))
    for seed in range(20):
        top, left, h, w = A.resized_crop_params(50, 70, _gen(seed), ratio=(1.0, 1.0))
        assert h == w
        out = A.random_resized_crop(image, _gen(seed), size=w, ratio=(1.0, 1.0))
        np.testing.assert_array_equal(out, image[top : top + h, left : left + w])
    out = A.random_resized_crop(image, _gen(0), size=224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def _gradient_image(height: int, width: int) -> np.ndarray:
    xs = np.arange(width) * 255.0 / (width - 1)
    ys = np.arange(height) * 255.0 / (height - 1)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = np.round(xs)[None, :]
    image[:, :, 1] = np.round(ys)[:, None]
    return image


@pytest.mark.parametrize(
    "shape, new_hw",
    [((300, 400), (256, 341)), ((500, 300), (426, 256)), ((100, 150), (256, 384))],
)
def test_resize_center_crop_maps_centre_region(shape, new_hw):
    height, width = shape
    new_h, new_w = new_hw
    out = A.resize_center_crop(_gradient_image(height, width), resize=256, crop=224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    top, left = round((new_h - 224) / 2), round((new_w - 224) / 2)
    # output pixel (r, c) samples source position ((r + top + .5) * H / new_h - .5, ...)
    src_x = (np.arange(224) + left + 0.5) * width / new_w - 0.5
    src_y = (np.arange(224) + top + 0.5) * height / new_h - 0.5
    expected_r = src_x * 255.0 / (width - 1)
    expected_g = src_y * 255.0 / (height - 1)
    inner = slice(2, -2)  # bilinear support may touch the image border at the edges
    assert np.abs(out[inner, inner, 0] - expected_r[None, inner]).max() <= 1.5
    assert np.abs(out[inner, inner, 1] - expected_g[inner, None]).max() <= 1.5
    centre = out[112, 112, :2].astype(float)
    np.testing.assert_allclose(centre, [127.5, 127.5], atol=4.0)


# ------------------------------------------------------------------ composed transforms


def test_cifar_train_is_the_composition_in_order():
    image = _random_image(11)
    for seed in range(30):
        expected_rng = _gen(seed)
        expected = A.random_crop(image, expected_rng, 32, padding=4)
        expected = A.random_flip(expected, expected_rng)
        expected = A.cifar10_autoaugment(expected, expected_rng)
        expected = A.cutout(A.normalize(expected, MEAN, STD), expected_rng, 16)
        out = A.cifar_train(image, _gen(seed), mean=MEAN, std=STD)
        assert out.dtype == np.float32 and out.shape == (32, 32, 3)
        np.testing.assert_array_equal(out, expected)
    plain_rng = _gen(0)
    expected = A.normalize(A.random_flip(A.random_crop(image, plain_rng, 32), plain_rng), MEAN, STD)
    out = A.cifar_train(image, _gen(0), mean=MEAN, std=STD, autoaugment=False, cutout_length=0)
    np.testing.assert_array_equal(out, expected)


def test_transforms_deterministic_and_seed_dependent():
    cifar = _random_image(12)
    large = _random_image(13, (80, 96, 3))
    # (transform, least number of distinct outputs over 20 seeds)
    cases = [
        (lambda rng: A.cifar_train(cifar, rng, mean=MEAN, std=STD), 20),
        # many sub-policy steps fire with probability < 1, so outputs repeat the input
        (lambda rng: A.cifar10_autoaugment(cifar, rng), 8),
        (lambda rng: A.imagenet_train(large, rng, mean=A.IMAGENET_MEAN, std=A.IMAGENET_STD, size=40), 20),
    ]
    for fn, least_distinct in cases:
        outs = [fn(_gen(seed)) for seed in range(20)]
        np.testing.assert_array_equal(fn(_gen(3)), outs[3])
        assert len({o.tobytes() for o in outs}) >= least_distinct


def test_grayscale_accepted_everywhere():
    gray = _random_image(14, (32, 32))
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    for image in (gray, gray[:, :, None]):
        np.testing.assert_array_equal(
            A.cifar_train(image, _gen(1), mean=MEAN, std=STD),
            A.cifar_train(rgb, _gen(1), mean=MEAN, std=STD),
        )
        np.testing.assert_array_equal(
            A.plain_eval(image, mean=MEAN, std=STD), A.plain_eval(rgb, mean=MEAN, std=STD)
        )
    big_gray = _random_image(15, (60, 90))
    out = A.imagenet_eval(big_gray, mean=A.IMAGENET_MEAN, std=A.IMAGENET_STD, resize=48, crop=40)
    assert out.shape == (40, 40, 3) and out.dtype == np.float32
    out = A.imagenet_train(big_gray, _gen(0), mean=A.IMAGENET_MEAN, std=A.IMAGENET_STD, size=40)
    assert out.shape == (40, 40, 3) and out.dtype == np.float32


def test_constants():
    np.testing.assert_allclose(A.CIFAR100_MEAN, np.array([129.3, 124.1, 112.4]) / 255)
    np.testing.assert_allclose(A.CIFAR100_STD, np.array([68.2, 65.4, 70.4]) / 255)
    assert A.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert A.CIFAR10_STD == (0.2023, 0.1994, 0.2010)
    assert A.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert A.IMAGENET_STD == (0.229, 0.224, 0.225)
