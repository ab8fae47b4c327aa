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
   the objects of one image, query = appearance, key = value = label embedding ("stuGuided");
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
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import Tensor, nn

from ..outputs import DetectorOutputs
from .build import TEACHER_REGISTRY

__all__ = [
    "LabelGuidedTeacher",
    "LabelEncoder",
    "TNet",
    "box_cell_masks",
    "label_descriptors",
]

_PATTERNS = ("stuGuided", "labelGuided", "student_fill", "teacher_fill")


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:])


class _MLP(nn.Module):
    """Linear -> LayerNorm (no affine) -> ReLU per step; the official Conv1d(k=1) + LayerNorm
    over a length-1 sequence computes exactly this."""

    def __init__(self, dims: List[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(_layer_norm(layer(x)))
        return x


class TNet(nn.Module):
    """PointNet's T-Net on one descriptor per row: (..., k) -> a (..., k, k) matrix.

    64-128-1024 "convs" then 512-256 FCs (each with LayerNorm and ReLU) and a linear map to k*k.
    As in the official code no identity is added and there is no orthogonality loss.
    """

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.convs = _MLP([k, 64, 128, 1024])
        self.fcs = _MLP([1024, 512, 256])
        self.out = nn.Linear(256, k * k)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.fcs(self.convs(x))).unflatten(-1, (self.k, self.k))


class LabelEncoder(nn.Module):
    """PointNet over the label descriptors of each image -> label embeddings.

    ``forward(desc (N, R, D), valid (N, R)) -> (N, R, C)``; the global feature of an image is
    the max over its valid rows only.
    """

    def __init__(self, descriptor_dim: int, embed_dim: int):
        super().__init__()
        self.stn_desc = TNet(descriptor_dim)
        self.conv1 = _MLP([descriptor_dim, 64])
        self.stn_feat = TNet(64)
        self.conv2 = _MLP([64, 128, 1024])
        self.fuse = _MLP([64 + 1024, embed_dim])

    def forward(self, desc: Tensor, valid: Tensor) -> Tensor:
        x = (desc.unsqueeze(-2) @ self.stn_desc(desc)).squeeze(-2)
        x = self.conv1(x)
        local = (x.unsqueeze(-2) @ self.stn_feat(x)).squeeze(-2)
        g = self.conv2(local)
        g = g.masked_fill(~valid[..., None], float("-inf")).amax(dim=1, keepdim=True)
        g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))  # images without rows
        return self.fuse(torch.cat([local, g.expand(-1, local.shape[1], -1)], dim=-1))


def _padded(tensors: List[Tensor], length: int, fill=0) -> Tensor:
    """(N, length, ...) from per-image (n_i, ...) tensors (one op per image, not per box)."""
    out = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), fill)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def label_descriptors(
    gt_instances: List[Instances],
    image_sizes: List[Tuple[int, int]],
    padded_size: Tuple[int, int],
    num_classes: int,
    *,
    context_box: bool,
    category_format: str = "one_hot",
    normalize_by: str = "image",
    mask_code: bool = False,
) -> Dict[str, Tensor]:
    """Descriptors of every labelled object (and context box) in the padded row layout.

    Args:
        gt_instances: per image, ``gt_boxes`` (XYXY, absolute, resized-image coordinates),
            ``gt_classes`` and, with ``mask_code``, ``gt_masks``.
        image_sizes: valid (h, w) of each image; padded_size: (Hi, Wi) of the batch tensor.
        normalize_by: "image" divides coordinates by the image's own (w, h) and clamps boxes to
            the image; "padded" reproduces the official code: clamp to [0, Wi-1] x [0, Hi-1]
            and divide by the padded size (the same box then encodes differently depending on
            the other images of the batch).
        mask_code: append the 7x7 crop of each instance mask (49 values; the context box gets
            ones), as the official Mask R-CNN config does.

    Returns:
        dict with ``desc`` (N, R, D) in [-1, 1], ``boxes`` (N, R, 4) the clamped absolute boxes
        (the context box spans the whole padded image), ``valid`` (N, R) bool, ``is_object``
        (N, R) bool (valid and not the context row).
    """
    device = gt_instances[0].gt_boxes.tensor.device
    n_img = len(gt_instances)
    counts = [len(x) for x in gt_instances]
    ctx = 1 if context_box else 0
    rows = max(max(counts) + ctx, 1)  # at least one (invalid) row: no empty tensors
    Hi, Wi = padded_size
    if category_format not in ("one_hot", "norm_classes"):
        raise ValueError(
            f"MODEL.DISTILL.LGD.CATEGORY_FORMAT = {category_format!r}; valid: one_hot, "
            "norm_classes"
        )
    boxes = torch.zeros(n_img, rows, 4, device=device)
    classes = torch.zeros(n_img, rows, dtype=torch.long, device=device)
    valid = torch.zeros(n_img, rows, dtype=torch.bool, device=device)
    masks = torch.zeros(n_img, rows, 49, device=device) if mask_code else None
    for i, inst in enumerate(gt_instances):  # one step per image
        n = counts[i]
        boxes[i, ctx : ctx + n] = inst.gt_boxes.tensor.to(boxes.dtype)
        classes[i, ctx : ctx + n] = inst.gt_classes
        valid[i, : ctx + n] = True
        if mask_code and n > 0:
            if not inst.has("gt_masks"):
                raise ValueError(
                    "MODEL.DISTILL.LGD.LOAD_LABELMAP needs instance masks: set MODEL.MASK_ON "
                    "True and use a data set with segmentations."
                )
            crop = inst.gt_masks.crop_and_resize(inst.gt_boxes.tensor, 7)
            masks[i, ctx : ctx + n] = crop.flatten(1).to(masks.dtype)
    is_object = valid.clone()
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device)  # (N, 2) as (h, w)
    if normalize_by == "image":
        hi, wi = sizes[:, 0, None], sizes[:, 1, None]
        lo = torch.zeros_like(hi)
        x_max, y_max, x_div, y_div = wi, hi, wi, hi
    elif normalize_by == "padded":
        lo = boxes.new_zeros(n_img, 1)
        x_max, y_max = lo + (Wi - 1), lo + (Hi - 1)
        x_div, y_div = lo + Wi, lo + Hi
    else:
        raise ValueError(
            f"MODEL.DISTILL.LGD.BOX_NORMALIZATION = {normalize_by!r}; valid: image, padded"
        )
    if ctx:
        is_object[:, 0] = False
        boxes[:, 0, 2], boxes[:, 0, 3] = x_max[:, 0], y_max[:, 0]
        if mask_code:
            masks[:, 0] = 1.0
    x = boxes[..., 0::2].clamp(min=0).minimum(x_max[..., None])
    y = boxes[..., 1::2].clamp(min=0).minimum(y_max[..., None])
    boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
    norm = boxes / torch.stack([x_div, y_div, x_div, y_div], dim=-1)
    if category_format == "one_hot":
        code = F.one_hot(classes, num_classes).to(norm.dtype)
        code = code * is_object[..., None]
    else:
        code = (classes.to(norm.dtype) / num_classes * is_object)[..., None]
    parts = [norm, code] + ([masks] if mask_code else [])
    desc = torch.cat(parts, dim=-1) * 2 - 1
    desc = desc * valid[..., None]
    if ctx:  # the context box always spans the whole padded map
        boxes[:, 0] = boxes.new_tensor([0.0, 0.0, Wi - 1.0, Hi - 1.0])
    return {"desc": desc, "boxes": boxes, "valid": valid, "is_object": is_object}


def box_cell_masks(
    boxes: Tensor,
    valid: Tensor,
    padded_size: Tuple[int, int],
    level_size: Tuple[int, int],
    context_row: bool,
) -> Tensor:
    """Which cells of an H x W level each row covers, as (N, R, H * W) floats in {0, 1}.

    Box ``b`` scaled by (H / Hi, W / Wi) covers cell (y, x) (integer coordinates, as in the
    official code) iff |y - cy| <= h / 2 and |x - cx| <= w / 2. A box narrower than a cell can
    cover no cell of a coarse level. The context row covers every cell.
    """
    Hi, Wi = padded_size
    H, W = level_size
    b = boxes * boxes.new_tensor([W / Wi, H / Hi, W / Wi, H / Hi])
    ys = torch.arange(H, device=boxes.device, dtype=boxes.dtype)
    xs = torch.arange(W, device=boxes.device, dtype=boxes.dtype)
    in_y = ((ys - (b[..., 1, None] + b[..., 3, None]) / 2).abs() * 2) <= (
        b[..., 3, None] - b[..., 1, None]
    )
    in_x = ((xs - (b[..., 0, None] + b[..., 2, None]) / 2).abs() * 2) <= (
        b[..., 2, None] - b[..., 0, None]
    )
    m = in_y[..., :, None] & in_x[..., None, :]
    if context_row:
        m[:, 0] = True
    m = m & valid[..., None, None]
    return m.flatten(-2).to(boxes.dtype)


def instance_cell_masks(
    gt_instances: List[Instances],
    image_sizes: List[Tuple[int, int]],
    padded_size: Tuple[int, int],
    level_sizes: List[Tuple[int, int]],
    valid: Tensor,
    context_row: bool,
) -> List[Tensor]:
    """Instance-mask version of :func:`box_cell_masks` (the official seg-map mode): each mask
    at image resolution, zero-padded to (Hi, Wi), resized nearest-neighbour to each level.
    Returns one (N, R, H * W) tensor per level. BitMasks are used as they are; PolygonMasks are
    rasterised once per image (use INPUT.MASK_FORMAT "bitmask" to rasterise in the loader)."""
    Hi, Wi = padded_size
    n_img, rows = valid.shape
    ctx = 1 if context_row else 0
    full = torch.zeros(n_img, rows, Hi, Wi, dtype=torch.bool, device=valid.device)
    for i, inst in enumerate(gt_instances):
        if len(inst) == 0:
            continue
        m = inst.gt_masks
        h, w = image_sizes[i]
        if isinstance(m, PolygonMasks):
            m = BitMasks.from_polygon_masks(m, h, w)
        if not isinstance(m, BitMasks):
            raise TypeError(f"Unsupported gt_masks type {type(m).__name__}")
        t = m.tensor.to(valid.device)
        full[i, ctx : ctx + len(inst), : t.shape[1], : t.shape[2]] = t[:, :Hi, :Wi]
        if ctx:
            full[i, 0, :h, :w] = True
    out = []
    for H, W in level_sizes:
        # nearest-neighbour as F.interpolate: source index floor(dst * in / out)
        iy = (torch.arange(H, device=valid.device) * (Hi / H)).floor().long().clamp(max=Hi - 1)
        ix = (torch.arange(W, device=valid.device) * (Wi / W)).floor().long().clamp(max=Wi - 1)
        m = full[:, :, iy][:, :, :, ix] & valid[..., None, None]
        out.append(m.flatten(-2).float())
    return out


@TEACHER_REGISTRY.register()
class LabelGuidedTeacher(nn.Module):
    """LGD's implicit teacher (config node MODEL.DISTILL.LGD).

    ``forward(batched_inputs, student) -> DetectorOutputs`` whose ``features`` have exactly the
    keys and shapes of ``student.features`` (every level must have the same channel count, as
    FPN levels do). The teacher is ``trainable``: its parameters are optimised by
    :meth:`losses`, the student's own detection head and loss run on the teacher maps with the
    student's targets (dense detectors) or the RPN + RoI heads on them (R-CNN).

    ``extras["cell_masks"]``: level -> (N, R, H * W) object masks; ``extras["valid"]``.
    """

    trainable = True

    def __init__(self, cfg, *, student, student_shape: Dict[str, ShapeSpec]):
        super().__init__()
        from ..meta_arch.adapters import num_classes_of

        c = cfg.MODEL.DISTILL.LGD
        channels = {s.channels for s in student_shape.values()}
        if len(channels) != 1:
            raise ValueError(
                "LabelGuidedTeacher needs student features of one width (an FPN), got "
                f"{ {k: v.channels for k, v in student_shape.items()} }."
            )
        self.channels = channels.pop()
        self.num_classes = num_classes_of(student)
        if self.num_classes <= 0:
            raise ValueError(
                f"LabelGuidedTeacher: cannot tell how many classes {type(student).__name__} "
                "predicts (no num_classes attribute)."
            )
        if c.INTERACT_PATTERN not in _PATTERNS:
            raise ValueError(
                f"MODEL.DISTILL.LGD.INTERACT_PATTERN = {c.INTERACT_PATTERN!r}; valid: {_PATTERNS}"
            )
        if self.channels % c.NUM_HEADS:
            raise ValueError(
                f"MODEL.DISTILL.LGD.NUM_HEADS ({c.NUM_HEADS}) must divide the FPN width "
                f"({self.channels})."
            )
        if c.PAINT_OVERLAP not in ("sum", "mean"):
            raise ValueError(
                f"MODEL.DISTILL.LGD.PAINT_OVERLAP = {c.PAINT_OVERLAP!r}; valid: sum, mean"
            )
        if c.LOAD_LABELMAP and not cfg.MODEL.MASK_ON:
            raise ValueError(
                "MODEL.DISTILL.LGD.LOAD_LABELMAP needs instance masks: set MODEL.MASK_ON True "
                "(a Mask R-CNN student)."
            )
        self._shape = dict(student_shape)
        self.pattern = c.INTERACT_PATTERN
        self.context_box = c.ADD_CONTEXT_BOX
        self.detach_appearance = c.DETACH_APPEARANCE
        self.category_format = c.CATEGORY_FORMAT
        self.normalize_by = c.BOX_NORMALIZATION
        self.use_label_map = c.LOAD_LABELMAP
        self.paint_overlap = c.PAINT_OVERLAP
        self.update_normalizer = c.TEACHER_UPDATES_LOSS_NORMALIZER
        code = self.num_classes if self.category_format == "one_hot" else 1
        desc_dim = 4 + code + (49 if self.use_label_map else 0)
        C = self.channels
        self.label_encoder = LabelEncoder(desc_dim, C)
        self.canoni_proj_1D = nn.Linear(C, C)  # + LayerNorm (no affine) + ReLU
        self.student_proj_2D = nn.Conv2d(C, C, 3, padding=1)  # + GN(1) (no affine) + ReLU
        self.attention = nn.MultiheadAttention(C, c.NUM_HEADS, batch_first=True)
        self.local_inst_proj_1D = nn.Linear(C, C)
        self.global_ctx_proj_1D = nn.Linear(C, C) if self.context_box else None
        self.local_inst_proj_2D = nn.Conv2d(C, C, 3, padding=1)
        self.refinement = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1) for _ in range(3))

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
        query_lab = F.relu(_layer_norm(self.canoni_proj_1D(label_embed)))
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
        if self.pattern == "stuGuided":
            q, kv = app, lab
        else:  # labelGuided
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
    def losses(self, student_model, adapter, student: DetectorOutputs, teacher: DetectorOutputs):
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


class _FixedFeatures(nn.Module):
    """Stands in for a backbone and returns precomputed features (same padding rules)."""

    def __init__(self, backbone, features):
        super().__init__()
        self._inner = [backbone]  # not a sub-module
        self._features = features

    @property
    def size_divisibility(self):
        return self._inner[0].size_divisibility

    @property
    def padding_constraints(self):
        return getattr(self._inner[0], "padding_constraints", {})

    def output_shape(self):
        return self._inner[0].output_shape()

    def forward(self, x):
        return self._features


class LGDOracleDetector(nn.Module):
    """The student detector run on LGD's teacher maps, for MODEL.DISTILL.TEACHER.EVAL.

    This is an ORACLE: the teacher maps are built from the ground-truth boxes of the evaluated
    images, so its AP says how useful the teacher's maps are, not how well any deployable
    detector performs. Its inputs must keep their annotations (``needs_annotations``).
    """

    needs_annotations = True
    evaluation_note = (
        "LGD teacher = the student's head on label-guided maps built from the GROUND-TRUTH "
        "boxes of the evaluated images (an oracle diagnostic, not a deployable detector)"
    )

    def __init__(self, student, teacher: LabelGuidedTeacher):
        super().__init__()
        self._parts = [student, teacher]  # not sub-modules: no copy, no state

    def forward(self, batched_inputs):
        from ..meta_arch.adapters import build_adapter

        student, teacher = self._parts
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                "The LGD teacher is evaluated from ground truth: the test loader must keep the "
                "annotations (lgdkd.data.build_test_loader(..., keep_annotations=True))."
            )
        # the parts are not sub-modules: put them in inference mode here (and back after)
        student_mode, teacher_mode = student.training, teacher.training
        student.eval()
        teacher.eval()
        adapter = build_adapter(student)
        images = student.preprocess_image(batched_inputs)
        gt = [x["instances"].to(images.tensor.device) for x in batched_inputs]
        outputs = adapter.run(student, images, gt, with_head=False)
        maps = teacher(batched_inputs, outputs).features
        backbone = student.backbone
        student.backbone = _FixedFeatures(backbone, maps)
        try:
            return student(batched_inputs)
        finally:
            student.backbone = backbone
            student.train(student_mode)
            teacher.train(teacher_mode)
