"""Pasting object photos into background photos, in integer arithmetic only.

The image operations of the proving-ground set (:mod:`lgdkd.data.proving_ground`). Every
step is exact integer arithmetic on uint8 / int64 numpy arrays and every random draw is an
integer of ``numpy.random.RandomState`` (whose streams numpy keeps stable across versions),
so that the same inputs give the same pixels on any machine and with any numpy, OpenCV or
BLAS:

- :func:`resize_u8`: bilinear resampling with half-pixel centres and 11-bit fixed-point
  weights (OpenCV's ``INTER_LINEAR`` convention, written out in numpy);
- :func:`compose_image`: alpha compositing ``(bg * (255 - a) + fg * a + 127) // 255``;
- :func:`encode_png`: a PNG writer (Paeth filter on every row, ``zlib`` level 6).

One object, from its 28x28 grey item photo: the item is cut to the tight box of its pixels
>= :data:`ITEM_THRESHOLD`, resized so that its longer side is the drawn scale (aspect kept),
flipped left-right with probability 1/2, tinted with a random colour (independent of the
class) and pasted with alpha ``min(255, 8 * intensity)``. Its mask is the set of pixels with
alpha >= :data:`MASK_ALPHA` not covered by the mask of an object pasted later; its box is the
tight box of that mask (integer pixel edges) and its area the mask's pixel count.
"""

import struct
import zlib
from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = [
    "ALPHA_GAIN",
    "MASK_ALPHA",
    "ProvingGroundOptions",
    "compose_image",
    "encode_png",
    "resize_u8",
    "tight_box",
]

ALPHA_GAIN = 8  # alpha = min(255, ALPHA_GAIN * item intensity)
MASK_ALPHA = 128  # a pixel belongs to the object's mask from this alpha on
ITEM_THRESHOLD = MASK_ALPHA // ALPHA_GAIN  # the same threshold on the item's intensity
TINT_MIN = 48  # each channel of the tint is drawn in [TINT_MIN, 255]
PLACEMENT_TRIES = 100  # scale + position draws per object before it is left out
_FRAC_BITS = 11


@dataclass(frozen=True)
class ProvingGroundOptions:
    """What a proving-ground build depends on, besides its items and backgrounds.

    sizes: images of (train, dev, test). seed: every random draw derives from it.
    image_size: side of the square images, px. objects: (min, max) objects drawn per image,
    uniform. scale: (min, max) longer side of a pasted item in px, uniform.
    max_iou_percent: any two boxes of an image have IoU below this (percent).
    min_visible_percent: each object keeps at least this share of its mask visible.
    """

    sizes: Tuple[int, int, int] = (2000, 200, 1000)
    seed: int = 0
    image_size: int = 256
    objects: Tuple[int, int] = (4, 10)
    scale: Tuple[int, int] = (16, 80)
    max_iou_percent: int = 30
    min_visible_percent: int = 80

    def to_json(self):
        """The options as a json-ready dict (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def resize_u8(image, out_h, out_w):
    """Bilinear resize of a 2-D uint8 array (half-pixel centres, edges replicated).

    Exact integer arithmetic: each output pixel is the 11-bit fixed-point bilinear mix of
    its four neighbours, rounded half up.
    """
    scale = 1 << _FRAC_BITS

    def taps(n_in, n_out):
        i = np.arange(n_out, dtype=np.int64)
        pos = ((2 * i + 1) * n_in - n_out) * scale // (2 * n_out)
        pos = np.clip(pos, 0, (n_in - 1) * scale)
        i0 = pos >> _FRAC_BITS
        return i0, np.minimum(i0 + 1, n_in - 1), pos - (i0 << _FRAC_BITS)

    x = image.astype(np.int64)
    c0, c1, fx = taps(x.shape[1], out_w)
    r0, r1, fy = taps(x.shape[0], out_h)
    rows = x[:, c0] * (scale - fx) + x[:, c1] * fx
    out = rows[r0] * (scale - fy)[:, None] + rows[r1] * fy[:, None]
    return ((out + (1 << (2 * _FRAC_BITS - 1))) >> (2 * _FRAC_BITS)).astype(np.uint8)


def encode_png(rgb):
    """PNG bytes of an (H, W, 3) uint8 RGB image: 8-bit truecolour, Paeth filter on every
    row, zlib level 6. The pixels are exact; the bytes depend only on the zlib library."""
    h, w, _ = rgb.shape
    raw = rgb.reshape(h, w * 3).astype(np.int16)
    a = np.zeros_like(raw)
    a[:, 3:] = raw[:, :-3]
    b = np.zeros_like(raw)
    b[1:] = raw[:-1]
    c = np.zeros_like(raw)
    c[1:, 3:] = raw[:-1, :-3]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    rows = np.empty((h, w * 3 + 1), dtype=np.uint8)
    rows[:, 0] = 4  # Paeth
    rows[:, 1:] = (raw - pred) & 0xFF

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def tight_box(mask):
    """``(x0, y0, x1, y1)`` (pixel edges, x1/y1 exclusive) of a boolean mask, or None."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _iou_below(b1, b2, percent):
    """IoU(b1, b2) < percent / 100, exactly (integer boxes)."""
    iw = min(b1[2], b2[2]) - max(b1[0], b2[0])
    ih = min(b1[3], b2[3]) - max(b1[1], b2[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (b1[2] - b1[0]) * (b1[3] - b1[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter
    return 100 * inter < percent * union


def _item_patch(item, long_side, flip):
    """The item cut to its tight box, resized to ``long_side`` (aspect kept), maybe flipped."""
    box = tight_box(item >= ITEM_THRESHOLD)
    if box is None:
        return None
    crop = item[box[1] : box[3], box[0] : box[2]]
    ch, cw = crop.shape
    longest = max(ch, cw)
    h = max(1, (2 * ch * long_side + longest) // (2 * longest))
    w = max(1, (2 * cw * long_side + longest) // (2 * longest))
    patch = resize_u8(crop, h, w)
    return patch[:, ::-1] if flip else patch


def compose_image(rng, background, items, options):
    """Paste ``items`` one after the other into a copy of ``background``.

    For each item: a tint (3 draws) and a flip, then up to :data:`PLACEMENT_TRIES` draws of
    a scale and a position that keep the whole item inside the image, every pair of boxes
    below ``options.max_iou_percent`` IoU and every object with at least
    ``options.min_visible_percent`` of its mask visible. An item that finds no place is left
    out.

    Args:
        rng: ``numpy.random.RandomState``.
        background: (H, W, 3) uint8 image (BGR).
        items: list of (28x28 uint8 item, label).

    Returns:
        (image (H, W, 3) uint8, objects): one dict per pasted item, in pasting order, with
        ``index`` (position in ``items``), ``label``, ``box`` (x0, y0, x1, y1), ``area``,
        ``mask`` (H, W) bool, ``scale``, ``flip``, ``tint`` (B, G, R). Items that found no
        place have no entry.
    """
    height, width = background.shape[:2]
    canvas = background.astype(np.int64)
    objects = []
    for index, (item, label) in enumerate(items):
        tint = rng.randint(TINT_MIN, 256, size=3, dtype=np.int64)
        flip = int(rng.randint(2, dtype=np.int64))
        for _ in range(PLACEMENT_TRIES):
            scale = int(rng.randint(options.scale[0], options.scale[1] + 1, dtype=np.int64))
            patch = _item_patch(item, scale, flip)
            if patch is None or patch.shape[0] > height or patch.shape[1] > width:
                break
            h, w = patch.shape
            y = int(rng.randint(height - h + 1, dtype=np.int64))
            x = int(rng.randint(width - w + 1, dtype=np.int64))
            alpha = np.minimum(patch.astype(np.int64) * ALPHA_GAIN, 255)
            mask = np.zeros((height, width), dtype=bool)
            mask[y : y + h, x : x + w] = alpha >= MASK_ALPHA
            if not mask.any():  # a faint item shrunk below the mask threshold
                continue
            placed = _try_place(objects, mask, options)
            if placed is None:
                continue
            for obj, visible, box in placed:
                obj["mask"], obj["box"] = visible, box
            shade = patch.astype(np.int64) * 255 // max(int(patch.max()), 1)
            fg = (shade[:, :, None] * tint + 127) // 255
            region = canvas[y : y + h, x : x + w]
            a = alpha[:, :, None]
            canvas[y : y + h, x : x + w] = (region * (255 - a) + fg * a + 127) // 255
            objects.append(
                {
                    "index": index,
                    "label": int(label),
                    "box": tight_box(mask),
                    "mask": mask,
                    "scale": scale,
                    "flip": flip,
                    "tint": [int(v) for v in tint],
                    "full": int(mask.sum()),
                }
            )
            break
    for obj in objects:
        obj["area"] = int(obj["mask"].sum())
        del obj["full"]
    return canvas.astype(np.uint8), objects


def _try_place(objects, mask, options):
    """The earlier objects' (obj, visible mask, box) once ``mask`` is pasted on top, or None
    when that breaks the visibility or the IoU rule."""
    box = tight_box(mask)
    placed = []
    for obj in objects:
        visible = obj["mask"] & ~mask
        if 100 * int(visible.sum()) < options.min_visible_percent * obj["full"]:
            return None
        placed.append((obj, visible, tight_box(visible)))
    boxes = [b for _, _, b in placed] + [box]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if not _iou_below(boxes[i], boxes[j], options.max_iou_percent):
                return None
    return placed
