"""Drawing the layers of a :class:`~lgdkd.visualize.step.StepView` (PNG panels)."""

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .step import LAYERS, Positives, StepView

__all__ = ["render_layer", "write_layers"]

_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
)
_GAP = 4  # pixels between panels of the combined PNG


# -------------------------------------------------------------------------------- drawing
def _color(i: int) -> Tuple[int, int, int]:
    return _PALETTE[int(i) % len(_PALETTE)]


def _font():
    return ImageFont.load_default()


def _titled(img: Image.Image, text: str) -> Image.Image:
    """``img`` with ``text`` on a translucent black band along its top edge."""
    img = img.convert("RGBA")
    band = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(band)
    font = _font()
    bottom = draw.textbbox((2, 1), text, font=font)[3]
    draw.rectangle((0, 0, img.size[0], bottom + 2), fill=(0, 0, 0, 170))
    draw.text((2, 1), text, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(img, band).convert("RGB")


def _gt_outlines(draw: ImageDraw.ImageDraw, view: StepView, width: int = 2, names=False):
    for i, (box, c) in enumerate(zip(view.gt_boxes, view.gt_classes)):
        draw.rectangle([float(v) for v in box], outline=_color(i), width=width)
        if names:
            name = view.class_names[c] if c < len(view.class_names) else str(int(c))
            x, y = float(box[0]), float(box[1])
            bbox = draw.textbbox((x + 2, y + 1), name, font=_font())
            draw.rectangle(bbox, fill=_color(i))
            draw.text((x + 2, y + 1), name, fill=(0, 0, 0), font=_font())


def _draw_gt(view: StepView) -> Image.Image:
    img = Image.fromarray(view.image)
    _gt_outlines(ImageDraw.Draw(img), view, names=True)
    return _titled(img, f"ground truth: {len(view.gt_boxes)}")


def _draw_positives(view: StepView, pos: Positives) -> Image.Image:
    img = Image.fromarray(view.image)
    draw = ImageDraw.Draw(img)
    _gt_outlines(draw, view, width=1)
    for box, g in zip(pos.boxes, pos.gt_index):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if not pos.points:
            draw.rectangle([float(v) for v in box], outline=_color(g), width=1)
        draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=_color(g), outline=(0, 0, 0))
    per_level = " ".join(
        f"{n}:{int((pos.levels == i).sum())}"
        for i, n in enumerate(pos.level_names)
        if (pos.levels == i).any()
    )
    return _titled(img, f"{pos.title}: {len(pos.boxes)} {per_level}".rstrip())


def _fill_cells(img: Image.Image, fills) -> Image.Image:
    """``fills``: (boxes, RGBA colour) pairs painted translucently."""
    over = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    for boxes, color in fills:
        for b in boxes:
            draw.rectangle([float(v) for v in b], fill=color, outline=color[:3] + (255,))
    return Image.alpha_composite(img.convert("RGBA"), over).convert("RGB")


def _draw_ld(view: StepView) -> List[Image.Image]:
    panels = []
    for name, cells, main, vlr in view.ld_regions:
        img = _fill_cells(
            Image.fromarray(view.image),
            [(cells[vlr & ~main], (255, 140, 0, 120)), (cells[main], (0, 220, 0, 140))],
        )
        _gt_outlines(ImageDraw.Draw(img), view, width=1)
        panels.append(_titled(img, f"LD {name}: main {int(main.sum())} VLR {int(vlr.sum())}"))
    return panels


def _draw_head(view: StepView, top: int) -> List[Image.Image]:
    r = view.head_rois
    boxes, scores = r["proposal_boxes"][:top], r["proposal_scores"][:top]
    left = Image.fromarray(view.image)
    draw = ImageDraw.Draw(left)
    for b, s in list(zip(boxes, scores))[::-1]:  # best drawn last, on top
        v = int(80 + 175 * s)
        draw.rectangle([float(x) for x in b], outline=(v, v, 0), width=1)
    left = _titled(left, f"HEAD proposals: top {len(boxes)} of {len(r['proposal_boxes'])}")
    right = Image.fromarray(view.image)
    draw = ImageDraw.Draw(right)
    pos = r["roi_positive"]
    for b in r["roi_boxes"][~pos]:
        draw.rectangle([float(x) for x in b], outline=(230, 40, 40), width=1)
    for b in r["roi_boxes"][pos]:
        draw.rectangle([float(x) for x in b], outline=(40, 230, 40), width=1)
    right = _titled(right, f"sampled RoIs: {int(pos.sum())} pos, {int((~pos).sum())} neg")
    return [left, right]


def _heat(image: np.ndarray, m: np.ndarray) -> Image.Image:
    import cv2

    lo, hi = float(m.min()), float(m.max())
    n = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    u8 = np.round(n * 255).astype(np.uint8)
    heat = cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO)[..., ::-1].astype(np.float32)
    gray = image.astype(np.float32).mean(axis=2, keepdims=True)
    return Image.fromarray(np.round(0.7 * heat + 0.3 * gray).astype(np.uint8))


def _draw_lgd(view: StepView) -> List[List[Image.Image]]:
    rows = [[], []]
    for name, s, t in view.lgd_energy:
        rows[0].append(_titled(_heat(view.image, s), f"student {name} max {s.max():.3g}"))
        rows[1].append(_titled(_heat(view.image, t), f"LGD teacher {name} max {t.max():.3g}"))
    return rows


def _draw_predictions(view: StepView, score_thresh: float) -> Image.Image:
    img = Image.fromarray(view.image)
    draw = ImageDraw.Draw(img)
    boxes, scores, classes = view.predictions
    for b, s, c in list(zip(boxes, scores, classes))[::-1]:
        draw.rectangle([float(x) for x in b], outline=_color(c), width=2)
        name = view.class_names[c] if c < len(view.class_names) else str(int(c))
        draw.text((float(b[0]) + 2, float(b[3]) - 11), f"{name} {s:.2f}", fill=_color(c))
    return _titled(img, f"predictions >= {score_thresh:g}: {len(boxes)}")


def _grid(rows: List[List[Image.Image]], gap: int = 0) -> Image.Image:
    """Panels in rows, left to right, top-aligned, on a dark background."""
    widths = [sum(p.size[0] for p in r) + gap * (len(r) - 1) for r in rows]
    heights = [max(p.size[1] for p in r) for r in rows]
    out = Image.new("RGB", (max(widths), sum(heights) + gap * (len(rows) - 1)), (32, 32, 32))
    y = 0
    for r, rh in zip(rows, heights):
        x = 0
        for p in r:
            out.paste(p, (x, y))
            x += p.size[0] + gap
        y += rh + gap
    return out


def render_layer(
    view: StepView, layer: str, *, score_thresh: float = 0.3, top_proposals: int = 20
) -> np.ndarray:
    """(H, W, 3) uint8 RGB drawing of ``layer`` (sizes in the module docstring)."""
    if layer == "gt":
        img = _draw_gt(view)
    elif layer in ("student_pos", "teacher_pos"):
        img = _draw_positives(view, getattr(view, layer))
    elif layer == "ld_regions":
        img = _grid([_draw_ld(view)])
    elif layer == "head_rois":
        img = _grid([_draw_head(view, top_proposals)])
    elif layer == "lgd_energy":
        img = _grid(_draw_lgd(view))
    elif layer == "predictions":
        img = _draw_predictions(view, score_thresh)
    else:
        raise ValueError(f"Unknown layer {layer!r}; valid layers: {', '.join(LAYERS)}.")
    return np.asarray(img)


def write_layers(
    view: StepView,
    layers: Sequence[str],
    output_dir: str,
    *,
    score_thresh: float = 0.3,
    top_proposals: int = 20,
) -> Dict[str, str]:
    """Write ``<output_dir>/<layer>.png`` for each layer and ``combined.png`` (every layer side
    by side, in order, top-aligned, 4 px apart); returns {layer or "combined": path}."""
    os.makedirs(output_dir, exist_ok=True)
    paths, images = {}, []
    for layer in layers:
        arr = render_layer(view, layer, score_thresh=score_thresh, top_proposals=top_proposals)
        paths[layer] = os.path.join(output_dir, f"{layer}.png")
        Image.fromarray(arr).save(paths[layer])
        images.append(Image.fromarray(arr))
    paths["combined"] = os.path.join(output_dir, "combined.png")
    _grid([images], gap=_GAP).save(paths["combined"])
    return paths
