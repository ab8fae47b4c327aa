"""One distillation step on one image: the model's parts run as in training, the positives,
regions, RoIs, maps and predictions each layer draws (:func:`inspect_step`)."""

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from ..modeling.assigners.colad import CoLADAssigner
from ..modeling.assigners.lad import LADAssigner
from ..modeling.detectors.gfl import GFL
from ..modeling.detectors.paa import PAA
from ..modeling.distill.adapters import DenseDetectorAdapter, build_adapter
from ..modeling.distill.meta_arch import DistillationDetector
from ..modeling.distillers.head import HEADDistiller, TFHEADDistiller
from ..modeling.distillers.ld import LDDistiller
from ..modeling.matching.targets import DenseTargets
from ..modeling.teachers.label_guided import LabelGuidedTeacher

__all__ = [
    "LAYERS",
    "Positives",
    "StepView",
    "check_layers",
    "describe_model",
    "inspect_step",
    "supported_layers",
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
