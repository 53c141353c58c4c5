"""Images of shapes with a class per pixel: the generated data behind the `shapes` set.

Each image is a noisy grey background with a few filled rectangles and discs, all drawn
with the same kind of random brightness, so a pixel's class (background, rectangle, disc)
cannot be read from its own value: a model has to look at its neighbourhood, which is
what a segmentation network (a U-Net) is for. Pure NumPy, made from a seed.
"""

from __future__ import annotations

import numpy as np

SUMMARY = ("images [1, size, size] of rectangles and discs -> a class per pixel [size, size] "
           "(background, rectangle, disc; classes = 2: background or shape)")
CLASS_NAMES = {2: ("background", "shape"), 3: ("background", "rectangle", "disc")}


def draw_shapes(rng: np.random.Generator, n: int, size: int, classes: int,
                per_image: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [n, 1, size, size], masks int64 [n, size, size]).

    A later shape covers an earlier one where they overlap, in the image and the mask alike.
    Shapes are at least a quarter of the image wide (two pixels at the least), so a small
    image still holds recognisable ones.
    """
    rows, cols = np.mgrid[0:size, 0:size]
    images = rng.normal(0.0, 0.15, size=(n, size, size))
    masks = np.zeros((n, size, size), dtype=np.int64)
    smallest = max(2, size // 4)
    for i in range(n):
        for _ in range(int(rng.integers(1, per_image + 1))):
            extent = int(rng.integers(smallest, max(smallest, size // 2) + 1))
            top, left = rng.integers(0, size - extent + 1, size=2)
            if rng.random() < 0.5:
                inside = ((rows >= top) & (rows < top + extent)
                          & (cols >= left) & (cols < left + extent))
                kind = 1
            else:
                radius = extent / 2
                inside = ((rows + 0.5 - top - radius) ** 2
                          + (cols + 0.5 - left - radius) ** 2) <= radius ** 2
                kind = 2
            masks[i][inside] = kind if classes == 3 else 1
            images[i][inside] = rng.uniform(0.6, 1.0) + rng.normal(0.0, 0.15, inside.sum())
    return images[:, None].astype(np.float32), masks
