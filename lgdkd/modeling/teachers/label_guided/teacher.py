"""LGD's implicit teacher: feature maps built from the labels and the student's own features.

Zhang et al., "LGD: Label-Guided Self-Distillation for Object Detection", AAAI 2022
(arXiv 2109.11496); official code megvii-research/LGD (``DynamicTeacher``). Architecture:

1. label descriptors: per box [x1, y1, x2, y2] normalised to [0, 1], a class code (one-hot or
   label / K) and, for Mask R-CNN, a 7x7 crop of the instance mask; rescaled to [-1, 1]. An
   optional context box covers the whole image and has an all-zero class code;
2. a PointNet label encoder (two T-Nets, LayerNorms without affine parameters, a max over the
   boxes of each image as global feature) -> label embeddings (N, R, C);
3. appearance embeddings: masked average pooling of ``student_proj_2D`` (conv3x3 + LayerNorm
   over C, H, W + ReLU) of each student FPN level inside each box (or instance mask);
4. inter-object relation adapter: one multi-head attention shared by all levels, confined to
   the objects of one image, query = appearance, key = value = label embedding
   ("student_guided", the official "stuGuided");
5. intra-object knowledge mapper: every object's vector painted on its box cells, conv3x3, plus
   the context vector, ReLU, then a shared refinement (conv-GN-ReLU x2, conv-GN).

Everything runs on a padded (images x rows) layout: no Python loop over boxes and no
device-to-host synchronisation. Rows: with a context box, row 0 of every image is the context
box and rows 1..N_i its objects; without, rows 0..N_i-1 are the objects. ``valid`` (N, R)
marks real rows.

Shape shorthand: N images, R rows per image (objects + context, padded), C FPN channels,
K classes, D descriptor length, H x W one FPN level, Hi x Wi the padded image.
"""

import contextlib
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import Tensor, nn

from ...distill.adapters import num_classes_of
from ...distill.outputs import DetectorOutputs
from ...distill.registries import TEACHER_REGISTRY
from ...distill.roles import Teacher
from .encoder import LabelEncoder, layer_norm
from .labels import box_cell_masks, instance_cell_masks, label_descriptors
from .oracle import LGDOracleDetector

__all__ = ["LabelGuidedTeacher"]


_PATTERNS = ("student_guided", "label_guided", "student_fill", "teacher_fill")


@TEACHER_REGISTRY.register()
class LabelGuidedTeacher(Teacher):
    """LGD's implicit teacher (config node MODEL.DISTILL.LGD).

    ``forward(batched_inputs, student) -> DetectorOutputs`` whose ``features`` have exactly the
    keys and shapes of ``student.features`` (every level must have the same channel count, as
    FPN levels do). The teacher is ``trainable``: its parameters are optimised by
    :meth:`losses`, the student's own detection head and loss run on the teacher maps with the
    student's targets (dense detectors) or the RPN + RoI heads on them (R-CNN).

    ``extras["cell_masks"]``: level -> (N, R, H * W) object masks; ``extras["valid"]``.
    """

    trainable = True

    @configurable
    def __init__(
        self,
        *,
        feature_shapes: Dict[str, ShapeSpec],
        num_classes: int,
        interact_pattern: str = "student_guided",
        num_heads: int = 8,
        detach_appearance: bool = False,
        add_context_box: bool = False,
        category_format: str = "one_hot",
        box_normalization: str = "padded",
        load_labelmap: bool = False,
        paint_overlap: str = "sum",
        teacher_updates_loss_normalizer: bool = False,
    ):
        """
        Args:
            feature_shapes: the student's FPN levels (one width); num_classes: its classes.
            The rest: MODEL.DISTILL.LGD's keys of the same names (lower case).
        """
        super().__init__()
        channels = {s.channels for s in feature_shapes.values()}
        if len(channels) != 1:
            raise ValueError(
                "LabelGuidedTeacher needs student features of one width (an FPN), got "
                f"{ {k: v.channels for k, v in feature_shapes.items()} }."
            )
        self.channels = channels.pop()
        self.num_classes = num_classes
        if interact_pattern not in _PATTERNS:
            raise ValueError(
                f"MODEL.DISTILL.LGD.INTERACT_PATTERN = {interact_pattern!r}; valid: {_PATTERNS}"
            )
        if self.channels % num_heads:
            raise ValueError(
                f"MODEL.DISTILL.LGD.NUM_HEADS ({num_heads}) must divide the FPN width "
                f"({self.channels})."
            )
        if paint_overlap not in ("sum", "mean"):
            raise ValueError(
                f"MODEL.DISTILL.LGD.PAINT_OVERLAP = {paint_overlap!r}; valid: sum, mean"
            )
        self._shape = dict(feature_shapes)
        self.pattern = interact_pattern
        self.context_box = add_context_box
        self.detach_appearance = detach_appearance
        self.category_format = category_format
        self.normalize_by = box_normalization
        self.use_label_map = load_labelmap
        self.paint_overlap = paint_overlap
        self.update_normalizer = teacher_updates_loss_normalizer
        code = self.num_classes if self.category_format == "one_hot" else 1
        desc_dim = 4 + code + (49 if self.use_label_map else 0)
        C = self.channels
        self.label_encoder = LabelEncoder(desc_dim, C)
        self.canoni_proj_1D = nn.Linear(C, C)  # + LayerNorm (no affine) + ReLU
        self.student_proj_2D = nn.Conv2d(C, C, 3, padding=1)  # + GN(1) (no affine) + ReLU
        self.attention = nn.MultiheadAttention(C, num_heads, batch_first=True)
        self.local_inst_proj_1D = nn.Linear(C, C)
        self.global_ctx_proj_1D = nn.Linear(C, C) if self.context_box else None
        self.local_inst_proj_2D = nn.Conv2d(C, C, 3, padding=1)
        self.refinement = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1) for _ in range(3))

    @classmethod
    def from_config(cls, cfg, *, student):
        """The student's feature shapes and classes; refuses a student whose classes cannot be
        told and LOAD_LABELMAP without instance masks."""
        num_classes = num_classes_of(student)
        if num_classes <= 0:
            raise ValueError(
                f"LabelGuidedTeacher: cannot tell how many classes {type(student).__name__} "
                "predicts (no num_classes attribute)."
            )
        c = cfg.MODEL.DISTILL.LGD
        if c.LOAD_LABELMAP and not cfg.MODEL.MASK_ON:
            raise ValueError(
                "MODEL.DISTILL.LGD.LOAD_LABELMAP needs instance masks: set MODEL.MASK_ON True "
                "(a Mask R-CNN student)."
            )
        return {
            "feature_shapes": dict(student.backbone.output_shape()),
            "num_classes": num_classes,
            "interact_pattern": c.INTERACT_PATTERN,
            "num_heads": c.NUM_HEADS,
            "detach_appearance": c.DETACH_APPEARANCE,
            "add_context_box": c.ADD_CONTEXT_BOX,
            "category_format": c.CATEGORY_FORMAT,
            "box_normalization": c.BOX_NORMALIZATION,
            "load_labelmap": c.LOAD_LABELMAP,
            "paint_overlap": c.PAINT_OVERLAP,
            "teacher_updates_loss_normalizer": c.TEACHER_UPDATES_LOSS_NORMALIZER,
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shape)

    def require_predictions(self, needed: bool):
        pass  # the teacher has no head of its own

    # -- forward ----------------------------------------------------------------------------
    def forward(self, batched_inputs, student: DetectorOutputs) -> DetectorOutputs:
        if student.gt_instances is None:
            raise ValueError("LabelGuidedTeacher needs ground truth ('instances') per image.")
        images = student.images
        padded = tuple(images.tensor.shape[-2:])
        levels = list(student.features)
        feats = student.features
        if self.detach_appearance:
            feats = {k: v.detach() for k, v in feats.items()}
        labels = label_descriptors(
            student.gt_instances,
            images.image_sizes,
            padded,
            self.num_classes,
            context_box=self.context_box,
            category_format=self.category_format,
            normalize_by=self.normalize_by,
            mask_code=self.use_label_map,
        )
        valid = labels["valid"]
        sizes = [tuple(feats[k].shape[-2:]) for k in levels]
        if self.use_label_map:
            masks = instance_cell_masks(
                student.gt_instances, images.image_sizes, padded, sizes, valid, self.context_box
            )
        else:
            masks = [
                box_cell_masks(labels["boxes"], valid, padded, s, self.context_box) for s in sizes
            ]
        masks = [m.to(feats[levels[0]].dtype) for m in masks]

        label_embed = self.label_encoder(labels["desc"], valid)  # (N, R, C)
        query_lab = F.relu(layer_norm(self.canoni_proj_1D(label_embed)))
        query_lab = query_lab * valid[..., None]

        # appearance: masked average pooling of every level, then one attention call
        appearance = []
        for k, m in zip(levels, masks):
            s = F.relu(F.group_norm(self.student_proj_2D(feats[k]), 1))
            pooled = torch.bmm(m, s.flatten(2).transpose(1, 2))  # (N, R, C)
            appearance.append(pooled / m.sum(-1, keepdim=True).clamp(min=1))
        mixed = self._interact(torch.stack(appearance), query_lab, valid)  # (L, N, R, C)

        out = {}
        is_object = labels["is_object"]
        for i, (k, m) in enumerate(zip(levels, masks)):
            out[k] = self._render(mixed[i], m, is_object, feats[k].shape)
        return DetectorOutputs(
            images=images,
            features=out,
            feature_shapes=dict(student.feature_shapes),
            head_in_features=list(student.head_in_features),
            gt_instances=student.gt_instances,
            extras={"cell_masks": dict(zip(levels, masks)), "valid": valid},
        )

    def _interact(self, appearance: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
        """Inter-object relation adapter: (L, N, R, C) appearance x (N, R, C) labels ->
        (L, N, R, C). Attention runs on the (L * N) x R layout with a key-padding mask, so it
        never mixes rows of different images."""
        L, N, R, C = appearance.shape
        if self.pattern == "student_fill":
            return appearance
        if self.pattern == "teacher_fill":
            return labels.expand(L, N, R, C)
        # an image without rows gets one unmasked (zero) key so that softmax stays finite;
        # its outputs are never painted
        pad = ~valid
        pad[:, 0] = False
        pad = pad.repeat(L, 1)
        lab = labels.expand(L, N, R, C).reshape(L * N, R, C)
        app = appearance.reshape(L * N, R, C)
        if self.pattern == "student_guided":
            q, kv = app, lab
        else:  # label_guided
            q, kv = lab, app
        out, _ = self.attention(q, kv, kv, key_padding_mask=pad, need_weights=False)
        return out.reshape(L, N, R, C) * valid[..., None]

    def _render(self, rows: Tensor, masks: Tensor, is_object: Tensor, shape) -> Tensor:
        """Intra-object knowledge mapper + refinement: (N, R, C) rows -> (N, C, H, W)."""
        N, C, H, W = shape
        obj = self.local_inst_proj_1D(rows) * is_object[..., None]
        obj_masks = masks * is_object[..., None]
        painted = torch.bmm(obj.transpose(1, 2), obj_masks)  # (N, C, H * W)
        if self.paint_overlap == "mean":
            painted = painted / obj_masks.sum(1, keepdim=True).clamp(min=1)
        x = self.local_inst_proj_2D(painted.reshape(N, C, H, W))
        if self.context_box:
            x = x + self.global_ctx_proj_1D(rows[:, 0])[:, :, None, None]
        x = F.relu(x)
        for i, conv in enumerate(self.refinement):
            x = F.group_norm(conv(x), 1)
            if i < len(self.refinement) - 1:
                x = F.relu(x)
        return x

    # -- losses -----------------------------------------------------------------------------
    def losses(
        self, student_model, adapter, student: DetectorOutputs, teacher: DetectorOutputs, assignment
    ):
        """The student's detection loss on the teacher maps (keys suffixed ``_teacher``)."""
        with self._keep_loss_normalizer(student_model):
            losses = adapter.losses_on_features(student_model, student, teacher.features)
        return {f"{k}_teacher": v for k, v in losses.items()}

    @contextlib.contextmanager
    def _keep_loss_normalizer(self, model):
        """Unless TEACHER_UPDATES_LOSS_NORMALIZER, the teacher's loss call leaves the dense
        detector's EMA loss normaliser as the student's call set it (the official code updates
        it twice per iteration)."""
        saved = getattr(model, "loss_normalizer", None)
        try:
            yield
        finally:
            if not self.update_normalizer and saved is not None:
                model.loss_normalizer = saved

    # -- evaluation -------------------------------------------------------------------------
    def detector_for_evaluation(self, student: Optional[nn.Module] = None):
        if student is None:
            return None
        return LGDOracleDetector(student, self)
