"""The optimizer of a run: detectron2's SGD param groups, a trainable teacher's own groups and
gradient clipping that skips parameters without a gradient.

Why not detectron2's ``maybe_add_gradient_clipping`` as is: its per-parameter clippers call
``torch.nn.utils.clip_grad_value_`` / ``clip_grad_norm_`` on every parameter of the optimizer,
and recent torch versions fail on a parameter without gradient (``Expected
!nested_tensorlist[0].empty()``). In distillation runs such parameters are normal: a frozen
backbone phase (LGD's FREEZE_BACKBONE_ITERS), a distiller switched off by its schedule, an
unused head. The clippers here leave those parameters alone, as torch's optimizers do, and
plug into detectron2's own optimizer-class generator.
"""

import torch

# detectron2 v0.6 builds its clipping optimizers with this generator (per-parameter or global
# clipper); its own clippers are the ones that fail on parameters without a gradient
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
)
from detectron2.utils.events import get_event_storage

__all__ = [
    "build_optimizer",
    "full_model_clipping",
    "per_parameter_clipping",
    "teacher_param_groups",
]


def teacher_param_groups(model, param_groups, lr_factor):
    """Split ``param_groups`` so that the trainable parameters named ``teacher.*`` sit in groups
    of their own with ``lr * lr_factor`` (other hyper-parameters unchanged).

    Args:
        param_groups: optimizer param groups, each with an ``"lr"`` (e.g. from detectron2's
            ``get_default_optimizer_params(model, base_lr=...)``).
    Returns:
        the student groups (without teacher parameters) followed by the teacher groups;
        empty groups are dropped.
    """
    teacher = {id(p) for name, p in model.named_parameters() if name.startswith("teacher.")}
    student_groups, teacher_groups = [], []
    for group in param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        own = [p for p in group["params"] if id(p) not in teacher]
        theirs = [p for p in group["params"] if id(p) in teacher]
        if own:
            student_groups.append({**hyper, "params": own})
        if theirs:
            teacher_groups.append({**hyper, "lr": hyper["lr"] * lr_factor, "params": theirs})
    return student_groups + teacher_groups


_with_gradient_clipping = _generate_optimizer_class_with_gradient_clipping


def _put_scalar(name, value):
    try:
        get_event_storage().put_scalar(name, float(value), smoothing_hint=False)
    except (AssertionError, IndexError):  # no storage outside a training loop
        pass


def full_model_clipping(optimizer_type, max_norm, norm_type=2.0):
    """A subclass of ``optimizer_type`` whose ``step`` first scales all gradients together so
    that their joint ``norm_type`` norm is at most ``max_norm`` (MMDetection's
    ``optimizer_config.grad_clip``). Parameters without gradient are skipped. The L2 norm
    before clipping is logged by the trainer as ``grad_norm`` (another ``norm_type`` is logged
    here as ``grad_norm_l<type>``)."""
    if not max_norm > 0:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0 for 'full_model' clipping, got "
            f"{max_norm}."
        )

    def clip_all(params):
        params = [p for p in params if p.grad is not None]
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            if norm_type != 2.0:  # the trainer logs the L2 norm (StepTrainer.log_grad_norm)
                _put_scalar(f"grad_norm_l{norm_type:g}", norm)

    return _with_gradient_clipping(optimizer_type, global_clipper=clip_all)


def per_parameter_clipping(optimizer_type, clip_type, clip_value, norm_type=2.0):
    """A subclass of ``optimizer_type`` that clips each parameter's gradient before ``step``,
    as detectron2's SOLVER.CLIP_GRADIENTS "value" (every element to [-v, v]) or "norm" (each
    parameter's gradient norm to at most v), skipping parameters without a gradient."""
    if clip_type not in ("value", "norm"):
        raise ValueError(f"per_parameter_clipping: clip_type {clip_type!r} not in value, norm")
    if not clip_value > 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0, got {clip_value}.")

    def clip_one(p):
        if p.grad is None:
            return
        if clip_type == "value":
            p.grad.clamp_(min=-clip_value, max=clip_value)
        else:
            norm = torch.linalg.vector_norm(p.grad.detach(), norm_type)
            p.grad.mul_((clip_value / (norm + 1e-6)).clamp(max=1.0))

    return _with_gradient_clipping(optimizer_type, per_param_clipper=clip_one)


def build_optimizer(cfg, model) -> torch.optim.Optimizer:
    """detectron2's SGD (param groups of ``get_default_optimizer_params``) plus a trainable
    teacher's groups at lr x MODEL.DISTILL.TEACHER.LR_FACTOR, with SOLVER.CLIP_GRADIENTS:

    * "value" / "norm": per parameter, as detectron2 (``clip_grad_value_`` /
      ``clip_grad_norm_`` on each parameter's gradient);
    * "full_model": the norm of all gradients together (MMDetection's ``grad_clip``).

    Frozen parameters (requires_grad False) are left out; parameters without a gradient at a
    step are not clipped.
    """
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    params = teacher_param_groups(model, params, cfg.MODEL.DISTILL.TEACHER.LR_FACTOR)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    optimizer_type = torch.optim.SGD
    if clip.ENABLED:
        if clip.CLIP_TYPE == "full_model":
            optimizer_type = full_model_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
        elif clip.CLIP_TYPE in ("value", "norm"):
            optimizer_type = per_parameter_clipping(
                optimizer_type, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE
            )
        else:
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip.CLIP_TYPE!r} is not known; use "
                "'full_model' (norm of all gradients together), 'norm' (per parameter) or "
                "'value'."
            )
    return optimizer_type(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
