"""Stand-ins for the proving ground's sources (no apt, no network, no Fashion-MNIST files):
28x28 grey items shaped like product photos and random background photos."""

import cv2
import numpy as np

import lgdkd.data.proving_ground as pg
from lgdkd.data.backgrounds import Background


def make_items(count=30, seed=0):
    """``count`` 28x28 grey items (ellipses and rectangles with texture), labels 0-9."""
    rng = np.random.RandomState(seed)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for k in range(count):
        h, w = rng.randint(6, 13), rng.randint(6, 13)
        if k % 2:
            cv2.ellipse(images[k], (14, 14), (w, h), 0, 0, 360, int(rng.randint(60, 256)), -1)
        else:
            cv2.rectangle(images[k], (14 - w, 14 - h), (14 + w, 14 + h), 200, -1)
        images[k] = np.where(images[k] > 0, images[k] - rng.randint(0, 40, (28, 28)), 0)
    labels = np.arange(count) % 10
    return {"train": (images[:20], labels[:20]), "t10k": (images[20:], labels[20:])}


def make_backgrounds():
    rng = np.random.RandomState(1)
    out = {}
    for split in pg.PROVING_GROUND_SPLITS:
        out[split] = [
            Background(f"{split}-{group}", group, rng.randint(0, 256, (80, 96, 3)).astype(np.uint8))
            for group in ("aerial", "photo")
        ]
    return out
