"""PAA (Probabilistic Anchor Assignment) as a detectron2 meta-architecture, ``"PAA"``.

Kim & Lee, "Probabilistic Anchor Assignment with IoU Prediction for Object Detection" (ECCV
2020, arXiv:2007.08103; kkhoot/PAA), as MMDetection's ``PAAHead`` implements it, which LAD and
CoLAD (Nguyen et al., WACV 2022, arXiv:2108.10520; cybercore-co-ltd/CoLAD) build on.

Shape shorthand: N images, R anchors (one per location, level-major), K = MODEL.PAA.NUM_CLASSES.

* Head: per level, a classification and a regression tower (NUM_CONVS x [conv3x3, GN, ReLU];
  convs without bias as MMDetection unless CONV_BIAS), a 3x3 conv to K class logits (sigmoid,
  prior 0.01), a 3x3 conv to 4 box deltas times a learnable per-level scale, and a 3x3 conv on
  the regression tower to one IoU logit. ``predictions`` = [class logits (N, K, H, W), deltas
  (N, 4, H, W), IoU logits (N, 1, H, W)] per level.
* Anchors: one square anchor of side ANCHOR_SCALE x stride per location, centred at
  (x * stride, y * stride); deltas are XYWH with weights BBOX_REG_WEIGHTS, dw/dh clamped to
  +-log(1000 / 16); anchors on batch padding are invalid (no loss).
* Training: :func:`lgdkd.modeling.matching.paa.paa_assign` on the network's own detached
  predictions (or the targets an assigner such as LAD supplies), then focal loss over the valid
  anchors / max(positives, images), GIoU loss on positives (weighted by each positive's IoU
  target and divided by their sum; plain mean when BOX_LOSS_IOU_WEIGHTED is False, LAD's
  student loss), and BCE of the IoU logit against IoU(detached decoded box, its box) / positives.
  The counts of these normalisers are the batch's averaged over workers (NORM_ACROSS_GPUS, as
  kkhoot/PAA; the loss does not depend on how the batch is split) or this worker's (legacy:
  MMDetection, which LAD and CoLAD trained with); with one process both are the same.
* Inference: score = sqrt(sigmoid(cls) x sigmoid(IoU)); per level the TOPK_CANDIDATES_TEST
  anchors of highest max score, (box, class) pairs above SCORE_THRESH_TEST, class-wise NMS,
  TEST.DETECTIONS_PER_IMAGE, then score voting (:func:`lgdkd.layers.paa_score_voting`).
"""

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor, nn

from ...layers import paa_score_voting
from ...utils.dist import mean_over_workers
from ..matching.atss import grid_anchors, valid_anchor_mask
from ..matching.paa import paa_assign
from ..matching.targets import AssignsTargets, DenseTargets
from .dense_inference import candidates, detections, top_locations
from .head_parts import (
    Scale,
    aligned_iou,
    check_head_features,
    conv_tower,
    init_convs_normal,
    shared_head_channels,
)

__all__ = ["PAA", "PAAHead", "check_same_anchor_layout"]

_MAX_LOG_RATIO = math.log(1000.0 / 16)


class PAAHead(nn.Module):
    """Shared PAA head; see the module docstring for its outputs."""

    def __init__(
        self,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        conv_bias: bool = False,
    ):
        super().__init__()
        c = shared_head_channels(input_shape, "PAAHead")
        self.num_classes = num_classes
        self.cls_subnet = conv_tower(c, num_convs, norm, bias=conv_bias or not norm)
        self.bbox_subnet = conv_tower(c, num_convs, norm, bias=conv_bias or not norm)
        self.cls_score = nn.Conv2d(c, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.iou_pred = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])
        init_convs_normal(
            self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred, self.iou_pred
        )
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: List[Tensor]):
        logits, deltas, ious = [], [], []
        for x, scale in zip(features, self.scales):
            logits.append(self.cls_score(self.cls_subnet(x)))
            r = self.bbox_subnet(x)
            deltas.append(scale(self.bbox_pred(r)).float())
            ious.append(self.iou_pred(r))
        return [logits, deltas, ious]


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def check_same_anchor_layout(student, teacher, what: str = "teacher"):
    """Refuse a ``teacher`` PAA detector whose anchors differ from the ``student``'s (levels,
    strides, anchor scale, box coder): LAD and CoLAD exchange anchor indices, not boxes."""
    for name, model in (("student", student), (what, teacher)):
        if not isinstance(model, PAA):
            raise TypeError(
                f"The {name} must be a PAA detector (META_ARCHITECTURE / "
                f"STUDENT_META_ARCHITECTURE 'PAA'), got {type(model).__name__}."
            )
    for attr, key in (
        ("head_in_features", "MODEL.PAA.IN_FEATURES"),
        ("strides", "the backbone strides of MODEL.PAA.IN_FEATURES"),
        ("anchor_scale", "MODEL.PAA.ANCHOR_SCALE"),
        ("bbox_reg_weights", "MODEL.PAA.BBOX_REG_WEIGHTS"),
        ("num_classes", "MODEL.PAA.NUM_CLASSES"),
    ):
        a, b = _plain(getattr(student, attr)), _plain(getattr(teacher, attr))
        if a != b:
            raise ValueError(
                f"The {what}'s anchor layout differs from the student's: {key} is {b} for the "
                f"{what} and {a} for the student. Label assignment is exchanged as anchor "
                "indices, so both must use the same levels, strides and anchors."
            )
    s_div = student.backbone.size_divisibility
    t_div = teacher.backbone.size_divisibility
    if s_div != t_div:
        raise ValueError(
            f"The {what}'s backbone pads images to a multiple of {t_div}, the student's to "
            f"{s_div}: their feature maps would not have the same sizes."
        )


@META_ARCH_REGISTRY.register()
class PAA(AssignsTargets, DenseDetector):
    """PAA detector; keys under MODEL.PAA (lgdkd/config.py)."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: PAAHead,
        head_in_features: List[str],
        num_classes: int,
        anchor_scale: float = 8.0,
        bbox_reg_weights: Tuple[float, ...] = (10.0, 10.0, 5.0, 5.0),
        topk: int = 9,
        iou_thresh: float = 0.1,
        low_quality: str = "mmdet",
        split_rule: str = "mmdet",
        cost_reg_weight: float = 1.3,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_weight_cls: float = 1.0,
        loss_weight_box: float = 1.3,
        loss_weight_iou: float = 0.5,
        box_loss_iou_weighted: bool = True,
        norm_across_gpus: bool = True,
        gmm_max_iter: int = 100,
        gmm_tol: float = 1e-3,
        gmm_reg_covar: float = 1e-6,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        score_voting: bool = True,
        voting_sigma: float = 0.025,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
    ):
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        for key, value, valid in (
            ("LOW_QUALITY", low_quality, ("mmdet", "original")),
            ("SPLIT_RULE", split_rule, ("mmdet", "original")),
        ):
            if value not in valid:
                raise ValueError(f"MODEL.PAA.{key} = {value!r}; valid: {', '.join(valid)}")
        shapes = backbone.output_shape()
        self.strides = [shapes[f].stride for f in head_in_features]
        self.num_classes = num_classes
        self.anchor_scale = anchor_scale
        self.bbox_reg_weights = tuple(bbox_reg_weights)
        self.box2box = Box2BoxTransform(weights=self.bbox_reg_weights, scale_clamp=_MAX_LOG_RATIO)
        self.assign_kwargs = dict(
            topk=topk,
            iou_thresh=iou_thresh,
            low_quality=low_quality,
            cost_reg_weight=cost_reg_weight,
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
            rule=split_rule,
            gmm_max_iter=gmm_max_iter,
            gmm_tol=gmm_tol,
            gmm_reg_covar=gmm_reg_covar,
        )
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.loss_weight_cls, self.loss_weight_box = loss_weight_cls, loss_weight_box
        self.loss_weight_iou = loss_weight_iou
        self.box_loss_iou_weighted = box_loss_iou_weighted
        self.norm_across_gpus = norm_across_gpus
        self.test_score_thresh, self.test_topk_candidates = test_score_thresh, test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.score_voting, self.voting_sigma = score_voting, voting_sigma
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        p = cfg.MODEL.PAA
        shapes = backbone.output_shape()
        check_head_features(cfg, "MODEL.PAA.IN_FEATURES", p.IN_FEATURES, shapes)
        if len(p.BBOX_REG_WEIGHTS) != 4:
            raise ValueError(f"MODEL.PAA.BBOX_REG_WEIGHTS needs 4 values, got {p.BBOX_REG_WEIGHTS}")
        head = PAAHead(
            [shapes[f] for f in p.IN_FEATURES],
            num_classes=p.NUM_CLASSES,
            num_convs=p.NUM_CONVS,
            norm=p.NORM,
            prior_prob=p.PRIOR_PROB,
            conv_bias=p.CONV_BIAS,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(p.IN_FEATURES),
            "num_classes": p.NUM_CLASSES,
            "anchor_scale": p.ANCHOR_SCALE,
            "bbox_reg_weights": tuple(p.BBOX_REG_WEIGHTS),
            "topk": p.TOPK,
            "iou_thresh": p.IOU_THRESH,
            "low_quality": p.LOW_QUALITY,
            "split_rule": p.SPLIT_RULE,
            "cost_reg_weight": p.COST_REG_WEIGHT,
            "focal_alpha": p.FOCAL_LOSS_ALPHA,
            "focal_gamma": p.FOCAL_LOSS_GAMMA,
            "loss_weight_cls": p.CLS_WEIGHT,
            "loss_weight_box": p.BOX_WEIGHT,
            "loss_weight_iou": p.IOU_WEIGHT,
            "box_loss_iou_weighted": p.BOX_LOSS_IOU_WEIGHTED,
            "norm_across_gpus": p.NORM_ACROSS_GPUS,
            "gmm_max_iter": p.GMM_MAX_ITER,
            "gmm_tol": p.GMM_TOL,
            "gmm_reg_covar": p.GMM_REG_COVAR,
            "test_score_thresh": p.SCORE_THRESH_TEST,
            "test_topk_candidates": p.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": p.NMS_THRESH_TEST,
            "score_voting": p.SCORE_VOTING,
            "voting_sigma": p.VOTING_SIGMA,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    # ----------------------------------------------------------------------------- anchors
    def anchors(self, features: List[Tensor]) -> Tuple[Tensor, List[int]]:
        """(R, 4) anchors and the number of anchors of each level."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        return grid_anchors(sizes, self.strides, self.anchor_scale, features[0].device)

    def valid_mask(self, features: List[Tensor], image_sizes) -> Tensor:
        """(N, R) bool: anchors whose cell lies on the image (its size padded to the
        backbone's size_divisibility), not on padding added for larger images."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        div = self.backbone.size_divisibility
        device = features[0].device
        return torch.stack(
            [valid_anchor_mask(s, sizes, self.strides, div, device) for s in image_sizes]
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from (..., 4) deltas on (..., 4) anchors; dw, dh clamped to +-log(1000/16)."""
        shape = deltas.shape
        d = deltas.reshape(-1, 4).float()
        d = torch.cat([d[:, :2], d[:, 2:].clamp(min=-_MAX_LOG_RATIO)], dim=1)
        a = anchors.expand(shape).reshape(-1, 4).float()
        return self.box2box.apply_deltas(d, a).reshape(shape)

    def flatten_predictions(self, predictions) -> List[Tensor]:
        """(N, R, K) class logits, (N, R, 4) deltas, (N, R) IoU logits."""
        logits, deltas, ious = (
            cat(p, dim=1)
            for p in self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1])
        )
        return [logits, deltas, ious.squeeze(-1)]

    # ----------------------------------------------------------------------------- training
    @torch.no_grad()
    def label_anchors(self, features: List[Tensor], gt_instances: List[Instances], predictions):
        """PAA targets of the batch from this network's own (detached) predictions."""
        anchors, counts = self.anchors(features)
        image_sizes = [gt.image_size for gt in gt_instances]
        valid = self.valid_mask(features, image_sizes)
        logits, deltas, _ = self.flatten_predictions(predictions)
        boxes = self.decode(deltas.detach(), anchors[None])
        return paa_assign(
            anchors,
            counts,
            valid,
            gt_instances,
            logits.detach(),
            boxes,
            self.num_classes,
            **self.assign_kwargs,
        )

    def dense_targets(self, features, predictions, gt_instances) -> DenseTargets:
        return self.label_anchors(features, gt_instances, predictions)

    def dense_losses(self, predictions, targets: DenseTargets) -> dict:
        return self.losses(targets, predictions)

    def _normalisers(self, num_pos: Tensor, n_img: int, iou_sum: Tensor) -> Tuple[Tensor, ...]:
        """(classification, positives, IoU-target sum) normalisers from this worker's positive
        count, images and sum of IoU targets (0-dim tensors).

        The classification one is MMDetection's max(positives, images). With NORM_ACROSS_GPUS
        all three are the whole batch's / W: both counts are averaged over the W workers before
        the max, and the clamps' bounds are divided by W (as in
        :func:`lgdkd.utils.dist.count_over_workers`), so that the losses averaged over workers
        by DDP are the one-process losses on the whole batch. Legacy: this worker's counts.
        Always computed, also without positives: the all-reduce is collective.
        """
        local = torch.stack([num_pos, num_pos.new_tensor(float(n_img)), iou_sum]).detach()
        world = comm.get_world_size() if self.norm_across_gpus else 1
        pos, img, iou = mean_over_workers(local) if self.norm_across_gpus else local
        cls_norm = torch.maximum(pos, img).clamp(min=1.0 / world)
        return cls_norm, pos.clamp(min=1.0 / world), iou.clamp(min=1e-12 / world)

    def losses(self, targets: DenseTargets, predictions) -> dict:
        logits, deltas, iou_logits = self.flatten_predictions(predictions)
        n_img = logits.shape[0]
        pos, valid = targets.positive, targets.valid
        if logits.shape[1] != pos.shape[1]:
            raise ValueError(
                f"PAA targets cover {pos.shape[1]} anchors but the head predicts "
                f"{logits.shape[1]}: targets from a network with another anchor layout."
            )
        num_pos = pos.sum().float()
        if bool(pos.any()):
            anchors = targets.anchors[None].expand(n_img, -1, -1)[pos]
            pred = self.decode(deltas[pos], anchors)
            gt = targets.matched_boxes[pos].float()
            iou_target = aligned_iou(pred.detach(), gt)
            iou_weight = iou_target.clamp(min=1e-12)
            iou_sum = iou_weight.sum()
        else:
            iou_sum = num_pos.new_zeros(())
        cls_norm, pos_norm, iou_norm = self._normalisers(num_pos, n_img, iou_sum)

        onehot = F.one_hot(targets.labels[valid], self.num_classes + 1)[:, :-1].to(logits.dtype)
        loss_cls = (
            sigmoid_focal_loss(
                logits[valid].float(),
                onehot.float(),
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="sum",
            )
            / cls_norm
        )

        if bool(pos.any()):
            giou = giou_loss(pred, gt, reduction="none")
            if self.box_loss_iou_weighted:
                loss_box = (giou * iou_weight).sum() / iou_norm
            else:
                loss_box = giou.sum() / pos_norm
            loss_iou = (
                F.binary_cross_entropy_with_logits(
                    iou_logits[pos].float(), iou_target, reduction="sum"
                )
                / pos_norm
            )
        else:  # keep the graph (and DDP) intact
            loss_box = deltas.sum() * 0.0
            loss_iou = iou_logits.sum() * 0.0
        self._log_stats(targets)
        return {
            "loss_cls": self.loss_weight_cls * loss_cls,
            "loss_bbox": self.loss_weight_box * loss_box,
            "loss_iou": self.loss_weight_iou * loss_iou,
        }

    @staticmethod
    def _log_stats(targets: DenseTargets):
        try:
            storage = get_event_storage()
        except (AssertionError, IndexError):
            return
        for k, v in targets.stats.items():
            storage.put_scalar(f"paa/{k}", v)

    # ---------------------------------------------------------------------------- inference
    def forward_inference(self, images, features, predictions):
        anchors, counts = self.anchors(features)
        logits, deltas, iou_logits = self.flatten_predictions(predictions)
        scores = torch.sqrt(logits.float().sigmoid() * iou_logits.float().sigmoid()[..., None])
        results = []
        for i, image_size in enumerate(images.image_sizes):
            results.append(
                self.inference_single_image(
                    scores[i].split(counts),
                    deltas[i].split(counts),
                    anchors.split(counts),
                    image_size,
                )
            )
        return results

    def inference_single_image(
        self,
        scores: List[Tensor],
        deltas: List[Tensor],
        anchors: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        boxes_all, scores_all = [], []
        for s, d, a in zip(scores, deltas, anchors):
            s, d, a = top_locations(s, self.test_topk_candidates, d, a)
            b = Boxes(self.decode(d, a))
            b.clip(image_size)
            boxes_all.append(b.tensor)
            scores_all.append(s)
        cand_boxes, cand_scores, cls = candidates(boxes_all, scores_all, self.test_score_thresh)
        keep = batched_nms(cand_boxes, cand_scores, cls, self.test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        out_boxes = cand_boxes[keep]
        if self.score_voting:
            out_boxes = paa_score_voting(
                out_boxes, cls[keep], cand_boxes, cand_scores, cls, sigma=self.voting_sigma
            )
        return detections(image_size, out_boxes, cand_scores[keep], cls[keep])
