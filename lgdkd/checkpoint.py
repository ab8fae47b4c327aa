"""Strict weight loading: a missing, unexpected or mis-shaped key is an error naming it.

detectron2's ``DetectionCheckpointer`` loads leniently (it logs mismatches and goes on), which
is right for fine-tuning from ImageNet weights but silently wrong for a teacher.
"""

import os
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

__all__ = ["read_checkpoint", "load_strict", "StrictLoadError"]


class StrictLoadError(RuntimeError):
    pass


def read_checkpoint(path: str, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The model state dict stored in ``path`` (.pth of detectron2/lgdkd, or detectron2 .pkl).

    Args:
        what: how to call the file in errors, e.g. "teacher weights
            (MODEL.DISTILL.TEACHER.WEIGHTS)".
    """
    if not path:
        raise FileNotFoundError(f"No {what} given (empty path).")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{what} not found: {path!r}. Train that model first (its own train_net.py run "
            "writes OUTPUT_DIR/model_final.pth) or fix the path."
        )
    try:
        loaded = DetectionCheckpointer(nn.Module())._load_file(path)
    except Exception as e:
        raise StrictLoadError(f"Cannot read {what} {path!r}: {e}") from e
    state = loaded.get("model", loaded)
    if loaded.get("matching_heuristics", False):
        raise StrictLoadError(
            f"{what} {path!r} is a Caffe2/Detectron1-style checkpoint whose keys need "
            "heuristic renaming; convert it to a detectron2 state dict first."
        )
    return {
        k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked") or isinstance(v, torch.Tensor)
    }


def load_strict(
    module: nn.Module, path: str, what: str = "checkpoint", strip_prefix: Optional[str] = None
):
    """Load ``path`` into ``module`` with every key and shape matching exactly.

    Args:
        strip_prefix: if keys of the file start with this prefix (e.g. "student." in a
            distillation checkpoint), only those keys are used, without the prefix.
    """
    state = read_checkpoint(path, what)
    if strip_prefix and any(k.startswith(strip_prefix) for k in state):
        state = {k[len(strip_prefix) :]: v for k, v in state.items() if k.startswith(strip_prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:

        def _fmt(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing in the file: {_fmt(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {_fmt(mismatched)}")
        raise StrictLoadError(
            f"{what} {path!r} does not match the model it is loaded into "
            f"({type(module).__name__}); " + "; ".join(parts) + ". Check that the config file "
            "describes the network these weights were trained with."
        )
    module.load_state_dict(state, strict=True)
