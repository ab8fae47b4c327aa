"""What one distillation step sees, drawn on one image (the library behind tools/visualize.py).

:func:`inspect_step` runs the parts of a model as :class:`DistillationDetector`'s training step
does (``adapter.preprocess`` / ``run``, the teacher, the assigner, the student's task losses,
which record its targets, and the distillers' public helpers), on one image, in training mode
and without gradient, with distillation on; :func:`render_layer` draws the result. Layers
(:data:`LAYERS`), each on the image as the test loader resizes it (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST, without the batch padding), ``h x w`` below:

* ``gt``: ground-truth boxes with class names, one colour per box (h x w);
* ``student_pos``: the positives of the student's own assignment (ATSS for GFL, PAA's GMM split,
  detectron2's IoU matching for RetinaNet, FCOS's rule), anchor boxes (points for FCOS) in the
  colour of their box (h x w);
* ``teacher_pos``: LAD's teacher assignment, which replaces the student's, or CoLAD's shared
  one (h x w);
* ``ld_regions``: per head level, LD's main region (the student's ATSS positives, green) and
  VLR (orange), one cell per location (h x L w, L levels side by side);
* ``head_rois``: HEAD's proposals from the student (the best ``top_proposals`` after NMS,
  brighter = higher score) and the RoIs the assistant samples (positives green, negatives
  red) (h x 2 w);
* ``lgd_energy``: per level, the L2 norm over channels of the student's FPN map (top row) and of
  LGD's teacher map (bottom row), upsampled, each normalised to its own range, as a heat map
  (2 h x L w);
* ``predictions``: the student's detections (inference mode) with a score >= ``score_thresh``
  (h x w).

Which layers a model has: :func:`supported_layers`. The step uses batch statistics of this one
image where the student trains BatchNorm; buffers (and dense detectors' loss normaliser) are
restored afterwards, and the random draws (HEAD's RoI sampling) come from a fixed seed.
"""

import contextlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from PIL import Image, ImageDraw, ImageFont

from .modeling.assigners.colad import CoLADAssigner
from .modeling.assigners.lad import LADAssigner
from .modeling.detectors.gfl import GFL
from .modeling.detectors.paa import PAA
from .modeling.distill.adapters import DenseDetectorAdapter, build_adapter
from .modeling.distill.meta_arch import DistillationDetector
from .modeling.distillers.head import HEADDistiller, TFHEADDistiller
from .modeling.distillers.ld import LDDistiller
from .modeling.matching.targets import DenseTargets
from .modeling.teachers.label_guided import LabelGuidedTeacher

__all__ = [
    "LAYERS",
    "Positives",
    "StepView",
    "supported_layers",
    "check_layers",
    "inspect_step",
    "render_layer",
    "write_layers",
    "load_input",
    "load_weights",
    "visualize",
]

LAYERS = (
    "gt",
    "student_pos",
    "teacher_pos",
    "ld_regions",
    "head_rois",
    "lgd_energy",
    "predictions",
)
_STEP_LAYERS = {"student_pos", "teacher_pos", "ld_regions", "head_rois", "lgd_energy"}
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


def _parts(model):
    """(student, teacher, assigner, distillers) of a distillation model or a plain detector."""
    if isinstance(model, DistillationDetector):
        return model.student, model.teacher, model.assigner, list(model.distillers)
    return model, None, None, []


def supported_layers(model) -> List[str]:
    """The layers of :data:`LAYERS` that ``model`` (a DistillationDetector or a plain
    detector) has, in :data:`LAYERS` order."""
    student, teacher, assigner, distillers = _parts(model)
    have = {"gt", "predictions"}
    if isinstance(build_adapter(student), DenseDetectorAdapter):
        have.add("student_pos")
    if isinstance(assigner, (LADAssigner, CoLADAssigner)):
        have.add("teacher_pos")
    if any(isinstance(d, LDDistiller) for d in distillers):
        have.add("ld_regions")
    if any(isinstance(d, (HEADDistiller, TFHEADDistiller)) for d in distillers):
        have.add("head_rois")
    if isinstance(teacher, LabelGuidedTeacher):
        have.add("lgd_energy")
    return [name for name in LAYERS if name in have]


def describe_model(model) -> str:
    """One line naming the student, teacher, assigner and distillers of ``model``."""
    student, teacher, assigner, distillers = _parts(model)
    if not isinstance(model, DistillationDetector):
        return f"plain {type(student).__name__}"

    def name(m):
        return type(m).__name__ if m is not None else "none"

    return (
        f"student {name(student)}, teacher {name(teacher)}, assigner {name(assigner)}, "
        f"distillers [{', '.join(name(d) for d in distillers)}]"
    )


def check_layers(model, requested: Optional[Sequence[str]] = None) -> List[str]:
    """``requested`` (all supported layers when None or empty), checked against
    :func:`supported_layers`: an unknown or unsupported name is a ValueError that names the
    layers this config has."""
    have = supported_layers(model)
    if not requested:
        return have
    unknown = [x for x in requested if x not in LAYERS]
    if unknown:
        raise ValueError(f"Unknown layer(s) {unknown}; valid layers: {', '.join(LAYERS)}.")
    missing = [x for x in requested if x not in have]
    if missing:
        raise ValueError(
            f"Layer(s) {missing} are not drawn for this config ({describe_model(model)}): it "
            f"has {', '.join(have)}."
        )
    return list(dict.fromkeys(requested))


# ------------------------------------------------------------------------------- the step
@dataclass
class Positives:
    """Positive anchors (or locations) of one image.

    Attributes:
        title: what assigned them (e.g. "student ATSS").
        boxes: (P, 4) XYXY anchor boxes; gt_index: (P,) the box each is assigned to;
        levels: (P,) head-level index of each; level_names: the head levels.
        points: draw anchor centres only (FCOS locations).
    """

    title: str
    boxes: np.ndarray
    gt_index: np.ndarray
    levels: np.ndarray
    level_names: List[str]
    points: bool = False


@dataclass
class StepView:
    """Everything :func:`render_layer` draws, on the resized image (numpy, image pixels).

    ``ld_regions``: per level (name, (R_l, 4) cells, (R_l,) main mask, (R_l,) VLR mask);
    ``head_rois``: proposals (boxes, scores) in descending score and sampled RoIs (boxes,
    positive mask); ``lgd_energy``: per level (name, student (h, w), teacher (h, w));
    ``predictions``: (boxes, scores, classes).
    """

    image: np.ndarray
    class_names: List[str]
    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    student_pos: Optional[Positives] = None
    teacher_pos: Optional[Positives] = None
    ld_regions: Optional[List[Tuple[str, np.ndarray, np.ndarray, np.ndarray]]] = None
    head_rois: Optional[Dict[str, np.ndarray]] = None
    lgd_energy: Optional[List[Tuple[str, np.ndarray, np.ndarray]]] = None
    predictions: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy()


@contextlib.contextmanager
def _training_step_state(model, seed: int):
    """Training mode (frozen teachers stay in eval mode), no gradient, an EventStorage at
    iteration 0 and a forked RNG seeded with ``seed``; the mode, the buffers (BatchNorm
    statistics) and the dense detectors' ``loss_normalizer`` are restored afterwards."""
    was_training = model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    normalisers = {m: m.loss_normalizer for m in model.modules() if hasattr(m, "loss_normalizer")}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model.train()
            with torch.no_grad(), EventStorage(0):
                yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        for m, v in normalisers.items():
            m.loss_normalizer = v


def _positives(student, outputs, targets: DenseTargets, title: str) -> Positives:
    """Image 0's positives from a dense student's targets (for detectron2's RetinaNet / FCOS,
    whose targets do not name the matched box, the box index is found from the box)."""
    names = list(outputs.head_in_features)
    counts = targets.num_per_level
    if targets.matched is not None:
        anchors, matched = targets.anchors, targets.matched[0]
    else:
        anchors = Boxes.cat(targets.anchors).tensor
        matched_boxes = targets.matched_boxes[0]
        gt = outputs.gt_instances[0].gt_boxes.tensor
        pos = targets.positive[0]
        matched = torch.full_like(targets.labels[0], -1)
        if len(gt):  # the box index of each positive, from the box it was matched to
            same = (matched_boxes[:, None, :] == gt[None]).all(dim=-1)
            matched = torch.where(pos & same.any(dim=1), same.float().argmax(dim=1), matched)
    levels = torch.repeat_interleave(
        torch.arange(len(counts), device=anchors.device), torch.as_tensor(counts).to(anchors.device)
    )
    pos = matched >= 0
    return Positives(
        title=title,
        boxes=_np(anchors[pos]),
        gt_index=_np(matched[pos]),
        levels=_np(levels[pos]),
        level_names=names,
        points=isinstance(student, _D2FCOS),
    )


def _rule_name(student) -> str:
    if isinstance(student, GFL):
        return "ATSS"
    if isinstance(student, PAA):
        return "PAA"
    return "FCOS rule" if isinstance(student, _D2FCOS) else "IoU matching"


def _energy(feature: torch.Tensor, stride: int, size: Tuple[int, int]) -> np.ndarray:
    """(C, H_l, W_l) -> (h, w): L2 norm over channels, bilinearly upsampled by the stride (cell
    i covering pixels [i s, (i + 1) s)), cropped to the image."""
    e = feature.float().norm(dim=0)[None, None]
    up = F.interpolate(e, scale_factor=stride, mode="bilinear", align_corners=False)
    return _np(up[0, 0, : size[0], : size[1]])


def inspect_step(
    model,
    inputs: dict,
    layers: Sequence[str] = LAYERS,
    *,
    input_format: str = "BGR",
    class_names: Optional[List[str]] = None,
    score_thresh: float = 0.3,
    seed: int = 0,
) -> StepView:
    """Run ``model``'s parts on one mapped input (a dict with ``image`` in ``input_format``
    and ``instances``, as :class:`lgdkd.data.AnnotatedTestMapper` gives) and collect what
    ``layers`` draw (see the module docstring)."""
    student, teacher, assigner, distillers = _parts(model)
    image = convert_image_to_rgb(inputs["image"].permute(1, 2, 0).numpy(), input_format)
    h, w = image.shape[:2]
    gt = inputs["instances"]
    view = StepView(
        image=np.ascontiguousarray(image).astype(np.uint8),
        class_names=list(class_names or []),
        gt_boxes=_np(gt.gt_boxes.tensor),
        gt_classes=_np(gt.gt_classes),
    )
    if "predictions" in layers:
        view.predictions = _predictions(student, inputs, score_thresh)
    if not _STEP_LAYERS & set(layers):
        return view
    adapter = build_adapter(student)
    batched = [inputs]
    with _training_step_state(model, seed):
        images, gt_instances = adapter.preprocess(student, batched)
        s_out = adapter.run(student, images, gt_instances)
        t_out = teacher(batched, s_out) if teacher is not None else None
        assignment = assigner(s_out, t_out) if assigner is not None else None
        dense = isinstance(adapter, DenseDetectorAdapter)
        if dense and ({"student_pos", "ld_regions"} & set(layers)):
            # the student's own assignment (LAD / CoLAD train it on the assigner's instead)
            s_out.targets = adapter.targets(student, s_out)
            title = f"student {_rule_name(student)}"
            view.student_pos = _positives(student, s_out, s_out.targets, title)
        if "teacher_pos" in layers:
            title = "CoLAD shared" if isinstance(assigner, CoLADAssigner) else "LAD teacher"
            view.teacher_pos = _positives(student, s_out, assignment.targets, f"{title} PAA")
        for d in distillers:
            if "ld_regions" in layers and isinstance(d, LDDistiller):
                view.ld_regions = _ld_regions(d, s_out)
            if "head_rois" in layers and isinstance(d, (HEADDistiller, TFHEADDistiller)):
                view.head_rois = _head_rois(d, s_out)
        if "lgd_energy" in layers:
            view.lgd_energy = [
                (
                    k,
                    _energy(s_out.features[k][0], s_out.feature_shapes[k].stride, (h, w)),
                    _energy(t_out.features[k][0], s_out.feature_shapes[k].stride, (h, w)),
                )
                for k in s_out.features
                if k in t_out.features
            ]
    return view


def _ld_regions(distiller: LDDistiller, s_out):
    targets = s_out.targets
    main = targets.positive[0]
    vlr = distiller.vlr_weights(targets, s_out.gt_instances)[0] > 0
    half = targets.strides[:, None] / 2
    cells = torch.cat([targets.centers - half, targets.centers + half], dim=1)
    counts = targets.num_per_level
    return [
        (name, _np(c), _np(m), _np(v))
        for name, c, m, v in zip(
            s_out.head_in_features, cells.split(counts), main.split(counts), vlr.split(counts)
        )
    ]


def _head_rois(distiller, s_out) -> Dict[str, np.ndarray]:
    proposals = distiller.proposals(s_out)
    sampled = distiller.assistant.sample(proposals, s_out.gt_instances)[0]
    p = proposals[0]
    return {
        "proposal_boxes": _np(p.proposal_boxes.tensor),
        "proposal_scores": _np(p.objectness_logits.sigmoid()),
        "roi_boxes": _np(sampled.proposal_boxes.tensor),
        "roi_positive": _np(sampled.gt_classes < distiller.num_classes),
    }


def _predictions(student, inputs, score_thresh):
    """The student's inference on the resized image (``height``/``width`` = its own size, so
    that the boxes stay in its pixels), detections with score >= ``score_thresh``."""
    h, w = inputs["image"].shape[-2:]
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            out = student([{"image": inputs["image"], "height": h, "width": w}])[0]["instances"]
    finally:
        student.train(was_training)
    keep = out.scores >= score_thresh
    return _np(out.pred_boxes.tensor[keep]), _np(out.scores[keep]), _np(out.pred_classes[keep])


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


# ----------------------------------------------------------------------------- one image
def load_input(
    cfg, dataset: Optional[str] = None, index: Optional[int] = None, image_id=None
) -> Tuple[dict, str]:
    """One record of ``dataset`` (default DATASETS.TRAIN[0]) mapped as the test loader maps it
    (test-time resize) with its annotations kept (:class:`lgdkd.data.AnnotatedTestMapper`).

    ``index``: position in the set's records (default 0); ``image_id``: the record whose
    ``image_id`` equals it (compared as text). Returns (mapped dict, data set name)."""
    from .data import AnnotatedTestMapper
    from .data.annotations import load_dataset_dicts

    name = dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not name:
        raise ValueError("No data set: pass --dataset NAME (DATASETS.TRAIN is empty).")
    dicts = load_dataset_dicts(name)
    if image_id is not None:
        found = [i for i, d in enumerate(dicts) if str(d.get("image_id")) == str(image_id)]
        if not found:
            ids = [str(d.get("image_id")) for d in dicts[:5]]
            raise ValueError(
                f"Data set {name!r} has no image_id {image_id!r} ({len(dicts)} images; the "
                f"first ids: {', '.join(ids)})."
            )
        index = found[0]
    index = 0 if index is None else int(index)
    if not 0 <= index < len(dicts):
        raise ValueError(
            f"--image-index {index} is outside data set {name!r} ({len(dicts)} images)."
        )
    return AnnotatedTestMapper(cfg)(dicts[index]), name


def load_weights(model, cfg, weights: str = "") -> None:
    """``weights`` loaded strictly as for ``--eval-only``, or, without ``weights``, the model
    as training starts (MODEL.WEIGHTS into the student; a frozen teacher always comes from its
    own file)."""
    from .engine.checkpointer import load_for_evaluation, load_initial_weights

    if weights:
        load_for_evaluation(model, weights, what="--weights")
    else:
        load_initial_weights(model, cfg.MODEL.WEIGHTS)


def visualize(
    cfg,
    output_dir: str,
    *,
    model=None,
    weights: str = "",
    dataset: Optional[str] = None,
    image_index: Optional[int] = None,
    image_id=None,
    layers: Optional[Sequence[str]] = None,
    score_thresh: float = 0.3,
    top_proposals: int = 20,
) -> Dict[str, str]:
    """Draw ``layers`` (default: every layer the config supports) for one image; see
    :func:`load_input`, :func:`inspect_step` and :func:`write_layers`. ``model``: an already
    built model (``weights`` is then ignored); otherwise it is built with torch seeded by SEED
    (0 when negative), so that randomly initialised parts are the same in every call.
    Returns {layer or "combined": PNG path}."""
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model

    seed = max(int(cfg.SEED), 0)
    built = model is None
    if built:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random initial weights: the same in every call
            model = build_model(cfg)
    layers = check_layers(model, layers)  # before the weights: a wrong layer fails fast
    if built:
        load_weights(model, cfg, weights)
    inputs, name = load_input(cfg, dataset, image_index, image_id)
    view = inspect_step(
        model,
        inputs,
        layers,
        input_format=cfg.INPUT.FORMAT,
        class_names=MetadataCatalog.get(name).get("thing_classes", None),
        score_thresh=score_thresh,
        seed=seed,
    )
    return write_layers(
        view, layers, output_dir, score_thresh=score_thresh, top_proposals=top_proposals
    )
