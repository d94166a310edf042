"""Whitening filters from data: the fixed first layer of airbench-style networks.

The ``k x k`` patches of the training images (``p = k*k*C`` values each,
in the kernel's ``[kh, kw, C]`` order) have the second-moment matrix
``S = E[x x^T]`` (``[p, p]``, uncentred). With its eigen-decomposition
``S = V diag(e) V^T``, the filters ``V[:, j] / sqrt(e_j + eps)`` map a patch
to coordinates of unit second moment, decorrelated; the kernel holds them
in order of decreasing ``e`` and then their negatives, ``2p`` output
channels, so that a one-sided activation (QCFS, ReLU) keeps both signs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["patches", "whitening_kernel"]


def patches(images: np.ndarray, size: int) -> np.ndarray:
    """Every ``size x size`` patch (stride 1, no padding) of ``images
    [N, H, W, C]``, flattened in ``[kh, kw, C]`` order: ``float64 [M, size*size*C]``."""
    images = np.asarray(images, np.float64)
    n, h, w, c = images.shape
    if size < 1 or size > min(h, w):
        raise ValueError(f"patch size {size} does not fit {h}x{w} images")
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
    # windows: [N, H', W', C, kh, kw] -> [N, H', W', kh, kw, C]
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * c)


def whitening_kernel(images: np.ndarray, size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """The whitening convolution kernel of ``images [N, H, W, C]`` (already
    normalised as the network sees them): ``float32 [size, size, C, 2*size*size*C]``.

    Output channel ``j < p`` is eigenvector ``j`` of the patches' second
    moment (eigenvalues in decreasing order) divided by ``sqrt(e_j + eps)``;
    channel ``p + j`` is its negative. Computed in float64.
    """
    x = patches(images, size)
    moment = x.T @ x / len(x)
    eigenvalues, eigenvectors = np.linalg.eigh(moment)          # ascending
    order = np.argsort(eigenvalues)[::-1]
    filters = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    filters = np.concatenate([filters, -filters], axis=1)       # [p, 2p]
    c = images.shape[-1]
    return filters.reshape(size, size, c, -1).astype(np.float32)
