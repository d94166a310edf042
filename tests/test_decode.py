"""Reduced-size JPEG decoding for the ImageNet transforms (train/data/decoding.py):
the same crop draws as a full decode, a result close to it, a decode that is
really smaller, and no change where no reduction applies."""

import numpy as np
import pytest
from PIL import Image

from benchmarks.jpeg_decode import photo
from configs import imagenet
from train.data import host_augment, sources
from train.data.decoding import EncodedImage
from train.errors import DataError

MEAN, STD = host_augment.IMAGENET_MEAN, host_augment.IMAGENET_STD


def jpeg(tmp_path, height, width, seed=0, name=None):
    """Writes a synthetic JPEG; returns (EncodedImage, its full decode uint8 [H, W, 3])."""
    path = tmp_path / (name or f"{height}x{width}_{seed}.jpg")
    Image.fromarray(photo(height, width, seed)).save(path, quality=90)
    with Image.open(path) as image:
        full = np.asarray(image.convert("RGB"))
    return EncodedImage.read(str(path)), full


@pytest.fixture
def decodes(monkeypatch):
    """Records ``(reduction asked, decoded shape, factor)`` of every decode."""
    calls = []
    original = EncodedImage.decode

    def spy(self, reduction=1):
        pixels, factor = original(self, reduction)
        calls.append((reduction, pixels.shape, factor))
        return pixels, factor

    monkeypatch.setattr(EncodedImage, "decode", spy)
    return calls


def test_the_header_gives_the_full_size_and_a_draft_decode_is_smaller(tmp_path):
    encoded, full = jpeg(tmp_path, 600, 800)
    assert (encoded.height, encoded.width, encoded.is_jpeg) == (600, 800, True)
    for reduction, want in [(1, (600, 800, 3)), (2, (300, 400, 3)), (3, (300, 400, 3)),
                            (4, (150, 200, 3)), (8, (75, 100, 3)), (100, (75, 100, 3))]:
        pixels, factor = encoded.decode(reduction)
        assert pixels.shape == want and factor == 800 // want[1] and pixels.dtype == np.uint8
    np.testing.assert_array_equal(encoded.decode(1)[0], full)
    odd, _ = jpeg(tmp_path, 301, 403)               # ceil(301 / 2) = 151 rows
    assert odd.decode(2)[0].shape == (151, 202, 3) and odd.decode(2)[1] == 2


def test_crop_box_and_draws_are_those_of_the_full_decode(tmp_path, monkeypatch, decodes):
    """The box is drawn in full-size coordinates with the same draws, and the
    generator is left in the same state (flip and later draws unchanged)."""
    encoded, full = jpeg(tmp_path, 600, 800)
    boxes = []
    draw = host_augment.resized_crop_params
    monkeypatch.setattr(host_augment, "resized_crop_params",
                        lambda *a, **k: boxes.append(draw(*a, **k)) or boxes[-1])
    for seed in range(12):
        rngs = [np.random.default_rng(seed) for _ in range(3)]
        host_augment.random_resized_crop(full, rngs[0], 224)
        host_augment.random_resized_crop(encoded, rngs[1], 224)
        assert boxes[-1] == boxes[-2] == draw(600, 800, rngs[2])
        assert rngs[0].bit_generator.state == rngs[1].bit_generator.state == rngs[2].bit_generator.state
    # The draft decodes asked for the largest reduction the box allows.
    assert [r for r, _, _ in decodes] == [min(b[2], b[3]) // 224 for b in boxes[1::2]]


def test_reduced_decode_is_close_to_the_full_decode(tmp_path, decodes):
    """The ImageNet crops from a reduced decode against the same crops from a
    full decode, on 800x600 photo-like JPEGs. They differ by interpolation
    error only (libjpeg's DCT scaling averages 2x2 blocks; the full path
    filters the full image in PIL's resize): measured mean |difference| of
    0.29 (at most 0.53) grey levels for train crops and 0.52-0.54 for eval,
    out of 255. Bound: 1.5, about 3x the largest measured. A box not
    scaled to the reduced image, or a reduction that drops resolution,
    gives differences of tens of grey levels."""
    for seed in range(2):
        encoded, full = jpeg(tmp_path, 600, 800, seed)
        reduced = 0
        for k in range(10):
            want = host_augment.random_resized_crop(full, np.random.default_rng(k), 224)
            got = host_augment.random_resized_crop(encoded, np.random.default_rng(k), 224)
            assert got.shape == want.shape == (224, 224, 3) and got.dtype == np.uint8
            assert np.abs(got.astype(int) - want).mean() < 1.5
            reduced += decodes[-1][2] > 1
        assert reduced >= 2, "no crop was decoded at reduced size"
        want = host_augment.resize_center_crop(full)
        got = host_augment.resize_center_crop(encoded)
        assert decodes[-1] == (2, (300, 400, 3), 2)     # shorter side 600 -> 300 >= 256
        assert got.shape == want.shape == (224, 224, 3)
        assert np.abs(got.astype(int) - want).mean() < 1.5


def test_eval_takes_the_largest_reduction_keeping_the_shorter_side(tmp_path, decodes):
    encoded, full = jpeg(tmp_path, 1200, 1600)
    got = host_augment.imagenet_eval(encoded, mean=MEAN, std=STD)
    assert decodes == [(4, (300, 400, 3), 4)]        # 1200 / 4 = 300 >= 256; / 8 = 150 is not
    want = host_augment.imagenet_eval(full, mean=MEAN, std=STD)
    assert np.abs(got - want).mean() * 255 * min(STD) < 1.5


@pytest.mark.parametrize("height,width,size,resize", [(32, 32, 24, 28), (375, 500, 224, 256)])
def test_no_reduction_means_bitwise_the_full_decode(tmp_path, decodes, height, width, size, resize):
    """Where no reduction applies (CIFAR-size JPEGs; ImageNet's typical
    500x375 at crop 224, whose boxes are never 448 pixels on their shorter
    side, and whose shorter side is below 2 x 256), the undecoded path gives
    exactly the full decode's results."""
    encoded, full = jpeg(tmp_path, height, width)
    for k in range(8):
        np.testing.assert_array_equal(
            host_augment.imagenet_train(encoded, np.random.default_rng(k), mean=MEAN, std=STD, size=size),
            host_augment.imagenet_train(full, np.random.default_rng(k), mean=MEAN, std=STD, size=size))
    np.testing.assert_array_equal(
        host_augment.imagenet_eval(encoded, mean=MEAN, std=STD, resize=resize, crop=size),
        host_augment.imagenet_eval(full, mean=MEAN, std=STD, resize=resize, crop=size))
    assert decodes and all(f == 1 for _, _, f in decodes)


def write_folder(root, make):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            make(root / split / c)


def test_image_folder_keeps_jpegs_undecoded_only_for_the_imagenet_recipe(tmp_path):
    def make(directory):
        Image.fromarray(photo(40, 40, 0)).save(directory / "0.jpg")
        Image.fromarray(photo(40, 40, 1)).save(directory / "1.png")

    write_folder(tmp_path, make)
    config = imagenet.get_config()
    config.dataset.name, config.dataset.root = "image_folder", str(tmp_path)
    kinds = lambda splits: [type(splits.train[i]["image"]).__name__ for i in range(2)]
    assert kinds(sources.load_splits(config)) == ["EncodedImage", "ndarray"]   # a PNG is decoded
    config.dataset.jpeg_draft = False
    assert kinds(sources.load_splits(config)) == ["ndarray", "ndarray"]
    config.dataset.jpeg_draft, config.dataset.skip_broken = True, True
    assert kinds(sources.load_splits(config)) == ["ndarray", "ndarray"]
    config.dataset.skip_broken, config.dataset.augment, config.dataset.image_size = False, "cifar", 40
    assert kinds(sources.load_splits(config)) == ["ndarray", "ndarray"]     # the CIFAR recipe: arrays


def test_a_truncated_jpeg_is_named_when_decoded(tmp_path):
    """The header parses, so the source passes it on; the decode (in the
    transform, and in validation and ``verify``) names the file."""
    from train.validate import validate_data

    def make(directory):
        for i in range(2):
            Image.fromarray(photo(40, 40, i)).save(directory / f"{i}.jpg", quality=90)

    write_folder(tmp_path, make)
    broken = tmp_path / "train" / "b" / "1.jpg"
    broken.write_bytes(broken.read_bytes()[:-300])      # the header and part of the data
    config = imagenet.get_config()
    config.dataset.name, config.dataset.root = "image_folder", str(tmp_path)
    config.optim.batch_size = 2
    splits = sources.load_splits(config)
    image = splits.train[3]["image"]
    assert isinstance(image, EncodedImage)
    with pytest.raises(DataError, match=f"broken image {broken}: cannot decode"):
        host_augment.imagenet_train(image, np.random.default_rng(0), mean=MEAN, std=STD, size=16)
    with pytest.raises(DataError, match=f"broken image {broken}"):
        validate_data(config, splits)
    with pytest.raises(DataError, match=f"broken image {broken}"):
        splits.train.verify()
