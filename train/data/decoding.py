"""Image files decoded at the size a transform needs (reduced-size JPEG decoding).

A JPEG can be decoded directly at 1/2, 1/4 or 1/8 of its size: libjpeg scales
the 8x8 DCT blocks (PIL's ``Image.draft``), which costs a fraction of a full
decode. The ImageNet transforms (``train/data/host_augment.py``) throw most of a photo's
pixels away (a random-resized crop to 224, or a resize of the shorter side to
256), so they ask for the largest reduction that still leaves at least the
resolution they need.

An :class:`EncodedImage` is a file's bytes plus its full size, read from the
header without decoding; the transform draws its crop box in full-size
coordinates and then decodes. Other formats (PNG, ...) and images too small
for a reduction are decoded at full size, exactly as PIL decodes them
without a draft.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from train.errors import DataError

REDUCTIONS = (8, 4, 2, 1)   # the scale denominators libjpeg's DCT scaling offers


def broken_message(path: str, reason: str) -> str:
    """The error of a file that does not decode (one line, with the way out)."""
    return (f"broken image {path}: {reason} (fix or remove it, or set "
            f"--config.dataset.skip_broken=True to skip such files)")


def to_rgb(image) -> np.ndarray:
    """A PIL image -> ``uint8 [H, W, 3]``."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """An image file not yet decoded: its bytes, full ``height`` x ``width``
    (from the header) and whether it is a JPEG (reducible on decode)."""

    path: str
    data: bytes = dataclasses.field(repr=False)
    height: int
    width: int
    is_jpeg: bool

    @classmethod
    def read(cls, path: str) -> EncodedImage:
        """Reads the file and parses its header; PIL's errors pass through
        (the caller names the file)."""
        from PIL import Image

        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            is_jpeg = image.format == "JPEG"
        return cls(path, data, height, width, is_jpeg)

    def decode(self, reduction: int = 1) -> tuple[np.ndarray, int]:
        """Decodes at ``1 / f`` of the full size, ``f`` the largest of
        1, 2, 4, 8 not above ``reduction`` (1 for a non-JPEG).

        Returns ``(uint8 [ceil(H / f), ceil(W / f), 3], f)``: pixel ``(i, j)``
        covers full-size pixels ``[i f, (i + 1) f) x [j f, (j + 1) f)``, so a
        full-size coordinate ``x`` is ``x / f`` in the result. Raises
        ``DataError`` naming the file if it does not decode.
        """
        from PIL import Image

        factor = reduction_for(self.height, self.width, reduction) if self.is_jpeg else 1
        try:
            with Image.open(io.BytesIO(self.data)) as image:
                if factor > 1:
                    # PIL picks the largest reduction that keeps at least the
                    # requested size; (W // f, H // f) gives exactly f.
                    drafted = image.draft("RGB", (self.width // factor, self.height // factor))
                    factor = 1 if drafted is None else round(self.width / drafted[1][2])
                return to_rgb(image), factor
        except Exception as error:   # PIL raises OSError, SyntaxError, ValueError, ...
            raise DataError(broken_message(
                self.path, f"cannot decode ({str(error) or type(error).__name__})")) from error


def reduction_for(height: int, width: int, reduction: int) -> int:
    """The largest of 8, 4, 2, 1 that is at most ``reduction`` and leaves
    both sides of a ``height`` x ``width`` image at least 1 pixel."""
    return next(f for f in REDUCTIONS if f <= max(1, reduction) and f <= min(height, width))


def full_size(image) -> tuple[int, int]:
    """``(H, W)`` of a ``uint8 [H, W, ...]`` array or an :class:`EncodedImage`."""
    if isinstance(image, EncodedImage):
        return image.height, image.width
    return tuple(np.shape(image)[:2])


def check_decodes(image) -> None:
    """Raises ``DataError`` if an :class:`EncodedImage` does not decode (tried
    at the largest reduction: the whole compressed stream is still read);
    an array passes."""
    if isinstance(image, EncodedImage):
        image.decode(REDUCTIONS[0])


def pixels(image, reduction: int = 1) -> tuple[np.ndarray, int]:
    """``(array, f)``: an array as it is (``f = 1``), or an :class:`EncodedImage`
    decoded with :meth:`EncodedImage.decode`."""
    if isinstance(image, EncodedImage):
        return image.decode(reduction)
    return image, 1
