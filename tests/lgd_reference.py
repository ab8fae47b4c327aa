"""A per-image re-statement of the official LGD teacher computation, for tests and benchmarks.

It follows the structure of megvii-research/LGD's ``DynamicTeacher``: all boxes of the batch in
one sequence of T rows (context box last in each image), Python loops over images for mask
construction, pooling and painting, and a (T, T) block mask for the attention. It reuses a
:class:`~lgdkd.modeling.teachers.LabelGuidedTeacher`'s modules, so both must give the same maps.
Supports both box normalisations ("padded": the official clamp to the padded batch and division
by its size, context box [0, 0, Wi, Hi]; "image": each image's own size), one-hot class codes,
"stuGuided" attention, summed overlaps and box masks.
"""

import torch
import torch.nn.functional as F

from lgdkd.modeling.distill.outputs import DetectorOutputs

__all__ = ["reference_teacher"]


def reference_teacher(teacher, student: DetectorOutputs):
    """Teacher maps (level -> (N, C, H, W)) of ``teacher`` for ``student``, computed per image."""
    images = student.images
    Hi, Wi = images.tensor.shape[-2:]
    C = teacher.channels
    descs, boxes = [], []
    padded = teacher.normalize_by == "padded"
    for inst, (h, w) in zip(student.gt_instances, images.image_sizes):
        b = inst.gt_boxes.tensor.clone()
        k = teacher.num_classes
        code = F.one_hot(inst.gt_classes, k).float()
        # official: context box [0, 0, Wi, Hi], every box clamped to [0, Wi-1] x [0, Hi-1],
        # coordinates divided by (Wi, Hi) of the padded batch
        W_ref, H_ref = (Wi, Hi) if padded else (w, h)
        x_hi, y_hi = (Wi - 1, Hi - 1) if padded else (w, h)
        if teacher.context_box:
            b = torch.cat([b, b.new_tensor([[0.0, 0.0, float(W_ref), float(H_ref)]])])
            code = torch.cat([code, code.new_zeros(1, k)])
        b[:, 0::2] = b[:, 0::2].clamp(0, x_hi)
        b[:, 1::2] = b[:, 1::2].clamp(0, y_hi)
        norm = b / b.new_tensor([W_ref, H_ref, W_ref, H_ref])
        descs.append(torch.cat([norm, code], 1) * 2 - 1)
        if teacher.context_box:
            b[-1] = b.new_tensor([0.0, 0.0, Wi - 1.0, Hi - 1.0])
        boxes.append(b)
    counts = [len(d) for d in descs]
    desc = torch.cat(descs)
    enc = teacher.label_encoder
    x = (desc.unsqueeze(1) @ enc.stn_desc(desc)).squeeze(1)
    x = enc.conv1(x)
    local = (x.unsqueeze(1) @ enc.stn_feat(x)).squeeze(1)
    g = enc.conv2(local)
    glob = torch.cat(
        [
            g_i.max(0, keepdim=True)[0].expand(len(g_i), -1) if len(g_i) else g_i
            for g_i in g.split(counts)
        ]
    )
    lab = enc.fuse(torch.cat([local, glob], 1))
    lab = F.relu(F.layer_norm(teacher.canoni_proj_1D(lab), (C,)))
    owner = torch.cat([torch.full((n,), i, device=desc.device) for i, n in enumerate(counts)])
    block = owner[:, None] != owner[None, :]
    out = {}
    for key, f in student.features.items():
        H, W = f.shape[-2:]
        s = F.relu(F.group_norm(teacher.student_proj_2D(f), 1))
        masks, pooled = [], []
        for i, b in enumerate(boxes):
            sb = b * b.new_tensor([W / Wi, H / Hi, W / Wi, H / Hi])
            cy, cx = (sb[:, 1] + sb[:, 3]) / 2, (sb[:, 0] + sb[:, 2]) / 2
            hh, ww = sb[:, 3] - sb[:, 1], sb[:, 2] - sb[:, 0]
            ys, xs = torch.meshgrid(
                torch.arange(H, device=f.device), torch.arange(W, device=f.device), indexing="ij"
            )
            m = (((ys - cy[:, None, None]).abs() / hh[:, None, None]) <= 0.5) & (
                ((xs - cx[:, None, None]).abs() / ww[:, None, None]) <= 0.5
            )
            m = m.flatten(1).float()
            masks.append(m)
            p = m @ s[i].flatten(1).T
            pooled.append(p / m.sum(1, keepdim=True).clamp(min=1))
        q = torch.cat(pooled)
        att, _ = teacher.attention(q[None], lab[None], lab[None], attn_mask=block)
        rows = att[0].split(counts)
        maps = []
        for i, (r, m) in enumerate(zip(rows, masks)):
            if teacher.context_box:
                obj, mo = teacher.local_inst_proj_1D(r[:-1]), m[:-1]
            else:
                obj, mo = teacher.local_inst_proj_1D(r), m
            maps.append((obj.T @ mo).reshape(C, H, W))
        y = teacher.local_inst_proj_2D(torch.stack(maps))
        if teacher.context_box:
            ctx = torch.stack([r[-1] for r in rows])
            y = y + teacher.global_ctx_proj_1D(ctx)[:, :, None, None]
        y = F.relu(y)
        for j, conv in enumerate(teacher.refinement):
            y = F.group_norm(conv(y), 1)
            y = F.relu(y) if j < 2 else y
        out[key] = y
    return out
