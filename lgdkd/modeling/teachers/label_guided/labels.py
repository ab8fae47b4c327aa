"""LGD's label maps: per-box descriptors (box, class code, mask crop) on a padded
(images x rows) layout and the cells of each FPN level that a box or an instance mask covers."""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Instances, PolygonMasks
from torch import Tensor

__all__ = ["label_descriptors", "box_cell_masks", "instance_cell_masks"]


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
