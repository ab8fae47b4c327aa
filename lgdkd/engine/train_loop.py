"""One training iteration: detectron2's SimpleTrainer step with what distillation needs.

Compared with ``SimpleTrainer.run_step`` (and ``AMPTrainer.run_step`` when ``amp``):

* torch's, numpy's and python's global RNGs are seeded from (SEED, iteration, rank) before
  the forward, so RPN/ROI sampling (``torch.randperm``) repeats exactly after a resume;
* non-finite losses stop training on every rank with a FloatingPointError that names the
  loss keys and the iteration (detectron2 only checks on rank 0, after backward, so the
  other ranks of a multi-process run would wait forever);
* after backward and before the optimizer step, the gradients of
  ``frozen_parameters(iteration)`` are set to None, and the norm of the remaining gradients is
  logged as ``grad_norm`` (before any clipping). torch optimizers skip parameters
  without a gradient entirely, so those parameters get no update at all: no weight decay
  and no momentum. detectron2 v0.6 has no ``after_backward`` hook for this.
"""

import contextlib
import time
from typing import Callable, List, Optional

import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from .seeding import DOMAIN, derive_seed, seed_global_rngs

__all__ = ["StepTrainer"]


class StepTrainer(SimpleTrainer):
    """``SimpleTrainer`` with per-iteration seeding, a finite-loss check, frozen parameters
    and optional AMP (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        *,
        seed: int,
        frozen_parameters: Optional[Callable[[int], List[nn.Parameter]]] = None,
        amp: bool = False,
        grad_scaler=None,
    ):
        """
        Args:
            model, data_loader, optimizer: as for ``SimpleTrainer``; ``model`` may be wrapped
                in DistributedDataParallel.
            seed: the run's seed (>= 0).
            frozen_parameters: ``iteration -> parameters`` that get no update at that
                iteration (``DistillationDetector.frozen_parameters``), or None.
            amp: mixed precision with ``torch.autocast`` on CUDA and a gradient scaler.
            grad_scaler: the scaler for ``amp`` (default: a new ``torch.amp.GradScaler``).
        """
        super().__init__(model, data_loader, optimizer)
        if seed < 0:
            raise ValueError(f"StepTrainer needs a seed >= 0, got {seed}.")
        self.seed = seed
        self.frozen_parameters = frozen_parameters
        self.amp = amp
        self.grad_scaler = None
        if amp:
            if not torch.cuda.is_available():
                raise RuntimeError("SOLVER.AMP.ENABLED needs CUDA; this machine has none.")
            self.grad_scaler = grad_scaler or torch.amp.GradScaler("cuda")

    def reset_data_loader(self, data_loader):
        """Use ``data_loader`` from the next step on (e.g. one that starts at the resumed
        iteration)."""
        self.data_loader = data_loader
        self._data_loader_iter = iter(data_loader)

    def run_step(self):
        assert self.model.training, "[StepTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        seed_global_rngs(derive_seed(self.seed, DOMAIN.STEP, self.iter, comm.get_rank()))
        with torch.autocast("cuda") if self.amp else contextlib.nullcontext():
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        self.check_finite(loss_dict)

        self.optimizer.zero_grad()
        if self.amp:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        if self.frozen_parameters is not None:
            for p in self.frozen_parameters(self.iter):
                p.grad = None

        self._write_metrics(loss_dict, data_time)
        self.log_grad_norm()

        if self.amp:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    @torch.no_grad()
    def log_grad_norm(self):
        """Log the L2 norm of all gradients of this step, before any clipping, as ``grad_norm``
        (the optimizer's parameters that have a gradient; with AMP, unscaled). It is what the
        distillation gates compare between a method and its baseline."""
        grads = [
            p.grad
            for group in self.optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not grads:
            return
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
        )
        if self.grad_scaler is not None:
            norm = norm / self.grad_scaler.get_scale()
        get_event_storage().put_scalar("grad_norm", float(norm), smoothing_hint=False)

    def check_finite(self, loss_dict):
        """Raise FloatingPointError on every rank if any rank has a non-finite loss term."""
        keys = sorted(loss_dict)
        bad = torch.stack([~torch.isfinite(loss_dict[k].detach()).all() for k in keys]).float()
        if comm.get_world_size() > 1:
            dist.all_reduce(bad)
        if bad.any():
            names = [k for k, b in zip(keys, bad.tolist()) if b]
            values = {k: float(loss_dict[k].detach().float().sum()) for k in keys}
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration {self.iter}: {names} "
                f"(values on rank {comm.get_rank()}: {values}). Lower SOLVER.BASE_LR, add "
                "warm-up (SOLVER.WARMUP_ITERS) or gradient clipping (SOLVER.CLIP_GRADIENTS), "
                "or check the inputs."
            )

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
