"""GFocal (Generalized Focal Loss V1 and V2) as a detectron2 meta-architecture, ``"GFL"``.

Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for Dense
Object Detection" (NeurIPS 2020, arXiv:2006.04388) and "Generalized Focal Loss V2: Learning
Reliable Localization Quality Estimation for Dense Object Detection" (CVPR 2021,
arXiv:2011.12885). Behaviour follows MMDetection's ``GFLHead`` / ``GFocalHead`` as used by the
LD repository (HikariTJU/LD), the teachers and students of localization distillation.

Shape shorthand: N images, L levels, H_l x W_l level size, R = sum_l H_l W_l locations (one
square anchor each), K = MODEL.GFL.NUM_CLASSES, n = MODEL.GFL.REG_MAX (bins 0..n), P positives.

* Head: per level, a classification and a regression tower (NUM_CONVS x [conv3x3 without bias,
  GN, ReLU]), a 3x3 conv to K class logits (sigmoid; the target is the joint class x IoU score)
  and a 3x3 conv to 4 (n+1) box-side logits (side-major l, t, r, b), multiplied by a learnable
  per-level scale. V2 (MODEL.GFL.DGQP) adds the distribution-guided quality predictor: per side
  the top-k bin probabilities and their mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gives a
  quality I, and the score is sigmoid(class logit) * I.
* Head outputs (``predictions`` of a DenseDetector): [class logits (N, K, H, W) per level,
  box-side logits (N, 4 (n+1), H, W) per level] and for V2 a third list, the quality I
  (N, 1, H, W). Distillers read the logits before any sigmoid.
* Training: ATSS assignment (lgdkd.modeling.matching.atss), Quality Focal Loss over every valid
  location and class / N_pos, GIoU (or CIoU) and Distribution Focal Loss on positives weighted by
  the student's own detached max score and divided by the sum of those weights (averaged over
  workers), as in the spec of the LD repository's GFLHead.
* Inference: per level the top TOPK_CANDIDATES_TEST locations by max class score, decoding from
  the anchor centres, clipping, class-wise NMS (or score-voting Cluster-DIoU-NMS) over the
  (box, class) pairs above SCORE_THRESH_TEST, at most TEST.DETECTIONS_PER_IMAGE.
"""

import math
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.layers.losses import ciou_loss
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Instances
from fvcore.nn import giou_loss
from torch import Tensor, nn

from ...layers import (
    bbox2distance,
    distance2bbox,
    distribution_focal_loss,
    integral_distances,
    quality_focal_loss,
    voting_cluster_diou_nms,
)
from ...utils.dist import count_over_workers
from ..matching.atss import atss_assign, grid_anchors, valid_anchor_mask
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

__all__ = ["GFL", "GFLHead"]


class GFLHead(nn.Module):
    """Shared GFocal head; see the module docstring for its outputs."""

    def __init__(
        self,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        reg_max: int = 16,
        dgqp: bool = False,
        dgqp_topk: int = 4,
        dgqp_channels: int = 64,
        dgqp_add_mean: bool = True,
    ):
        super().__init__()
        c = shared_head_channels(input_shape, "GFLHead")
        self.num_classes, self.reg_max = num_classes, reg_max
        self.cls_subnet = conv_tower(c, num_convs, norm, bias=not norm)
        self.bbox_subnet = conv_tower(c, num_convs, norm, bias=not norm)
        self.cls_score = nn.Conv2d(c, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])
        init_convs_normal(self.cls_subnet, self.bbox_subnet, self.cls_score, self.bbox_pred)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))
        self.dgqp = dgqp
        if dgqp:
            self.dgqp_topk, self.dgqp_add_mean = dgqp_topk, dgqp_add_mean
            stats = 4 * (dgqp_topk + int(dgqp_add_mean))
            self.reg_conf = nn.Sequential(
                nn.Conv2d(stats, dgqp_channels, 1), nn.ReLU(), nn.Conv2d(dgqp_channels, 1, 1)
            )
            for m in self.reg_conf.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, features: List[Tensor]):
        logits, reg, quality = [], [], []
        for x, scale in zip(features, self.scales):
            logits.append(self.cls_score(self.cls_subnet(x)))
            r = scale(self.bbox_pred(self.bbox_subnet(x))).float()
            reg.append(r)
            if self.dgqp:
                n, _, h, w = r.shape
                prob = F.softmax(r.reshape(n, 4, self.reg_max + 1, h, w), dim=2)
                top, _ = prob.topk(self.dgqp_topk, dim=2)
                stat = (
                    torch.cat([top, top.mean(dim=2, keepdim=True)], 2)
                    if self.dgqp_add_mean
                    else top
                )
                quality.append(self.reg_conf(stat.reshape(n, -1, h, w)).sigmoid())
        return [logits, reg, quality] if self.dgqp else [logits, reg]


@META_ARCH_REGISTRY.register()
class GFL(AssignsTargets, DenseDetector):
    """GFocal V1/V2 detector; keys under MODEL.GFL (lgdkd/config.py)."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: GFLHead,
        head_in_features: List[str],
        num_classes: int,
        reg_max: int = 16,
        anchor_scale: float = 8.0,
        atss_topk: int = 9,
        qfl_beta: float = 2.0,
        loss_weight_qfl: float = 1.0,
        loss_weight_dfl: float = 0.25,
        loss_weight_box: float = 2.0,
        box_loss: str = "giou",
        dfl_target_eps: float = 0.1,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        nms_type: str = "nms",
        nms_max_candidates: int = 3000,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
    ):
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if box_loss not in ("giou", "ciou"):
            raise ValueError(f"MODEL.GFL.BOX_LOSS = {box_loss!r}; valid: giou, ciou")
        if nms_type not in ("nms", "voting_cluster_diou"):
            raise ValueError(f"MODEL.GFL.NMS_TYPE = {nms_type!r}; valid: nms, voting_cluster_diou")
        shapes = backbone.output_shape()
        self.strides = [shapes[f].stride for f in head_in_features]
        self.num_classes, self.reg_max = num_classes, reg_max
        self.anchor_scale, self.atss_topk = anchor_scale, atss_topk
        self.qfl_beta = qfl_beta
        self.loss_weight_qfl, self.loss_weight_dfl = loss_weight_qfl, loss_weight_dfl
        self.loss_weight_box, self.box_loss, self.dfl_target_eps = (
            loss_weight_box,
            box_loss,
            dfl_target_eps,
        )
        self.test_score_thresh, self.test_topk_candidates = test_score_thresh, test_topk_candidates
        self.test_nms_thresh, self.nms_type = test_nms_thresh, nms_type
        self.nms_max_candidates = nms_max_candidates
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        g = cfg.MODEL.GFL
        shapes = backbone.output_shape()
        check_head_features(cfg, "MODEL.GFL.IN_FEATURES", g.IN_FEATURES, shapes)
        if g.REG_MAX < 1:
            raise ValueError(f"MODEL.GFL.REG_MAX must be >= 1, got {g.REG_MAX}")
        head = GFLHead(
            [shapes[f] for f in g.IN_FEATURES],
            num_classes=g.NUM_CLASSES,
            num_convs=g.NUM_CONVS,
            norm=g.NORM,
            prior_prob=g.PRIOR_PROB,
            reg_max=g.REG_MAX,
            dgqp=g.DGQP,
            dgqp_topk=g.DGQP_TOPK,
            dgqp_channels=g.DGQP_CHANNELS,
            dgqp_add_mean=g.DGQP_ADD_MEAN,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(g.IN_FEATURES),
            "num_classes": g.NUM_CLASSES,
            "reg_max": g.REG_MAX,
            "anchor_scale": g.ANCHOR_SCALE,
            "atss_topk": cfg.MODEL.ATSS.TOPK,
            "qfl_beta": g.QFL_BETA,
            "loss_weight_qfl": g.QFL_WEIGHT,
            "loss_weight_dfl": g.DFL_WEIGHT,
            "loss_weight_box": g.BOX_WEIGHT,
            "box_loss": g.BOX_LOSS,
            "dfl_target_eps": g.DFL_TARGET_EPS,
            "test_score_thresh": g.SCORE_THRESH_TEST,
            "test_topk_candidates": g.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": g.NMS_THRESH_TEST,
            "nms_type": g.NMS_TYPE,
            "nms_max_candidates": g.NMS_MAX_CANDIDATES,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def dgqp(self) -> bool:
        return self.head.dgqp

    # ----------------------------------------------------------------------------- anchors
    def anchors(self, features: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor, List[int]]:
        """Anchor boxes (R, 4), centres (R, 2), strides (R,) and locations per level."""
        sizes = [tuple(f.shape[-2:]) for f in features]
        device = features[0].device
        boxes, counts = grid_anchors(sizes, self.strides, self.anchor_scale, device)
        strides = torch.cat(
            [torch.full((n,), float(s), device=device) for n, s in zip(counts, self.strides)]
        )
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        return boxes, centers, strides, counts

    def scores(self, predictions) -> List[Tensor]:
        """Per level (N, K, H, W) detection scores: sigmoid(logits) (x quality for V2)."""
        if self.dgqp:
            return [c.sigmoid() * q for c, q in zip(predictions[0], predictions[2])]
        return [c.sigmoid() for c in predictions[0]]

    # ----------------------------------------------------------------------------- training
    @torch.no_grad()
    def label_anchors(self, features: List[Tensor], gt_instances: List[Instances]) -> DenseTargets:
        """ATSS targets of the batch (:class:`~lgdkd.modeling.matching.DenseTargets`)."""
        anchors, centers, strides, counts = self.anchors(features)
        sizes = [tuple(f.shape[-2:]) for f in features]
        div = self.backbone.size_divisibility
        valid, matched, labels, boxes, thresholds = [], [], [], [], []
        for gt in gt_instances:
            v = valid_anchor_mask(gt.image_size, sizes, self.strides, div, anchors.device)
            gt_boxes = gt.gt_boxes.tensor
            res = atss_assign(anchors, counts, gt_boxes, v, self.atss_topk)
            pos = res.matched >= 0
            idx = res.matched.clamp(min=0)
            if len(gt) > 0:
                lab = torch.where(pos, gt.gt_classes[idx], torch.full_like(idx, self.num_classes))
                box = torch.where(pos[:, None], gt_boxes[idx], anchors)
            else:
                lab = torch.full_like(idx, self.num_classes)
                box = anchors.clone()
            valid.append(v)
            matched.append(res.matched)
            labels.append(lab)
            boxes.append(box)
            thresholds.append(res.thresholds)
        return DenseTargets(
            anchors=anchors,
            centers=centers,
            strides=strides,
            num_per_level=counts,
            num_classes=self.num_classes,
            valid=torch.stack(valid),
            matched=torch.stack(matched),
            labels=torch.stack(labels),
            matched_boxes=torch.stack(boxes),
            thresholds=thresholds,
        )

    def flatten_predictions(self, predictions) -> List[Tensor]:
        """(N, R, K) logits, (N, R, 4 (n+1)) box-side logits [, (N, R, 1) quality]."""
        dims = [self.num_classes, 4 * (self.reg_max + 1)] + ([1] if self.dgqp else [])
        return [cat(p, dim=1) for p in self._transpose_dense_predictions(predictions, dims)]

    def dense_targets(self, features, predictions, gt_instances) -> DenseTargets:
        return self.label_anchors(features, gt_instances)

    def dense_losses(self, predictions, targets: DenseTargets) -> dict:
        return self.losses(targets, predictions)

    def positive_weights(self, flat: List[Tensor]) -> Tensor:
        """(N, R) detached weight of each location: its max class score (V2: max joint
        score), the w_i of the box and DFL losses and of LD."""
        with torch.no_grad():
            if self.dgqp:
                return (flat[0].float().sigmoid() * flat[2].float()).amax(dim=2)
            return flat[0].float().sigmoid().amax(dim=2)

    def losses(self, targets: DenseTargets, predictions) -> dict:
        flat = self.flatten_predictions(predictions)
        logits, reg = flat[0].float(), flat[1].float()
        pos = targets.positive
        n_img = pos.shape[0]
        # N_pos: sum over the batch's images of max(positives, 1), / workers (count_over_workers)
        per_image = pos.sum(dim=1).clamp(min=1).sum().float()
        num_pos = count_over_workers(per_image)

        strides = targets.strides[None].expand(n_img, -1)[pos]  # (P,)
        points = targets.centers[None].expand(n_img, -1, -1)[pos] / strides[:, None]
        reg_pos = reg[pos]  # (P, 4 (n+1))
        pred_dist = integral_distances(reg_pos, self.reg_max)
        pred_boxes = distance2bbox(points, pred_dist)  # stride units
        gt_boxes = targets.matched_boxes[pos].float() / strides[:, None]
        weights = self.positive_weights(flat)[pos]  # (P,)
        scores = aligned_iou(pred_boxes.detach(), gt_boxes)

        valid = targets.valid
        if self.dgqp:
            joint = (logits.sigmoid() * flat[2].float())[valid]
            qfl = quality_focal_loss(
                joint,
                targets.labels[valid],
                self._scatter(scores, pos, valid),
                beta=self.qfl_beta,
                use_sigmoid=False,
            )
        else:
            qfl = quality_focal_loss(
                logits[valid],
                targets.labels[valid],
                self._scatter(scores, pos, valid),
                beta=self.qfl_beta,
                use_sigmoid=True,
            )
        loss_qfl = qfl.sum() / num_pos

        weight_sum = count_over_workers(weights.sum(), minimum=1e-6)
        if self.box_loss == "giou":
            box = giou_loss(pred_boxes, gt_boxes, reduction="none")
        else:
            box = ciou_loss(pred_boxes, gt_boxes, reduction="none")
        loss_box = (box * weights).sum() / weight_sum
        target_dist = bbox2distance(points, gt_boxes, self.reg_max, self.dfl_target_eps)
        dfl = distribution_focal_loss(
            reg_pos.reshape(-1, self.reg_max + 1), target_dist.reshape(-1)
        )
        loss_dfl = (dfl.reshape(-1, 4).mean(dim=1) * weights).sum() / weight_sum
        return {
            "loss_qfl": self.loss_weight_qfl * loss_qfl,
            "loss_bbox": self.loss_weight_box * loss_box,
            "loss_dfl": self.loss_weight_dfl * loss_dfl,
        }

    @staticmethod
    def _scatter(scores: Tensor, pos: Tensor, valid: Tensor) -> Tensor:
        """IoU targets of the positives placed on the valid locations (0 elsewhere)."""
        full = torch.zeros(pos.shape, dtype=scores.dtype, device=scores.device)
        full[pos] = scores
        return full[valid]

    # ---------------------------------------------------------------------------- inference
    def forward_inference(self, images, features, predictions):
        _, centers, strides, counts = self.anchors(features)
        scores = self.scores(predictions)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            per_level_scores = [s[i].permute(1, 2, 0).reshape(-1, self.num_classes) for s in scores]
            per_level_reg = [
                r[i].permute(1, 2, 0).reshape(-1, 4 * (self.reg_max + 1)) for r in predictions[1]
            ]
            results.append(
                self.inference_single_image(
                    per_level_scores,
                    per_level_reg,
                    centers.split(counts),
                    strides.split(counts),
                    image_size,
                )
            )
        return results

    def inference_single_image(
        self,
        scores: List[Tensor],
        reg: List[Tensor],
        centers: List[Tensor],
        strides: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Per level: top TOPK_CANDIDATES_TEST locations by max class score; decode; then
        (box, class) pairs above SCORE_THRESH_TEST, class-wise NMS, top DETECTIONS_PER_IMAGE."""
        boxes_all, scores_all = [], []
        for s, r, c, st in zip(scores, reg, centers, strides):
            s, r, c, st = top_locations(s, self.test_topk_candidates, r, c, st)
            dist = integral_distances(r, self.reg_max) * st[:, None]
            boxes_all.append(distance2bbox(c, dist, max_shape=image_size))
            scores_all.append(s)
        cand_boxes, cand_scores, cls = candidates(boxes_all, scores_all, self.test_score_thresh)
        if self.nms_type == "nms":
            keep = batched_nms(cand_boxes, cand_scores, cls, self.test_nms_thresh)
            keep = keep[: self.max_detections_per_image]
            out_boxes = cand_boxes[keep]
        else:
            keep, out_boxes = voting_cluster_diou_nms(
                cand_boxes,
                cand_scores,
                cls,
                self.test_nms_thresh,
                max_candidates=self.nms_max_candidates,
                max_detections=self.max_detections_per_image,
            )
        return detections(image_size, out_boxes, cand_scores[keep], cls[keep])
