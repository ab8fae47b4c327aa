"""HEAD: hetero-assists distillation (Wang et al., ECCV 2022, arXiv:2207.05345; official code
LutingWang/HEAD, branch ``refactor`` for HEAD and ``dev`` for TF-HEAD).

A RetinaNet student gets an *assistant*: the second stage of a Faster R-CNN on the student's
FPN, trained on proposals made from the student's own (detached) RetinaNet outputs. The
assistant's losses reach the student's FPN and backbone through RoIAlign. With a frozen
Faster R-CNN teacher the assistant's box-head activations on the sampled RoIs are regressed
to the teacher's on the same RoIs (AKD), and the student's RetinaNet cls-tower feature at the
anchor that produced each RoI is regressed to the teacher's last box-head activation (CKD).
The teacher-free variant (TF-HEAD) trains the assistants jointly and regresses the student's
head features onto their detached features.

The assistant lives in the distiller (``distillers.<i>.*`` in the state dict), so the
exported student is a plain RetinaNet.

Shape shorthand: N images, L levels, A anchors per location, K classes, R proposals of one
image, S sampled RoIs of the batch, D width of a box-head activation.
"""

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNet, RetinaNetHead
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...utils.dist import count_over_workers
from ..meta_arch.fcos import FCOS, FCOSHead
from ..outputs import DetectorOutputs
from .build import DISTILLER_REGISTRY

__all__ = [
    "HEADDistiller",
    "TFHEADDistiller",
    "HEADAssistant",
    "retina_proposals",
    "box_head_activations",
    "ramp_weight",
    "akd_loss",
    "anchor_feature_loss",
]

logger = logging.getLogger(__name__)

GT_LEVEL = -1  # ``anchor_pos`` level of a ground-truth row: it came from no anchor


def ramp_weight(value: float, warmup_iters: int, iteration: int, early_stop: int = -1) -> float:
    """``value * min(iteration / warmup_iters, 1)``: 0 at iteration 0, ``value`` from
    ``warmup_iters`` on (the official todd ``WarmupScheduler``); 0 from ``early_stop`` on
    (``early_stop`` < 0: never)."""
    if 0 <= early_stop <= iteration:
        return 0.0
    if warmup_iters <= 0:
        return float(value)
    return float(value) * min(iteration / warmup_iters, 1.0)


@torch.no_grad()
def retina_proposals(
    anchors: List[Boxes],
    logits: List[Tensor],
    deltas: List[Tensor],
    image_sizes: List[Tuple[int, int]],
    box2box_transform: Box2BoxTransform,
    num_classes: int,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_size: float = 0.0,
) -> List[Instances]:
    """Class-agnostic proposals from RetinaNet outputs, each remembering its anchor.

    Args:
        anchors: per level, the (H_l * W_l * A, 4) anchors in (y, x, a) order (detectron2's
            anchor generator order).
        logits: per level (N, A * K, H_l, W_l) class logits (class index innermost).
        deltas: per level (N, A * 4, H_l, W_l) box deltas.

    Per image and level: score = sigmoid(max over K of the logit); the top ``pre_nms_topk``
    anchors (no threshold) are decoded with their own anchors, clipped to the image, boxes
    with a side <= ``min_size`` dropped; NMS at ``nms_thresh`` runs per level; the
    ``post_nms_topk`` best remain, in descending score.

    Returns:
        per image an ``Instances`` with ``proposal_boxes`` (R, 4), ``objectness_logits`` (R,)
        (the max logit) and ``anchor_pos`` (R, 4) int64 rows (level, y, x, a).
    """
    results = []
    n = logits[0].shape[0]
    flat = []
    for lvl, (lg, dl, anc) in enumerate(zip(logits, deltas, anchors)):
        _, ak, h, w = lg.shape
        a = ak // num_classes
        if a * num_classes != ak or dl.shape[1] != a * 4 or len(anc) != h * w * a:
            raise ValueError(
                f"HEAD proposals, level {lvl}: logits {tuple(lg.shape)}, deltas "
                f"{tuple(dl.shape)} and {len(anc)} anchors do not agree for {num_classes} "
                "classes."
            )
        scores = lg.detach().view(n, a, num_classes, h, w).permute(0, 3, 4, 1, 2).amax(-1)
        d = dl.detach().view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        flat.append((scores.reshape(n, -1), d, anc.tensor, h, w, a))
    for i in range(n):
        boxes, scores, pos = [], [], []
        for lvl, (sc, d, anc, h, w, a) in enumerate(flat):
            k = min(pre_nms_topk, sc.shape[1])
            top, idx = sc[i].topk(k)
            boxes.append(box2box_transform.apply_deltas(d[i, idx], anc[idx]))
            scores.append(top)
            pos.append(
                torch.stack(
                    [torch.full_like(idx, lvl), idx // (w * a), (idx // a) % w, idx % a], dim=1
                )
            )
        b = Boxes(cat(boxes))
        s, p = cat(scores), cat(pos)
        b.clip(image_sizes[i])
        keep = b.nonempty(threshold=min_size) & torch.isfinite(b.tensor).all(dim=1)
        keep &= torch.isfinite(s)
        b, s, p = b[keep], s[keep], p[keep]
        keep = batched_nms(b.tensor, s, p[:, 0], nms_thresh)[:post_nms_topk]
        inst = Instances(image_sizes[i])
        inst.proposal_boxes = b[keep]
        inst.objectness_logits = s[keep]
        inst.anchor_pos = p[keep]
        results.append(inst)
    return results


def gt_with_markers(targets: List[Instances]) -> List[Instances]:
    """Copies of ``targets`` with ``anchor_pos`` = (-1, -1, -1, gt_index) per box, so that the
    ground-truth rows detectron2 appends to the proposals are marked as anchor-less."""
    out = []
    for t in targets:
        t = Instances(t.image_size, **t.get_fields())
        idx = torch.arange(len(t), device=t.gt_boxes.device)
        marker = torch.full((len(t), 3), GT_LEVEL, dtype=torch.long, device=idx.device)
        t.anchor_pos = torch.cat([marker, idx[:, None]], dim=1)
        out.append(t)
    return out


def box_head_activations(
    head: nn.Module, x: Tensor, names: Sequence[str]
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Run a ``FastRCNNConvFCHead`` layer by layer; return its output and, for each name in
    ``names``, that layer's output after its activation: ``fcK`` -> after ``fc_reluK``,
    ``convK`` -> the conv (norm and ReLU are inside detectron2's Conv2d)."""
    want = set(names)
    acts = {}
    for name, layer in head.named_children():
        x = layer(x)
        key = name.replace("fc_relu", "fc") if name.startswith("fc_relu") else name
        if key in want and (name.startswith("fc_relu") or name.startswith("conv")):
            acts[key] = x
    missing = want - set(acts)
    if missing:
        raise KeyError(
            f"Box head has no activation {sorted(missing)}; its layers are "
            f"{[n for n, _ in head.named_children()]}."
        )
    return x, acts


class HEADAssistant(StandardROIHeads):
    """The assistant: a Faster R-CNN second stage (detectron2's ``StandardROIHeads`` with a
    ``FastRCNNConvFCHead`` and ``FastRCNNOutputLayers``) on the student's FPN levels.

    RoIs are mapped to levels by MMDetection's rule, k = floor(log2(sqrt(wh) / 56)) clamped
    to the listed levels (k = 0: the first). With detectron2's ROIPooler that is
    ``canonical_level = log2(first stride) + 2`` at canonical size 224: the teacher's p2-p5
    use the default (224, 4) and the student's p3-p6 use (224, 5), so a RoI lands on the
    same *relative* level in both.
    """

    @classmethod
    def build(cls, cfg, input_shape: Dict[str, ShapeSpec], num_classes: int) -> "HEADAssistant":
        a = cfg.MODEL.DISTILL.HEAD.ASSIST
        in_features = list(a.IN_FEATURES)
        for f in in_features:
            if f not in input_shape:
                raise ValueError(
                    f"MODEL.DISTILL.HEAD.ASSIST.IN_FEATURES: the student has no feature {f!r} "
                    f"(it has {sorted(input_shape)})."
                )
        strides = [input_shape[f].stride for f in in_features]
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"Assistant levels {in_features} have different channels.")
        levels = [math.log2(s) for s in strides]
        if any(lv != int(lv) for lv in levels) or levels != list(
            range(int(levels[0]), int(levels[0]) + len(levels))
        ):
            raise ValueError(
                f"MODEL.DISTILL.HEAD.ASSIST.IN_FEATURES {in_features} must be consecutive "
                f"power-of-2 strides, got {strides}."
            )
        pooler = ROIPooler(
            output_size=a.POOLER_RESOLUTION,
            scales=tuple(1.0 / s for s in strides),
            sampling_ratio=a.POOLER_SAMPLING_RATIO,
            pooler_type=a.POOLER_TYPE,
            canonical_box_size=224,
            canonical_level=int(levels[0]) + 2,
        )
        c = channels.pop()
        box_head = FastRCNNConvFCHead(
            ShapeSpec(channels=c, height=a.POOLER_RESOLUTION, width=a.POOLER_RESOLUTION),
            conv_dims=[a.CONV_DIM] * a.NUM_CONV,
            fc_dims=[a.FC_DIM] * a.NUM_FC,
            conv_norm=a.NORM,
        )
        predictor = FastRCNNOutputLayers(
            box_head.output_shape,
            box2box_transform=Box2BoxTransform(weights=tuple(a.BBOX_REG_WEIGHTS)),
            num_classes=num_classes,
            cls_agnostic_bbox_reg=a.CLS_AGNOSTIC_BBOX_REG,
            smooth_l1_beta=a.SMOOTH_L1_BETA,
            loss_weight={"loss_cls": a.LOSS_CLS_WEIGHT, "loss_box_reg": a.LOSS_BOX_WEIGHT},
        )
        return cls(
            box_in_features=in_features,
            box_pooler=pooler,
            box_head=box_head,
            box_predictor=predictor,
            num_classes=num_classes,
            batch_size_per_image=a.BATCH_SIZE_PER_IMAGE,
            positive_fraction=a.POSITIVE_FRACTION,
            proposal_matcher=Matcher([a.IOU_THRESHOLD], [0, 1], allow_low_quality_matches=False),
            proposal_append_gt=a.APPEND_GT,
        )

    def sample(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Label and sample the proposals (ground-truth rows appended with ``anchor_pos``
        level -1); per image the positives first, then the negatives."""
        return self.label_and_sample_proposals(proposals, gt_with_markers(targets))

    def run(
        self, features: Dict[str, Tensor], sampled: List[Instances], names: Sequence[str]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Box head on the sampled RoIs: (losses ``loss_cls``/``loss_box_reg``, activations
        of ``names``). With no RoI at all the losses are 0 with a graph to the head."""
        x = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in sampled]
        )
        x, acts = box_head_activations(self.box_head, x, names)
        predictions = self.box_predictor(x)
        if x.shape[0] == 0:
            zero = sum(p.sum() for p in self.parameters()) * 0.0
            return {"loss_cls": zero, "loss_box_reg": zero}, acts
        return self.box_predictor.losses(predictions, sampled), acts


def _transfer_weights(assistant: HEADAssistant, teacher_roi_heads) -> None:
    """Copy the teacher's box head and predictor into the assistant (the official weight
    transfer: a copy, not shared). Every tensor must exist in the teacher with the same
    shape; otherwise the error names them (e.g. the first conv of a conv head when the FPN
    widths differ)."""
    bad, pairs = [], []
    for part in ("box_head", "box_predictor"):
        src = getattr(teacher_roi_heads, part).state_dict()
        for k, v in getattr(assistant, part).state_dict().items():
            if k not in src or src[k].shape != v.shape:
                got = tuple(src[k].shape) if k in src else "missing"
                bad.append(f"{part}.{k}: assistant {tuple(v.shape)}, teacher {got}")
            else:
                pairs.append((v, src[k]))
    if bad:
        raise ValueError(
            "MODEL.DISTILL.HEAD.ASSIST.INIT_FROM_TEACHER: the assistant's RoI head does not "
            "match the teacher's (" + "; ".join(bad) + "). Make MODEL.DISTILL.HEAD.ASSIST "
            "(NUM_CONV, CONV_DIM, NUM_FC, FC_DIM, NORM, POOLER_RESOLUTION) equal the teacher's "
            "ROI_BOX_HEAD and its FPN width the student's, or set INIT_FROM_TEACHER False."
        )
    with torch.no_grad():
        for dst, src in pairs:
            dst.copy_(src)
    logger.info(f"HEAD assistant initialised from the teacher's RoI head ({len(pairs)} tensors)")


def _check_retinanet(student) -> None:
    """HEAD reads the RetinaNet cls tower, which the adapter records for detectron2's own
    ``RetinaNetHead`` (a subclass may compute its outputs differently)."""
    if not isinstance(student, RetinaNet) or type(getattr(student, "head", None)) is not (
        RetinaNetHead
    ):
        raise TypeError(
            "HEAD needs a RetinaNet student (MODEL.DISTILL.STUDENT_META_ARCHITECTURE "
            f"'RetinaNet' with detectron2's RetinaNetHead), got {type(student).__name__} with "
            f"{type(getattr(student, 'head', None)).__name__}."
        )


class _Decouple(nn.Module):
    """Linear C -> A x D; row i keeps the D-slice of its anchor id (the official Decouple)."""

    def __init__(self, c_in: int, c_out: int, num: int):
        super().__init__()
        self.num, self.c_out = num, c_out
        self.linear = nn.Linear(c_in, num * c_out)

    def forward(self, x: Tensor, anchor_ids: Tensor) -> Tensor:
        y = self.linear(x).view(x.shape[0], self.num, self.c_out)
        return y[torch.arange(x.shape[0], device=x.device), anchor_ids]


def _gather_tower(towers: List[Tensor], rows: Tensor) -> Tensor:
    """``towers[level][img, :, y, x]`` for each row (img, level, y, x, a) -> (M, C)."""
    out = towers[0].new_zeros((rows.shape[0], towers[0].shape[1]))
    for lvl, t in enumerate(towers):
        m = rows[:, 1] == lvl
        if m.any():
            r = rows[m]
            out[m] = t[r[:, 0], :, r[:, 2], r[:, 3]]
    return out


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements; 0 (with a graph) when there is no row."""
    if pred.numel() == 0:
        return pred.sum() * 0.0
    return F.mse_loss(pred, target)


def akd_loss(adapters: nn.ModuleDict, acts: Dict[str, Tensor], targets: Dict[str, Tensor]):
    """AKD: sum over the adapted layers of MSE(adapter(student activation), target), each
    the mean over all S x D elements (every sampled RoI, ground-truth rows included)."""
    return sum(_mse(adapters[n](acts[n]), targets[n].detach()) for n in adapters)


def anchor_feature_loss(adapter: nn.Module, towers: List[Tensor], rows: Tensor, target: Tensor):
    """CKD (and TF-HEAD's self_rcnn): MSE between the adapted tower vector at each RoI's
    anchor location, ``towers[level][img, :, y, x]``, and ``target`` (S, D) of that RoI;
    ``rows`` (S, 5) = (img, level, y, x, a). Ground-truth rows (level -1) are left out; a
    decouple adapter takes the slice of anchor a.

    The number of rows left varies per image (its sampled ground-truth rows), so the mean is
    taken over the elements of the whole batch (count averaged over workers: the official
    per-GPU mean made independent of how the batch is split); 0, with a graph, without rows.
    """
    keep = rows[:, 1] >= 0
    rows = rows[keep]
    vec = _gather_tower(towers, rows)
    pred = adapter(vec, rows[:, 4]) if isinstance(adapter, _Decouple) else adapter(vec)
    count = count_over_workers(pred.new_tensor(float(pred.numel())))
    return ((pred - target[keep].detach()) ** 2).sum() / count


class _HEADBase(nn.Module):
    """Shared by HEAD and TF-HEAD: the assistant, its proposals, sampling and losses."""

    needs_teacher = False
    needs_teacher_predictions = False

    def __init__(self, cfg, student_shape: Dict[str, ShapeSpec]):
        super().__init__()
        h = cfg.MODEL.DISTILL.HEAD
        if cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE != "RetinaNet":
            raise ValueError(
                f"{type(self).__name__} needs MODEL.DISTILL.STUDENT_META_ARCHITECTURE "
                f"'RetinaNet', got {cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE!r}."
            )
        self.num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
        self.assistant = HEADAssistant.build(cfg, student_shape, self.num_classes)
        self.assistant_channels = student_shape[h.ASSIST.IN_FEATURES[0]].channels
        p = h.PROPOSAL
        self.proposal_cfg = dict(
            pre_nms_topk=p.PRE_NMS_TOPK_PER_LEVEL,
            post_nms_topk=p.POST_NMS_TOPK,
            nms_thresh=p.NMS_THRESH,
            min_size=p.MIN_SIZE,
        )
        self._student = []  # the student RetinaNet (not registered: not a submodule here)

    def check_models(self, student, teacher) -> None:
        _check_retinanet(student)
        self._student = [student]

    def _tower_channels(self, cfg, student_shape) -> int:
        return student_shape[cfg.MODEL.RETINANET.IN_FEATURES[0]].channels

    def proposals(self, student: DetectorOutputs) -> List[Instances]:
        """The assistant's proposals: :func:`retina_proposals` from the student's (detached)
        RetinaNet outputs with MODEL.DISTILL.HEAD.PROPOSAL, per image in descending score.
        ``self.assistant.sample(proposals, student.gt_instances)`` gives the RoIs it trains on
        (positives first; ``gt_classes`` = K for the negatives)."""
        model = self._student[0]
        head_in = [student.features[f] for f in student.head_in_features]
        logits, deltas = student.predictions[0], student.predictions[1]
        return retina_proposals(
            model.anchor_generator(head_in),
            logits,
            deltas,
            student.images.image_sizes,
            model.box2box_transform,
            self.num_classes,
            **self.proposal_cfg,
        )

    def _sample(self, student: DetectorOutputs) -> List[Instances]:
        return self.assistant.sample(self.proposals(student), student.gt_instances)

    @staticmethod
    def _id_rows(sampled: List[Instances]) -> Tensor:
        """(S, 5) rows (img, level, y, x, a) in the order of the sampled RoIs."""
        return torch.cat(
            [
                torch.cat([torch.full_like(p.anchor_pos[:, :1], i), p.anchor_pos], dim=1)
                for i, p in enumerate(sampled)
            ]
        )

    def _assist_losses(self, student, names, warm: float):
        sampled = self._sample(student)
        losses, acts = self.assistant.run(student.features, sampled, names)
        losses = {
            "loss_assist_cls": losses["loss_cls"] * warm,
            "loss_assist_box_reg": losses["loss_box_reg"] * warm,
        }
        return losses, sampled, acts


@DISTILLER_REGISTRY.register()
class HEADDistiller(_HEADBase):
    """Assist, AKD and CKD (HEAD; "Assist only" with both weights 0 and no teacher).

    Losses: ``loss_assist_cls``, ``loss_assist_box_reg`` (the assistant's Fast R-CNN losses,
    x the ASSIST.LOSS_WARMUP_ITERS ramp); ``loss_distill_akd`` (sum over AKD.LAYERS of the MSE
    between Linear(assistant activation) and the teacher's, on every sampled RoI);
    ``loss_distill_ckd`` (MSE between the adapted student cls-tower vector at each non-GT
    RoI's anchor location and the teacher's AKD.LAYERS[-1] activation). The KD weights ramp
    as WEIGHT x min(iteration / WARMUP_ITERS, 1).
    """

    loss_names = (
        "loss_assist_cls",
        "loss_assist_box_reg",
        "loss_distill_akd",
        "loss_distill_ckd",
    )

    def __init__(self, cfg, student_shape, teacher_shape):
        super().__init__(cfg, student_shape)
        h = cfg.MODEL.DISTILL.HEAD
        self.akd_weight, self.akd_warmup = h.AKD.WEIGHT, h.AKD.WARMUP_ITERS
        self.ckd_weight, self.ckd_warmup = h.CKD.WEIGHT, h.CKD.WARMUP_ITERS
        self.ckd_stop = h.CKD.EARLY_STOP_ITER
        self.assist_warmup = h.ASSIST.LOSS_WARMUP_ITERS
        self.init_from_teacher = h.ASSIST.INIT_FROM_TEACHER
        self.layers = list(h.AKD.LAYERS)
        self.uses_teacher = self.akd_weight > 0 or self.ckd_weight > 0
        if (self.uses_teacher or self.init_from_teacher) and teacher_shape is None:
            raise ValueError(
                "HEADDistiller: AKD/CKD (MODEL.DISTILL.HEAD.AKD.WEIGHT / CKD.WEIGHT > 0) and "
                "ASSIST.INIT_FROM_TEACHER need a Faster R-CNN teacher (MODEL.DISTILL.TEACHER."
                "NAME 'PretrainedTeacher'); for 'Assist only' set both weights to 0 and "
                "INIT_FROM_TEACHER False."
            )
        if not self.layers:
            raise ValueError("MODEL.DISTILL.HEAD.AKD.LAYERS is empty.")
        if h.CKD.ADAPTER not in ("linear", "decouple"):
            raise ValueError(
                f"MODEL.DISTILL.HEAD.CKD.ADAPTER = {h.CKD.ADAPTER!r}; valid: linear, decouple"
            )
        self.ckd_adapter_kind = h.CKD.ADAPTER
        self.tower_channels = self._tower_channels(cfg, student_shape)
        self.num_anchors = None
        # built in check_models, once the teacher's box head is known
        self.akd_adapters = nn.ModuleDict()
        self.ckd_adapter = None
        self._teacher = []

    def check_models(self, student, teacher) -> None:
        super().check_models(student, teacher)
        self.num_anchors = student.anchor_generator.num_cell_anchors[0]
        if teacher is None:
            return
        detector = getattr(teacher, "detector", None)
        roi_heads = getattr(detector, "roi_heads", None)
        if not isinstance(getattr(roi_heads, "box_head", None), FastRCNNConvFCHead):
            raise TypeError(
                "HEAD's teacher must be a Faster R-CNN (GeneralizedRCNN with StandardROIHeads "
                f"and a FastRCNNConvFCHead box head), got {type(detector).__name__}; check "
                "MODEL.DISTILL.TEACHER.CONFIG_FILE."
            )
        self._teacher = [detector]
        if self.init_from_teacher:
            _transfer_weights(self.assistant, roi_heads)
        # activation shapes: one dry run of both box heads on one zero RoI feature
        t_shape = teacher.output_shape()[roi_heads.box_in_features[0]]
        a_res = self.assistant.box_pooler.output_size
        dims = {
            "student": _activation_shapes(
                self.assistant.box_head, (self.assistant_channels, *a_res), self.layers
            ),
            "teacher": _activation_shapes(
                roi_heads.box_head,
                (t_shape.channels, *roi_heads.box_pooler.output_size),
                self.layers,
            ),
        }
        for name in self.layers:
            self.akd_adapters[name] = _adapter_for(dims["student"][name], dims["teacher"][name])
        t_last = dims["teacher"][self.layers[-1]]
        if len(t_last) != 1:
            if self.ckd_weight > 0:
                raise ValueError(
                    f"CKD regresses a vector onto the teacher's {self.layers[-1]!r} output, "
                    f"which is a map {t_last}: make MODEL.DISTILL.HEAD.AKD.LAYERS end with an "
                    "fc layer, or set CKD.WEIGHT 0."
                )
        elif self.ckd_adapter_kind == "linear":
            self.ckd_adapter = nn.Linear(self.tower_channels, t_last[0])
        else:
            self.ckd_adapter = _Decouple(self.tower_channels, t_last[0], self.num_anchors)

    def forward(self, student: DetectorOutputs, teacher: Optional[DetectorOutputs], assignment):
        it = get_event_storage().iter
        warm = ramp_weight(1.0, self.assist_warmup, it)
        w_akd = ramp_weight(self.akd_weight, self.akd_warmup, it)
        w_ckd = ramp_weight(self.ckd_weight, self.ckd_warmup, it, self.ckd_stop)
        names = self.layers if (w_akd > 0 or w_ckd > 0) else []
        losses, sampled, acts = self._assist_losses(student, names, warm)
        zero = student.features[student.head_in_features[0]].sum() * 0.0
        losses["loss_distill_akd"] = zero
        losses["loss_distill_ckd"] = zero
        if not names:
            return losses
        if teacher is None:
            raise ValueError("HEADDistiller: AKD/CKD need the teacher's features.")
        t_acts = self.teacher_activations(teacher, sampled)
        if w_akd > 0:
            akd = akd_loss(self.akd_adapters, acts, t_acts)
            losses["loss_distill_akd"] = w_akd * akd
        if w_ckd > 0 and self.ckd_adapter is not None:
            ckd = anchor_feature_loss(
                self.ckd_adapter,
                student.extras["cls_tower"],
                self._id_rows(sampled),
                t_acts[self.layers[-1]],
            )
            losses["loss_distill_ckd"] = w_ckd * ckd
        return losses

    @torch.no_grad()
    def teacher_activations(
        self, teacher: DetectorOutputs, sampled: List[Instances]
    ) -> Dict[str, Tensor]:
        """The frozen teacher's RoI box head on exactly the student's sampled RoIs (its own
        pooler on its own FPN levels)."""
        roi_heads = self._teacher[0].roi_heads
        x = roi_heads.box_pooler(
            [teacher.features[f] for f in roi_heads.box_in_features],
            [p.proposal_boxes for p in sampled],
        )
        _, acts = box_head_activations(roi_heads.box_head, x, self.layers)
        return {k: v.detach() for k, v in acts.items()}


@torch.no_grad()
def _activation_shapes(
    head: FastRCNNConvFCHead, in_shape: Tuple[int, int, int], names
) -> Dict[str, Tuple[int, ...]]:
    """Per-RoI shape of each named activation of ``head`` for a pooled (C, R, R) input (one
    dry run on one zero RoI, in eval mode so that no norm statistic moves)."""
    p = next(head.parameters())
    was_training = head.training
    head.eval()
    try:
        _, acts = box_head_activations(head, p.new_zeros((1, *in_shape)), names)
    finally:
        head.train(was_training)
    return {k: tuple(v.shape[1:]) for k, v in acts.items()}


def _adapter_for(s: Tuple[int, ...], t: Tuple[int, ...]) -> nn.Module:
    if len(s) == 1:
        return nn.Linear(s[0], t[0])
    return nn.Conv2d(s[0], t[0], kernel_size=1)


class _ShapeOnlyBackbone(Backbone):
    """No layers: only the student's output shapes, so that detectron2's FCOS (which reads
    strides from its backbone) can compute its losses on the student's FPN maps."""

    def __init__(self, shapes: Dict[str, ShapeSpec]):
        super().__init__()
        self._shapes = dict(shapes)

    def output_shape(self):
        return self._shapes

    def forward(self, x):
        raise RuntimeError("The FCOS assistant runs on the student's features only.")


def _fcos_head_with_towers(head: FCOSHead, features: List[Tensor]):
    """``FCOSHead.forward`` (the same code path, per-level scales included) that also returns
    the cls-tower output per level: ``([logits, deltas, centerness], towers)``."""
    logits, deltas, ctr, towers = head.forward_with_towers(features)
    return [logits, deltas, ctr], towers


@DISTILLER_REGISTRY.register()
class TFHEADDistiller(_HEADBase):
    """TF-HEAD (teacher-free; the official ``dev`` branch): the RoI assistant (random init)
    and, with TF.FCOS_ASSIST, an FCOS assistant head on the student's head levels, both
    trained with the student (their losses reach its FPN and backbone, x a linear warm-up);
    the student's RetinaNet cls tower regressed onto their *detached* features.

    Losses: ``loss_assist_cls``, ``loss_assist_box_reg`` and ``loss_assist_fcos_{cls,loc,ctr}``
    (x TF.FCOS_LOSS_WEIGHTS) x min(iteration / TF.ASSIST_LOSS_WARMUP_ITERS, 1);
    ``loss_distill_self_fcos`` = sum over levels of mean((conv1x1(S_l) - sg(F_l))^2) (one conv
    shared by all levels; S_l / F_l the RetinaNet / FCOS cls-tower outputs) x
    TF.SELF_FCOS_WEIGHT; ``loss_distill_self_rcnn`` = MSE between the adapted cls-tower vector
    at each non-GT RoI's anchor and sg(the assistant's AKD.LAYERS[-1] activation) x
    TF.SELF_RCNN_WEIGHT; both x min(iteration / TF.WARMUP_ITERS, 1), 0 from TF.EARLY_STOP_ITER.
    """

    loss_names = (
        "loss_assist_cls",
        "loss_assist_box_reg",
        "loss_assist_fcos_cls",
        "loss_assist_fcos_loc",
        "loss_assist_fcos_ctr",
        "loss_distill_self_fcos",
        "loss_distill_self_rcnn",
    )

    def __init__(self, cfg, student_shape, teacher_shape):
        super().__init__(cfg, student_shape)
        if teacher_shape is not None:
            raise ValueError(
                "TFHEADDistiller is teacher-free: unset MODEL.DISTILL.TEACHER.NAME (or use "
                "HEADDistiller for a Faster R-CNN teacher)."
            )
        h = cfg.MODEL.DISTILL.HEAD
        t = h.TF
        if h.ASSIST.INIT_FROM_TEACHER:
            raise ValueError(
                "TF-HEAD has no teacher to copy the assistant from: set "
                "MODEL.DISTILL.HEAD.ASSIST.INIT_FROM_TEACHER False."
            )
        if t.SELF_RCNN_ADAPTER not in ("linear", "decouple"):
            raise ValueError(
                f"MODEL.DISTILL.HEAD.TF.SELF_RCNN_ADAPTER = {t.SELF_RCNN_ADAPTER!r}; valid: "
                "linear, decouple"
            )
        self.layer = list(h.AKD.LAYERS)[-1]
        self.assist_warmup = t.ASSIST_LOSS_WARMUP_ITERS
        self.fcos_weights = tuple(t.FCOS_LOSS_WEIGHTS)
        self.self_fcos_weight, self.self_rcnn_weight = t.SELF_FCOS_WEIGHT, t.SELF_RCNN_WEIGHT
        self.warmup, self.early_stop = t.WARMUP_ITERS, t.EARLY_STOP_ITER
        c = self._tower_channels(cfg, student_shape)
        head_in = list(cfg.MODEL.RETINANET.IN_FEATURES)
        self.fcos = None
        if t.FCOS_ASSIST:
            shapes = [student_shape[f] for f in head_in]
            # MMDetection v2's FCOSHead as the dev branch configures it (configs/kd/
            # retina_fcos_faster.py: norm_on_bbox, centerness_on_reg, center_sampling 1.5,
            # conv_bias, GN(32), 4 convs; fcos_head.py: a Scale per level, GIoU weighted by the
            # centerness targets, reduce_mean'd positive count, closed regress_ranges). The
            # assistant never runs inference, so the test-time options do not matter.
            self.fcos = FCOS(
                backbone=_ShapeOnlyBackbone({f: student_shape[f] for f in head_in}),
                head=FCOSHead(
                    input_shape=shapes,
                    conv_dims=[c] * t.FCOS_NUM_CONVS,
                    num_classes=self.num_classes,
                    norm="GN",
                    prior_prob=0.01,
                    scale_per_level=True,
                ),
                head_in_features=head_in,
                num_classes=self.num_classes,
                center_sampling_radius=1.5,
                pixel_mean=cfg.MODEL.PIXEL_MEAN,
                pixel_std=cfg.MODEL.PIXEL_STD,
                box_loss_centerness_weighted=True,
                norm_across_workers=True,
                size_range_inclusive=True,
            )
            self.self_fcos_conv = nn.Conv2d(c, c, kernel_size=1)
        out = _activation_shapes(
            self.assistant.box_head,
            (self.assistant_channels, *self.assistant.box_pooler.output_size),
            [self.layer],
        )[self.layer]
        if len(out) != 1:
            raise ValueError(
                f"TF-HEAD regresses a vector onto the assistant's {self.layer!r} output, which "
                f"is a map {out}: make MODEL.DISTILL.HEAD.AKD.LAYERS end with an fc layer."
            )
        num_anchors = len(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]) * len(
            cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]
        )
        if t.SELF_RCNN_ADAPTER == "decouple":
            self.self_rcnn_adapter = _Decouple(c, out[0], num_anchors)
        else:
            self.self_rcnn_adapter = nn.Linear(c, out[0])

    def check_models(self, student, teacher) -> None:
        super().check_models(student, teacher)
        a = student.anchor_generator.num_cell_anchors[0]
        if isinstance(self.self_rcnn_adapter, _Decouple) and self.self_rcnn_adapter.num != a:
            raise ValueError(
                f"TF-HEAD's decouple adapter has {self.self_rcnn_adapter.num} slices but the "
                f"student has {a} anchors per location."
            )

    def forward(self, student: DetectorOutputs, teacher, assignment):
        it = get_event_storage().iter
        warm = ramp_weight(1.0, self.assist_warmup, it)
        w_self = ramp_weight(1.0, self.warmup, it, self.early_stop)
        losses, sampled, acts = self._assist_losses(student, [self.layer], warm)
        towers = student.extras["cls_tower"]
        zero = towers[0].sum() * 0.0
        losses.update({k: zero for k in self.loss_names if k not in losses})
        if self.fcos is not None:
            head_in = [student.features[f] for f in student.head_in_features]
            predictions, fcos_towers = _fcos_head_with_towers(self.fcos.head, head_in)
            fl = self.fcos.forward_training(
                student.images, head_in, predictions, student.gt_instances
            )
            for (k, v), wk in zip(
                (
                    ("cls", fl["loss_fcos_cls"]),
                    ("loc", fl["loss_fcos_loc"]),
                    ("ctr", fl["loss_fcos_ctr"]),
                ),
                self.fcos_weights,
            ):
                losses[f"loss_assist_fcos_{k}"] = v * wk * warm
            if w_self > 0 and self.self_fcos_weight > 0:
                total = sum(
                    F.mse_loss(self.self_fcos_conv(s), f.detach())
                    for s, f in zip(towers, fcos_towers)
                )
                losses["loss_distill_self_fcos"] = total * self.self_fcos_weight * w_self
        if w_self > 0 and self.self_rcnn_weight > 0:
            loss = anchor_feature_loss(
                self.self_rcnn_adapter, towers, self._id_rows(sampled), acts[self.layer].detach()
            )
            losses["loss_distill_self_rcnn"] = loss * self.self_rcnn_weight * w_self
        return losses
