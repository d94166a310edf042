"""Per-example data augmentation in NumPy + PIL (the COS reference transforms).

Every function here is pure: images come in and go out as NumPy arrays, and every
random decision is drawn from the `np.random.Generator` passed in (never the
`random` module or NumPy's global state), so a Grain `random_map` over these
functions is deterministic and resumable.

Conventions:
  * A *uint8 image* is `uint8 [H, W, 3]`. Entry points also accept grayscale
    `[H, W]` / `[H, W, 1]` and replicate it to 3 channels (`as_rgb`).
  * The ImageNet geometry (`random_resized_crop`, `resize_center_crop` and the
    transforms built on them) also takes an undecoded `EncodedImage`
    (`train/data/decoding.py`) and decodes a JPEG only at the size it needs.
  * A *float image* is `float32 [H, W, 3]`, already normalised (`normalize`).

Training transforms (as in the COS reference code):
  * CIFAR: `cifar_train` = random crop (zero padding 4) -> horizontal flip ->
    AutoAugment CIFAR-10 policy -> normalise -> Cutout.
  * ImageNet: `imagenet_train` = Inception random-resized crop -> flip -> normalise;
    `imagenet_eval` = resize shorter side to 256 -> centre crop 224 -> normalise.

AutoAugment (Cubuk et al., CVPR 2019) follows the widely used PyTorch port that the
COS code uses: shear/translate/enhance magnitudes get a random sign, **rotation
does not** (always counter-clockwise) unless `rotate_random_sign=True` (the
original TensorFlow implementation flips the rotation sign at random); shears
are about the top-left corner; translations use nearest resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from cosjax.checks import check_int
from train.data.decoding import EncodedImage, full_size
from train.data.decoding import pixels as decoded_pixels

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FILL_GRAY = (128, 128, 128)

# Magnitude of each AutoAugment operation at levels 0..9.
AUTOAUGMENT_MAGNITUDES: dict[str, np.ndarray] = {
    "shearX": np.linspace(0.0, 0.3, 10),
    "shearY": np.linspace(0.0, 0.3, 10),
    "translateX": np.linspace(0.0, 150 / 331, 10),  # fraction of the width
    "translateY": np.linspace(0.0, 150 / 331, 10),  # fraction of the height
    "rotate": np.linspace(0.0, 30.0, 10),  # degrees
    "color": np.linspace(0.0, 0.9, 10),  # enhance factor 1 +- magnitude
    "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10)).astype(np.int64),  # bits kept
    "solarize": np.linspace(256, 0, 10),  # pixels >= threshold are inverted
    "autocontrast": np.zeros(10),
    "equalize": np.zeros(10),
    "invert": np.zeros(10),
}
AUTOAUGMENT_OPS: tuple[str, ...] = tuple(AUTOAUGMENT_MAGNITUDES)

# The 25 CIFAR-10 sub-policies of AutoAugment (paper appendix, Table 7):
# each is two (probability, operation, magnitude level) steps applied in order.
CIFAR10_POLICY: tuple[tuple[tuple[float, str, int], tuple[float, str, int]], ...] = (
    ((0.1, "invert", 7), (0.2, "contrast", 6)),
    ((0.7, "rotate", 2), (0.3, "translateX", 9)),
    ((0.8, "sharpness", 1), (0.9, "sharpness", 3)),
    ((0.5, "shearY", 8), (0.7, "translateY", 9)),
    ((0.5, "autocontrast", 8), (0.9, "equalize", 2)),
    ((0.2, "shearY", 7), (0.3, "posterize", 7)),
    ((0.4, "color", 3), (0.6, "brightness", 7)),
    ((0.3, "sharpness", 9), (0.7, "brightness", 9)),
    ((0.6, "equalize", 5), (0.5, "equalize", 1)),
    ((0.6, "contrast", 7), (0.6, "sharpness", 5)),
    ((0.7, "color", 7), (0.5, "translateX", 8)),
    ((0.3, "equalize", 7), (0.4, "autocontrast", 8)),
    ((0.4, "translateY", 3), (0.2, "sharpness", 6)),
    ((0.9, "brightness", 6), (0.2, "color", 8)),
    ((0.5, "solarize", 2), (0.0, "invert", 3)),
    ((0.2, "equalize", 0), (0.6, "autocontrast", 0)),
    ((0.2, "equalize", 8), (0.8, "equalize", 4)),
    ((0.9, "color", 9), (0.6, "equalize", 6)),
    ((0.8, "autocontrast", 4), (0.2, "solarize", 8)),
    ((0.1, "brightness", 3), (0.7, "color", 0)),
    ((0.4, "solarize", 5), (0.9, "autocontrast", 3)),
    ((0.9, "translateY", 9), (0.7, "translateY", 9)),
    ((0.9, "autocontrast", 2), (0.8, "solarize", 3)),
    ((0.8, "equalize", 8), (0.1, "invert", 3)),
    ((0.7, "translateY", 9), (0.9, "autocontrast", 1)),
)

_SIGNED_OPS = frozenset(
    {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}
)


# ----------------------------------------------------------------------------- checks


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validates a uint8 image and returns it as `uint8 [H, W, 3]`.

    Grayscale `[H, W]` or `[H, W, 1]` is replicated to 3 channels; an RGB input is
    returned as is (not copied).
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a NumPy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(
            f"image must have shape [H, W], [H, W, 1] or [H, W, 3], got {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    check_int(name, value, minimum)


def _mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    if mean_arr.shape != (3,) or std_arr.shape != (3,):
        raise ValueError(
            f"mean and std must have 3 entries each, got shapes {mean_arr.shape} and {std_arr.shape}"
        )
    if not np.all(std_arr > 0):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    return mean_arr, std_arr


# ------------------------------------------------------------------- basic transforms


def random_crop(
    image: np.ndarray, rng: np.random.Generator, size: int, padding: int = 4
) -> np.ndarray:
    """Zero-pads by `padding` on each side, then crops `size x size` uniformly.

    Like torchvision `RandomCrop(size, padding)`: the top offset is drawn first,
    then the left offset, each uniform over every valid position of the padded
    image. `image` uint8 [H, W, 3] -> uint8 [size, size, 3].
    """
    image = as_rgb(image)
    _check_rng(rng)
    _check_positive_int("size", size)
    _check_positive_int("padding", padding, minimum=0)
    h, w = image.shape[:2]
    if size > h + 2 * padding or size > w + 2 * padding:
        raise ValueError(
            f"crop size {size} is larger than the padded image {h + 2 * padding}x{w + 2 * padding}"
        )
    top = int(rng.integers(0, h + 2 * padding - size + 1))
    left = int(rng.integers(0, w + 2 * padding - size + 1))
    padded = np.zeros((h + 2 * padding, w + 2 * padding, 3), np.uint8)
    padded[padding : padding + h, padding : padding + w] = image
    return padded[top : top + size, left : left + size].copy()


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips left-right with probability 1/2. uint8 [H, W, 3] -> a new uint8 [H, W, 3]."""
    image = as_rgb(image)
    _check_rng(rng)
    if rng.random() < 0.5:
        return np.ascontiguousarray(image[:, ::-1])
    return image.copy()


def normalize(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """`(image / 255 - mean) / std` per channel, in float32.

    `image` uint8 [H, W, 3] (or grayscale) -> float32 [H, W, 3].
    """
    image = as_rgb(image)
    mean_arr, std_arr = _mean_std(mean, std)
    return (image.astype(np.float32) / np.float32(255) - mean_arr) / std_arr


def cutout(image: np.ndarray, rng: np.random.Generator, length: int) -> np.ndarray:
    """Zeroes one square hole (DeVries & Taylor 2017) in a normalised image.

    The centre `(y, x)` is a uniform pixel (`y` drawn first); the hole covers rows
    `clip(y - length//2, 0, H) : clip(y + length//2, 0, H)` and likewise columns, on
    every channel. `image` float [H, W, C] -> a new array of the same shape/dtype.
    """
    _check_rng(rng)
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"cutout expects a [H, W, C] array, got {getattr(image, 'shape', image)!r}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"cutout expects a float (normalised) image, got dtype {image.dtype}")
    _check_positive_int("length", length, minimum=0)
    h, w = image.shape[:2]
    y = int(rng.integers(h))
    x = int(rng.integers(w))
    y1, y2 = min(max(y - length // 2, 0), h), min(max(y + length // 2, 0), h)
    x1, x2 = min(max(x - length // 2, 0), w), min(max(x + length // 2, 0), w)
    out = image.copy()
    out[y1:y2, x1:x2, :] = 0
    return out


# ------------------------------------------------------------------------ AutoAugment


def _random_sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _apply_pil_op(
    img: Image.Image, op: str, magnitude: float, rng: np.random.Generator, rotate_random_sign: bool
) -> Image.Image:
    """One AutoAugment operation on an RGB PIL image; draws a sign from `rng` if signed."""
    if op in _SIGNED_OPS or (op == "rotate" and rotate_random_sign):
        magnitude = magnitude * _random_sign(rng)
    if op in _GEOMETRIC_OPS:
        return _apply_geometric_op(img, op, magnitude)
    return _apply_colour_op(img, op, magnitude)


_GEOMETRIC_OPS = ("shearX", "shearY", "translateX", "translateY", "rotate")


def _apply_geometric_op(img: Image.Image, op: str, magnitude: float) -> Image.Image:
    """Shear, translate or rotate by a signed ``magnitude`` (gray fill)."""
    w, h = img.size
    if op == "shearX":  # output (x, y) samples input (x + m*y, y)
        return img.transform(
            img.size, Image.Transform.AFFINE, (1, magnitude, 0, 0, 1, 0),
            Image.Resampling.BICUBIC, fillcolor=FILL_GRAY,
        )
    if op == "shearY":
        return img.transform(
            img.size, Image.Transform.AFFINE, (1, 0, 0, magnitude, 1, 0),
            Image.Resampling.BICUBIC, fillcolor=FILL_GRAY,
        )
    if op == "translateX":  # output x samples input x + m*W (nearest)
        return img.transform(
            img.size, Image.Transform.AFFINE, (1, 0, magnitude * w, 0, 1, 0),
            Image.Resampling.NEAREST, fillcolor=FILL_GRAY,
        )
    if op == "translateY":
        return img.transform(
            img.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, magnitude * h),
            Image.Resampling.NEAREST, fillcolor=FILL_GRAY,
        )
    # rotate: counter-clockwise about the centre, nearest, gray corners
    return img.rotate(magnitude, resample=Image.Resampling.NEAREST, fillcolor=FILL_GRAY)


def _apply_colour_op(img: Image.Image, op: str, magnitude: float) -> Image.Image:
    """The colour and histogram operations of AutoAugment."""
    if op == "color":
        return ImageEnhance.Color(img).enhance(1 + magnitude)
    if op == "contrast":
        return ImageEnhance.Contrast(img).enhance(1 + magnitude)
    if op == "sharpness":
        return ImageEnhance.Sharpness(img).enhance(1 + magnitude)
    if op == "brightness":
        return ImageEnhance.Brightness(img).enhance(1 + magnitude)
    if op == "posterize":
        return ImageOps.posterize(img, int(magnitude))
    if op == "solarize":
        return ImageOps.solarize(img, magnitude)
    if op == "autocontrast":
        return ImageOps.autocontrast(img)
    if op == "equalize":
        return ImageOps.equalize(img)
    if op == "invert":
        return ImageOps.invert(img)
    raise ValueError(f"unknown AutoAugment operation {op!r}; expected one of {AUTOAUGMENT_OPS}")


def _check_op(op: str, level: int) -> None:
    if op not in AUTOAUGMENT_MAGNITUDES:
        raise ValueError(f"unknown AutoAugment operation {op!r}; expected one of {AUTOAUGMENT_OPS}")
    check_int("AutoAugment magnitude level", level, 0, 9)


def apply_autoaugment_op(
    image: np.ndarray,
    op: str,
    level: int,
    rng: np.random.Generator,
    *,
    rotate_random_sign: bool = False,
) -> np.ndarray:
    """Applies one AutoAugment operation at magnitude `level` (0..9), unconditionally.

    Signed operations draw their sign (+ or -, probability 1/2 each) from `rng`.
    `image` uint8 [H, W, 3] -> uint8 [H, W, 3].
    """
    image = as_rgb(image)
    _check_rng(rng)
    _check_op(op, level)
    magnitude = AUTOAUGMENT_MAGNITUDES[op][level]
    out = _apply_pil_op(Image.fromarray(image), op, magnitude, rng, rotate_random_sign)
    return np.asarray(out, dtype=np.uint8)


def cifar10_autoaugment(
    image: np.ndarray, rng: np.random.Generator, *, rotate_random_sign: bool = False
) -> np.ndarray:
    """The AutoAugment CIFAR-10 policy on one image.

    Draws a sub-policy uniformly from `CIFAR10_POLICY`; then, for each of its two
    steps in order, applies the operation if `rng.random() < probability` (a signed
    operation then draws its sign). `image` uint8 [H, W, 3] -> uint8 [H, W, 3].
    """
    image = as_rgb(image)
    _check_rng(rng)
    sub_policy = CIFAR10_POLICY[int(rng.integers(len(CIFAR10_POLICY)))]
    img = None  # converted to PIL only when a step fires
    for probability, op, level in sub_policy:
        if rng.random() < probability:
            if img is None:
                img = Image.fromarray(image)
            img = _apply_pil_op(img, op, AUTOAUGMENT_MAGNITUDES[op][level], rng, rotate_random_sign)
    if img is None:
        return image.copy()
    return np.asarray(img, dtype=np.uint8)


# ------------------------------------------------------------------- ImageNet geometry


def resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Samples an Inception-style crop box `(top, left, h, w)` as torchvision does.

    Up to 10 attempts draw an area fraction uniform in `scale` and an aspect ratio
    (w/h) log-uniform in `ratio`; the first box that fits is placed uniformly.
    Otherwise falls back to a centre crop with the aspect ratio clamped to `ratio`.
    """
    _check_rng(rng)
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: np.ndarray | EncodedImage,
    rng: np.random.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception crop (`resized_crop_params`) resized to `size x size`, bilinear.

    `image` uint8 [H, W, 3] -> uint8 [size, size, 3]. An `EncodedImage`
    (`train/data/decoding.py`) is decoded after the box is drawn (in full-size
    coordinates, the same draws), at the largest reduction `f` that leaves the
    box's shorter side at least `size` pixels; the box, divided by `f`, is
    resized from the reduced image.
    """
    _check_positive_int("size", size)
    if not isinstance(image, EncodedImage):
        image = as_rgb(image)
    height, width = full_size(image)
    top, left, h, w = resized_crop_params(height, width, rng, scale, ratio)
    pixels, f = decoded_pixels(image, min(h, w) // size)
    box = (left, top, left + w, top + h) if f == 1 else (left / f, top / f, (left + w) / f, (top + h) / f)
    out = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.uint8)


def resize_center_crop(image: np.ndarray | EncodedImage, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Resizes the shorter side to `resize` (bilinear), then centre-crops `crop x crop`.

    Sizes and offsets follow torchvision `Resize(resize)` + `CenterCrop(crop)`:
    longer side `int(resize * long / short)`, offsets `round((side - crop) / 2)`.
    `image` uint8 [H, W, 3] -> uint8 [crop, crop, 3]. An `EncodedImage` is
    decoded at the largest reduction whose shorter side is still at least
    `resize`; the sizes are those of the full image.
    """
    _check_positive_int("resize", resize)
    _check_positive_int("crop", crop)
    if crop > resize:
        raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
    if not isinstance(image, EncodedImage):
        image = as_rgb(image)
    h, w = full_size(image)
    if h <= w:
        new_h, new_w = resize, int(resize * w / h)
    else:
        new_h, new_w = int(resize * h / w), resize
    pixels, f = decoded_pixels(image, min(h, w) // resize)
    box = None if f == 1 else (0, 0, w / f, h / f)
    resized = np.asarray(
        Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.BILINEAR, box=box),
        dtype=np.uint8,
    )
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return resized[top : top + crop, left : left + crop].copy()


# ------------------------------------------------------------------ composed transforms


def cifar_train(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    autoaugment: bool = True,
    cutout_length: int = 16,
    padding: int = 4,
    size: int = 32,
) -> np.ndarray:
    """CIFAR training transform: crop -> flip -> AutoAugment -> normalise -> Cutout.

    `cutout_length=0` disables Cutout; `autoaugment=False` skips AutoAugment (no
    draws are made for a disabled step). uint8 [H, W, 3] -> float32 [size, size, 3].
    """
    _check_positive_int("cutout_length", cutout_length, minimum=0)
    out = random_crop(image, rng, size, padding)
    out = random_flip(out, rng)
    if autoaugment:
        out = cifar10_autoaugment(out, rng)
    out = normalize(out, mean, std)
    if cutout_length > 0:
        out = cutout(out, rng, cutout_length)
    return out


def imagenet_train(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    size: int = 224,
) -> np.ndarray:
    """ImageNet training transform: random-resized crop -> flip -> normalise.

    uint8 [H, W, 3] (or grayscale, or an `EncodedImage`) -> float32 [size, size, 3].
    """
    out = random_resized_crop(image, rng, size)
    out = random_flip(out, rng)
    return normalize(out, mean, std)


def imagenet_eval(
    image: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int = 256,
    crop: int = 224,
) -> np.ndarray:
    """ImageNet evaluation transform: resize shorter side -> centre crop -> normalise.

    uint8 [H, W, 3] (or grayscale, or an `EncodedImage`) -> float32 [crop, crop, 3].
    """
    return normalize(resize_center_crop(image, resize, crop), mean, std)


def plain_eval(image: np.ndarray, *, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Evaluation transform for CIFAR-sized data: normalise only. -> float32 [H, W, 3]."""
    return normalize(image, mean, std)
