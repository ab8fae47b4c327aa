"""FCOS from a yacs config, registered in detectron2's ``META_ARCH_REGISTRY`` as ``"FCOS"``.

detectron2 v0.6 ships ``detectron2.modeling.meta_arch.fcos.FCOS`` (a ``DenseDetector``) but builds
it only from LazyConfig. :class:`FCOS` here is that class with a ``from_config`` reading
``MODEL.FCOS.*`` (see ``_add_fcos_config`` in lgdkd/config.py), so it is an ordinary yacs
meta-architecture. Defaults plus configs/Base-FCOS.yaml reproduce detectron2's
``COCO-Detection/fcos_R_50_FPN_1x.py``: network, losses and outputs are detectron2's.

Official option set. The FCOS that LGD trains (megvii-research/LGD
``models/customized_detectors/thirdparty_heads/fcos.py``, a port of cvpods'
``cvpods/modeling/meta_arch/fcos.py``, configured by ``build_fcos`` in ``utils/build.py``) and
TF-HEAD's FCOS assistant (LutingWang/HEAD branch dev: MMDetection v2.20's
``mmdet/models/dense_heads/fcos_head.py`` as ``configs/kd/retina_fcos_faster.py`` sets it up)
differ from detectron2's in five switches, all off by default:

* ``scale_per_level`` (head): a learnable scalar per level, initialised to 1, multiplies the
  box-regression output. The output stays in units of the level's stride and the box transform
  (``Box2BoxTransformLinear(normalize_by_size=True)``) applies ReLU and multiplies by the
  stride, which is ``relu(scale * x) * stride`` of both official heads (cvpods at train and test
  time; MMDetection's ``norm_on_bbox`` multiplies at test time only, its targets are divided by
  the stride instead, and IoU does not change under that common scaling);
* ``box_loss_centerness_weighted``: the GIoU loss of each positive weighted by its centerness
  target and normalised by the sum of those targets (averaged over workers);
* ``norm_across_workers``: classification and centerness losses (and the unweighted box loss)
  divided by this batch's positive count averaged over the W workers, max(count, 1) / W,
  instead of detectron2's per-process EMA of the count. The official max(mean count, 1) is the
  same unless the whole batch has fewer than W positives; clamping the batch's count keeps
  2 workers x n images exactly equal to 1 worker x 2n;
* ``size_range_inclusive``: a location is positive on a level when the largest distance to
  its box lies in [lo, hi] (detectron2: (lo, hi)); the ranges themselves are the same (4 and 8
  strides, i.e. 0-64-128-256-512-inf on P3-P7, the official OBJECT_SIZES_OF_INTEREST /
  regress_ranges);
* ``filter_on_cls_prob_test``: SCORE_THRESH_TEST and TOPK_CANDIDATES_TEST select on the class
  probability p, and the kept detections score sqrt(p * centerness) (cvpods); detectron2
  selects on sqrt(p * centerness) itself.

What detectron2 already shares with both: anchor points at (i + 0.5) * stride, centre sampling
of radius 1.5 strides, GIoU, centerness on the regression tower, GN(32) towers of biased convs,
N(0, 0.01) initialisation with the class prior 0.01, NMS 0.6 (cvpods; MMDetection 0.5).

That LazyConfig computes P6/P7 from the FPN output P5 (256 channels), not from C5 as
``build_retinanet_resnet_fpn_backbone`` does;
:func:`lgdkd.modeling.backbones.build_fcos_resnet_fpn_backbone` is the yacs builder of that
backbone.

Shape shorthand: N images, L levels, R = sum_l Hl * Wl locations (one anchor point each),
P positive locations of the batch, K = MODEL.FCOS.NUM_CLASSES, C tower channels.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _DetectronFCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead as _DetectronFCOSHead
from detectron2.structures import Boxes, ImageList, Instances, pairwise_point_box_distance
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, sigmoid_focal_loss_jit
from torch import Tensor, nn

from ...utils.dist import count_over_workers

__all__ = [
    "FCOS",
    "FCOSHead",
    "Scale",
    "build_fcos_head",
]


@META_ARCH_REGISTRY.register()
class FCOS(_DetectronFCOS):
    """detectron2's FCOS, constructible from a yacs config, with the official option set.

    Training: ``model(batched_inputs)`` returns ``{"loss_fcos_cls", "loss_fcos_loc",
    "loss_fcos_ctr"}``, each normalised by an EMA of the number of positive locations
    (detectron2) or, with ``norm_across_workers``, by this batch's count averaged over workers.
    Inference: ``[{"instances": Instances}]`` with ``pred_boxes``, ``scores`` (sqrt of class
    probability times centerness) and ``pred_classes`` in [0, K).

    One fix over v0.6: an image without ground-truth boxes (a negative image, or one whose
    boxes were all cropped away) makes v0.6's anchor matching fail (a max over an empty
    dimension); here its locations are all background, as in detectron2's RetinaNet.
    """

    @configurable
    def __init__(
        self,
        *,
        box_loss_centerness_weighted: bool = False,
        norm_across_workers: bool = False,
        size_range_inclusive: bool = False,
        filter_on_cls_prob_test: bool = False,
        **kwargs,
    ):
        """
        Args:
            box_loss_centerness_weighted, norm_across_workers, size_range_inclusive,
                filter_on_cls_prob_test: the official switches of the module docstring (False:
                detectron2's behaviour). The per-level scale is an option of the head.
            kwargs: those of ``detectron2.modeling.meta_arch.fcos.FCOS``: backbone, head,
                head_in_features, num_classes, center_sampling_radius, focal_loss_alpha/gamma,
                test_score_thresh, test_topk_candidates, test_nms_thresh,
                max_detections_per_image, pixel_mean, pixel_std (and box2box_transform, left
                to its default).
        """
        super().__init__(**kwargs)
        self.box_loss_centerness_weighted = box_loss_centerness_weighted
        self.norm_across_workers = norm_across_workers
        self.size_range_inclusive = size_range_inclusive
        self.filter_on_cls_prob_test = filter_on_cls_prob_test

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        f = cfg.MODEL.FCOS
        shapes = backbone.output_shape()
        missing = [name for name in f.IN_FEATURES if name not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {missing} are not outputs of the backbone "
                f"{cfg.MODEL.BACKBONE.NAME} (it has {sorted(shapes)})"
            )
        return {
            "backbone": backbone,
            "head": build_fcos_head(cfg, [shapes[name] for name in f.IN_FEATURES]),
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "box_loss_centerness_weighted": f.BOX_LOSS_CENTERNESS_WEIGHTED,
            "norm_across_workers": f.NORM_ACROSS_WORKERS,
            "size_range_inclusive": f.SIZE_RANGE_INCLUSIVE,
            "filter_on_cls_prob_test": f.FILTER_ON_CLS_PROB_TEST,
        }

    # -- assignment ---------------------------------------------------------------------------
    @torch.no_grad()
    def match_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Matched GT index per location, (R,) int64 per image, -1 for background.

        Images with boxes go through detectron2's rule (centre sampling, inside the box,
        per-level size range, smallest box wins), with closed size ranges under
        ``size_range_inclusive``; images without boxes get -1 everywhere.
        """
        with_boxes = [gt for gt in gt_instances if len(gt) > 0]
        if not with_boxes:
            matched = iter([])
        elif self.size_range_inclusive:
            matched = iter([self._match_closed_ranges(anchors, gt) for gt in with_boxes])
        else:
            matched = iter(super().match_anchors(anchors, with_boxes))
        num_locations = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        return [
            (
                next(matched)
                if len(gt) > 0
                else torch.full((num_locations,), -1, dtype=torch.int64, device=device)
            )
            for gt in gt_instances
        ]

    def _match_closed_ranges(self, anchors: List[Boxes], gt: Instances) -> Tensor:
        """detectron2's matching rule with the official closed size ranges, for one image with
        M >= 1 boxes: (R,) index of the matched box or -1.

        A location is positive for a box when it lies within ``center_sampling_radius``
        strides of the box centre (strictly), strictly inside the box, and the largest of its
        four distances to the box sides d satisfies lo <= d <= hi, lo = 4 strides (0 on the
        first level), hi = 8 strides (inf on the last). cvpods' OBJECT_SIZES_OF_INTEREST and
        MMDetection's regress_ranges are these numbers for P3-P7 with ``>=`` / ``<=``. Among
        several boxes the smallest area wins (an exact minimum; detectron2 maximises 1e8 - area
        in float32).
        """
        num_per_level = [len(a) for a in anchors]
        points = Boxes.cat(anchors)
        centers = points.get_centers()  # (R, 2)
        sizes = points.tensor[:, 2] - points.tensor[:, 0]  # (R,) = stride of the level
        lower = sizes * 4
        lower[: num_per_level[0]] = 0
        upper = sizes * 8
        upper[-num_per_level[-1] :] = float("inf")

        boxes = gt.gt_boxes
        near_center = (centers[:, None, :] - boxes.get_centers()[None]).abs().amax(dim=2)
        positive = near_center < self.center_sampling_radius * sizes[:, None]  # (R, M)
        distances = pairwise_point_box_distance(centers, boxes)  # (R, M, 4)
        positive &= distances.amin(dim=2) > 0
        reach = distances.amax(dim=2)
        positive &= (reach >= lower[:, None]) & (reach <= upper[:, None])

        areas = boxes.area()[None].expand_as(positive).masked_fill(~positive, float("inf"))
        min_area, matched = areas.min(dim=1)
        matched[torch.isinf(min_area)] = -1
        return matched

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """Per image: class per location (R,) int64, K for background, and matched boxes (R, 4).

        Images with boxes are labelled by detectron2. For an image without boxes every location
        is background and its "matched boxes" are the location boxes themselves: never used as
        regression targets (no positives), they keep the centerness targets finite.
        """
        with_boxes = [gt for gt in gt_instances if len(gt) > 0]
        labels, boxes = super().label_anchors(anchors, with_boxes) if with_boxes else ([], [])
        labels, boxes = iter(labels), iter(boxes)
        all_anchors = Boxes.cat(anchors)
        background = torch.full(
            (len(all_anchors),), self.num_classes, dtype=torch.int64, device=all_anchors.device
        )
        out_labels, out_boxes = [], []
        for gt in gt_instances:
            out_labels.append(next(labels) if len(gt) > 0 else background.clone())
            out_boxes.append(next(boxes) if len(gt) > 0 else all_anchors.clone())
        return out_labels, out_boxes

    # -- losses -------------------------------------------------------------------------------
    def losses(
        self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
    ):
        """detectron2's FCOS losses, or the official normalisation when an option is on.

        Args:
            anchors: L ``Boxes`` of (H_l * W_l, 4) location boxes (one stride wide).
            pred_logits: L tensors (N, H_l * W_l, K); pred_anchor_deltas: (N, H_l * W_l, 4),
                in strides; pred_centerness: (N, H_l * W_l, 1) logits.
            gt_labels: N tensors (R,), K = background; gt_boxes: N ``Boxes`` (R, 4).

        Returns:
            ``{"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}``: focal-loss sum over all
            locations, GIoU-loss sum and centerness-BCE sum over the positives, each divided by
            the positive-count normaliser; with ``box_loss_centerness_weighted`` the GIoU sum
            is weighted by the centerness targets t and divided by max(sum t, 1e-6) (of the
            batch, averaged over workers with ``norm_across_workers``; MMDetection's clamp,
            cvpods clamps at 1: the two differ only when sum t < 1, about two positives).
        """
        if not (self.box_loss_centerness_weighted or self.norm_across_workers):
            return super().losses(
                anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
            )
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / num_images)
        if self.norm_across_workers:
            # the exact count of this batch (no EMA), averaged over workers so that 2 workers
            # x n images give the loss of 1 worker x 2n (MMDetection's reduce_mean, cvpods'
            # all_reduce / world size)
            normalizer = count_over_workers(num_pos.to(torch.float32), minimum=1.0)
        else:
            normalizer = self._ema_update("loss_normalizer", max(num_pos.item(), 1), 300)

        target = F.one_hot(gt_labels, num_classes=self.num_classes + 1)[:, :, :-1]
        loss_cls = sigmoid_focal_loss_jit(
            torch.cat(pred_logits, dim=1),
            target.to(pred_logits[0].dtype),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )

        ctr_targets = self.compute_ctrness_targets(anchors, gt_boxes)[pos_mask]  # (P,)
        ctr_logits = torch.cat(pred_centerness, dim=1).squeeze(dim=2)[pos_mask]  # (P,)
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="sum")

        per_box = self._giou_loss_of_positives(anchors, pred_anchor_deltas, gt_boxes, pos_mask)
        if self.box_loss_centerness_weighted:
            weight_sum = ctr_targets.sum().detach()
            if self.norm_across_workers:
                weight_sum = count_over_workers(weight_sum, minimum=1e-6)
            else:
                weight_sum = weight_sum.clamp(min=1e-6)
            loss_box = (per_box * ctr_targets).sum() / weight_sum
        else:
            loss_box = per_box.sum() / normalizer
        return {
            "loss_fcos_cls": loss_cls / normalizer,
            "loss_fcos_loc": loss_box,
            "loss_fcos_ctr": loss_ctr / normalizer,
        }

    def _giou_loss_of_positives(
        self,
        anchors: List[Boxes],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Boxes],
        pos_mask: Tensor,
    ) -> Tensor:
        """(P,) GIoU loss of each positive location's decoded box against its matched box, in
        the order of ``pos_mask.nonzero()`` (image-major)."""
        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        pos_anchors = all_anchors[None].expand(len(pos_mask), -1, -1)[pos_mask]  # (P, 4)
        pos_deltas = torch.cat(pred_anchor_deltas, dim=1)[pos_mask]  # (P, 4)
        pred = self.box2box_transform.apply_deltas(pos_deltas, pos_anchors)
        target = torch.stack([b.tensor for b in gt_boxes])[pos_mask]  # (P, 4)
        return giou_loss(pred, target, reduction="none")

    # -- inference ----------------------------------------------------------------------------
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ):
        """detectron2's inference; with ``filter_on_cls_prob_test`` the score threshold and the
        top-k candidates of each level are taken on the class probability (cvpods)."""
        if not self.filter_on_cls_prob_test:
            return super().forward_inference(images, features, predictions)
        pred_logits, pred_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            per_level = [
                self._decode_level_on_cls_prob(
                    a, logits[i].sigmoid(), ctr[i, :, 0].sigmoid(), deltas[i], image_size
                )
                for a, logits, ctr, deltas in zip(
                    anchors, pred_logits, pred_centerness, pred_deltas
                )
            ]
            pred = Instances.cat(per_level)
            keep = batched_nms(
                pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
            )
            results.append(pred[keep[: self.max_detections_per_image]])
        return results

    def _decode_level_on_cls_prob(
        self,
        anchors: Boxes,
        probs: Tensor,
        centerness: Tensor,
        deltas: Tensor,
        image_size: Tuple[int, int],
    ) -> Instances:
        """One level of one image: ``probs`` (H*W, K), ``centerness`` (H*W,) in [0, 1],
        ``deltas`` (H*W, 4). Keeps (location, class) pairs with p > SCORE_THRESH_TEST, the
        TOPK_CANDIDATES_TEST most probable, scored sqrt(p * centerness)."""
        keep = probs > self.test_score_thresh
        kept_probs = probs[keep]
        pairs = torch.nonzero(keep)  # (k, 2): location, class
        num_topk = min(self.test_topk_candidates, len(pairs))
        kept_probs, order = kept_probs.sort(descending=True)
        kept_probs, pairs = kept_probs[:num_topk], pairs[order[:num_topk]]
        locations, classes = pairs.unbind(dim=1)
        boxes = self.box2box_transform.apply_deltas(deltas[locations], anchors.tensor[locations])
        return Instances(
            image_size,
            pred_boxes=Boxes(boxes),
            scores=torch.sqrt(kept_probs * centerness[locations]),
            pred_classes=classes,
        )


class Scale(nn.Module):
    """A learnable scalar (shape (1,), like cvpods' and mmcv's ``Scale``) multiplying its
    input: the per-level box-regression scale of the official FCOS head."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(_DetectronFCOSHead):
    """detectron2's ``FCOSHead``, optionally with a learnable scale per level.

    With ``scale_per_level`` the box output of level l is ``scales[l](bbox_pred(tower))``
    (parameters ``scales.<l>.scale``, initialised to 1), as in the official FCOS (cvpods'
    and MMDetection's heads); without it the parameters and outputs are detectron2's.
    """

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        conv_dims: List[int],
        scale_per_level: bool = False,
        **kwargs,
    ):
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, **kwargs)
        if scale_per_level:
            self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])
        else:
            self.scales = None

    def forward(self, features: List[Tensor]):
        """L maps (N, C, H_l, W_l) -> (logits (N, K, H_l, W_l), box deltas (N, 4, H_l, W_l),
        centerness logits (N, 1, H_l, W_l)), one list of L each."""
        logits, deltas, centerness, _ = self.forward_with_towers(features)
        return logits, deltas, centerness

    def forward_with_towers(self, features: List[Tensor]):
        """``forward`` plus the classification-tower output of each level, (N, C, H_l, W_l)
        after its last activation (TF-HEAD regresses the student onto it)."""
        assert len(features) == self._num_features
        logits, deltas, centerness, towers = [], [], [], []
        for level, x in enumerate(features):
            cls_tower = self.cls_subnet(x)
            towers.append(cls_tower)
            logits.append(self.cls_score(cls_tower))
            box_tower = self.bbox_subnet(x)
            box = self.bbox_pred(box_tower)
            deltas.append(self.scales[level](box) if self.scales is not None else box)
            centerness.append(self.ctrness(box_tower))
        return logits, deltas, centerness, towers


def build_fcos_head(cfg, input_shapes: List[ShapeSpec]) -> FCOSHead:
    """``FCOSHead`` for feature maps of ``input_shapes`` (one per level, equal channels).

    The towers are shared across levels, so every level must have the same channel count;
    each tower has MODEL.FCOS.NUM_CONVS 3x3 convs of that width. MODEL.FCOS.SCALE_PER_LEVEL
    adds the learnable per-level scales.
    """
    f = cfg.MODEL.FCOS
    channels = sorted({s.channels for s in input_shapes})
    if len(channels) != 1:
        raise ValueError(
            f"FCOSHead shares its towers across levels, but MODEL.FCOS.IN_FEATURES "
            f"{list(f.IN_FEATURES)} have channel counts {channels}"
        )
    if f.NUM_CONVS < 1:
        raise ValueError(f"MODEL.FCOS.NUM_CONVS must be >= 1, got {f.NUM_CONVS}")
    return FCOSHead(
        input_shape=input_shapes,
        conv_dims=[channels[0]] * f.NUM_CONVS,
        num_classes=f.NUM_CLASSES,
        norm=f.HEAD_NORM,
        prior_prob=f.PRIOR_PROB,
        scale_per_level=f.SCALE_PER_LEVEL,
    )
