"""Deterministic synthetic ImageNet-like images: real-looking sizes, smooth content, from a seed.

Image ``i`` of seed ``s`` is always the same pixels, so large synthetic sets need not be stored:
the preprocess step regenerates them.
"""

from __future__ import annotations

import numpy as np


def synthetic_image(seed: int, index: int) -> np.ndarray:
    """An RGB uint8 image (H, W, 3) with ImageNet-like size (short side 333..500)."""
    rng = np.random.default_rng([seed, index])
    h, w = (int(v) for v in rng.integers(333, 501, size=2))
    # Low-resolution colour noise blown up bilinearly: blobs and gradients, like photos at a glance.
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    grid = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.float32)
    ys = np.linspace(0, gh - 1, h, dtype=np.float32)
    xs = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, gh - 1), np.minimum(x0 + 1, gw - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    img = top * (1 - fy) + bottom * fy
    img += rng.normal(0, 8, size=img.shape).astype(np.float32)  # texture
    return np.clip(img, 0, 255).astype(np.uint8)
