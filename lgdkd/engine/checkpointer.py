"""The run's checkpoints and the loading rules of train_net.py.

Rules (what ``Trainer.resume_or_load`` and ``train_net.py --eval-only`` do):

* **Initial weights.** ``MODEL.WEIGHTS`` initialises the *student* only (for a plain detector,
  the detector): an ImageNet ``.pkl`` with detectron2's name-matching heuristics, a detector
  checkpoint, or a distillation checkpoint, whose ``student.*`` part is used. Keys that do not
  fit are logged, as detectron2 does for initial weights. Teachers load their own files
  (MODEL.DISTILL.TEACHER.WEIGHTS), strictly, when the model is built.
* **Checkpoints** hold the student and everything trained (adapters, distillers, LGD's
  teacher, CoLAD's second network, HEAD's assistant), the optimizer and the schedule, but not
  a frozen pretrained teacher: its weights stay in its own file, whose fingerprint (sha256) the
  checkpoint keeps. Every file (periodic ``model_<iter>.pth``, ``model_final.pth``,
  ``last_checkpoint``) is written atomically.
* **Resume** loads the newest *readable* checkpoint strictly (a missing, unexpected or
  mis-shaped key is an error). An unreadable one (empty, truncated) is reported by name and
  the next older one is used; training then redoes the lost iterations, which exact resume
  makes identical. The teacher is rebuilt from its file and refused if that file changed.
  Checkpoints written before this rule (which hold the teacher) resume too: their teacher
  tensors must equal the file's.
* **Evaluation** (``--eval-only``) loads ``MODEL.WEIGHTS`` strictly. A distillation checkpoint
  given to a plain detector config is recognised and its student is evaluated.
"""

import logging
import os
import re
from typing import Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from torch import nn

from ..checkpoint import (
    StrictLoadError,
    _as_tensors,
    atomic_save,
    atomic_write_text,
    check_state_dict,
    file_fingerprint,
    read_checkpoint_file,
)
from ..modeling.distill.meta_arch import DistillationDetector

__all__ = [
    "RunCheckpointer",
    "load_for_evaluation",
    "load_initial_weights",
    "local_weights_path",
    "newest_readable_checkpoint",
]

logger = logging.getLogger(__name__)

STUDENT_PREFIX = "student."
FROZEN_KEY = "frozen_weights"
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")


def local_weights_path(path: str, what: str) -> str:
    """A local file for ``path`` (detectron2:// and http(s) names are fetched by detectron2's
    PathManager); a clear error when that is impossible (e.g. no network)."""
    if not path or os.path.isfile(path):
        return path
    if "://" not in path:
        raise FileNotFoundError(
            f"{what} not found: {path!r} (relative paths are resolved from {os.getcwd()})."
        )
    try:
        return PathManager.get_local_path(path)
    except Exception as e:
        raise StrictLoadError(
            f"Cannot fetch {what} {path!r}: {type(e).__name__}: {e}. Download the file on a "
            "machine with access and set the key to its local path."
        ) from e


def frozen_weight_files(model: nn.Module) -> Dict[str, str]:
    """``{state-dict prefix: weights file}`` of the parts of ``model`` that are loaded from a
    file of their own and never trained (a frozen pretrained teacher); {} otherwise."""
    if isinstance(model, DistillationDetector):
        return model.frozen_weight_files()
    return {}


# --------------------------------------------------------------------------------------------
# Initial weights and evaluation
# --------------------------------------------------------------------------------------------
def load_initial_weights(model: nn.Module, path: str) -> Optional[str]:
    """Initialise the student of ``model`` (``model`` itself when it is not a distillation
    model) from ``path`` = MODEL.WEIGHTS; see the module docstring. Returns what was loaded
    into (for the log), or None when ``path`` is empty."""
    if not path:
        return None
    local = local_weights_path(path, "MODEL.WEIGHTS")
    target = model.student if isinstance(model, DistillationDetector) else model
    checkpointer = DetectionCheckpointer(target)
    try:
        checkpoint = checkpointer._load_file(local)
    except Exception as e:
        raise StrictLoadError(f"Cannot read MODEL.WEIGHTS {path!r}: {type(e).__name__}: {e}") from e
    state = checkpoint.get("model", {})
    if not checkpoint.get("matching_heuristics", False) and any(
        k.startswith(STUDENT_PREFIX) for k in state
    ):
        logger.info(f"MODEL.WEIGHTS {path} is a distillation checkpoint: using its student.")
        checkpoint["model"] = {
            k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)
        }
    n_own = len(target.state_dict())
    incompatible = checkpointer._load_model(checkpoint)
    if incompatible is not None:
        checkpointer._log_incompatible_keys(incompatible)
        missing = len(incompatible.missing_keys)
        logger.info(
            f"MODEL.WEIGHTS {path}: {n_own - missing} of {n_own} tensors of the "
            f"{'student' if target is not model else 'model'} initialised from the file."
        )
    return "student" if target is not model else "model"


def _run_config_hint(path: str) -> str:
    run_cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
    if os.path.isfile(run_cfg):
        return (
            f"Evaluate it with the config it was trained with: python train_net.py "
            f"--config-file {run_cfg} --eval-only MODEL.WEIGHTS {path}"
        )
    return (
        "Evaluate it with the (distillation) config it was trained with, or export its student "
        "with tools/export_student.py and evaluate the exported config."
    )


def load_for_evaluation(model: nn.Module, path: str, what: str = "MODEL.WEIGHTS") -> str:
    """Load trained weights for ``--eval-only``, strictly; returns what was loaded.

    * a plain detector config: a detector checkpoint, or a distillation checkpoint whose
      ``student.*`` part fits (recognised and used; the rest is ignored);
    * a distillation config: a distillation checkpoint (a frozen teacher comes from its own
      file), or a plain detector checkpoint, loaded into the student.
    """
    local = local_weights_path(path, what)
    checkpoint = read_checkpoint_file(local, f"weights to evaluate ({what})")
    if checkpoint.get("matching_heuristics", False):
        raise StrictLoadError(
            f"{what} {path!r} holds backbone (ImageNet) or Caffe2-format weights, not a trained "
            "detector: evaluation needs the checkpoint of a trained model (e.g. "
            "OUTPUT_DIR/model_final.pth)."
        )
    state = _as_tensors(checkpoint["model"])
    is_distill_ckpt = any(k.startswith(STUDENT_PREFIX) for k in state)
    if isinstance(model, DistillationDetector):
        if not is_distill_ckpt:
            if model.eval_network != "student":
                raise StrictLoadError(
                    f"{what} {path!r} is a plain detector checkpoint, but this config evaluates "
                    "the co-trained network (MODEL.DISTILL.EVAL_NETWORK 'teacher')."
                )
            check_state_dict(
                model.student.state_dict(), state, what, path, "the student", _run_config_hint(path)
            )
            model.student.load_state_dict(state, strict=True)
            return "student (from a plain detector checkpoint)"
        frozen = tuple(frozen_weight_files(model))
        check_state_dict(model.state_dict(), state, what, path, type(model).__name__, ignore=frozen)
        kept = {k: v for k, v in state.items() if not (frozen and k.startswith(frozen))}
        model.load_state_dict(kept, strict=False)
        return "distillation model"
    if is_distill_ckpt:
        student = {
            k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)
        }
        hint = (
            "The file is a distillation checkpoint (student.* keys) whose student does not fit "
            "this config. " + _run_config_hint(path)
        )
        check_state_dict(model.state_dict(), student, what, path, type(model).__name__, hint)
        model.load_state_dict(student, strict=True)
        logger.info(
            f"{what} {path} is a distillation checkpoint: evaluating its student "
            f"({len(state) - len(student)} other tensors ignored)."
        )
        return "student of a distillation checkpoint"
    check_state_dict(model.state_dict(), state, what, path, type(model).__name__)
    model.load_state_dict(state, strict=True)
    return "model"


# --------------------------------------------------------------------------------------------
# The run's checkpoints
# --------------------------------------------------------------------------------------------
class RunCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with atomic writes, frozen teachers kept out, strict and
    fault-tolerant resume (see the module docstring).

    ``save`` / ``tag_last_checkpoint`` are what detectron2's PeriodicCheckpointer calls;
    :meth:`resume` replaces ``resume_or_load(..., resume=True)``.
    """

    def __init__(self, model, save_dir="", **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.frozen = frozen_weight_files(model)
        self._loading = ""

    # ---------------------------------------------------------------------- writing
    def model_state_dict(self) -> Dict[str, torch.Tensor]:
        """The model's state dict without the frozen parts."""
        prefixes = tuple(self.frozen)
        state = self.model.state_dict()
        if not prefixes:
            return state
        return type(state)((k, v) for k, v in state.items() if not k.startswith(prefixes))

    def save(self, name: str, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model_state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.frozen:
            data[FROZEN_KEY] = {p: file_fingerprint(f) for p, f in self.frozen.items()}
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str):
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    # ---------------------------------------------------------------------- reading
    def candidates(self) -> List[str]:
        """Checkpoint files of save_dir, newest first: the tagged one, model_final.pth, then
        model_<iter>.pth by decreasing iteration."""
        found = []
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if tagged:
            found.append(tagged)
        names = os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []
        if "model_final.pth" in names:
            found.append(os.path.join(self.save_dir, "model_final.pth"))
        periodic = sorted(
            (int(m.group(1)), n) for n in names for m in [_PERIODIC.match(n)] if m is not None
        )
        found += [os.path.join(self.save_dir, n) for _, n in reversed(periodic)]
        unique = []
        for f in found:
            if os.path.abspath(f) not in map(os.path.abspath, unique):
                unique.append(f)
        return unique

    def resume(self) -> Optional[dict]:
        """Load the newest readable checkpoint of save_dir (model strictly, plus every
        checkpointable). Returns its extra data with ``"path"``, or None when there is none."""
        for i, path in enumerate(self.candidates()):
            try:
                checkpoint = read_checkpoint_file(path, "checkpoint")
            except (StrictLoadError, FileNotFoundError) as e:
                self.logger.warning(f"{e} Trying the next older checkpoint of {self.save_dir}.")
                continue
            if i > 0:
                self.logger.warning(
                    f"Resuming from {path}: newer checkpoints could not be read; the "
                    "iterations after it are trained again (exactly as before)."
                )
            self.logger.info(f"[Checkpointer] Resuming from {path} ...")
            self._loading = path
            try:
                self._load_model(checkpoint)
            finally:
                self._loading = ""
            for key, obj in self.checkpointables.items():
                if key in checkpoint:
                    obj.load_state_dict(checkpoint.pop(key))
            checkpoint["path"] = path
            return checkpoint
        if self.has_checkpoint() or self.candidates():
            self.logger.warning(
                f"No readable checkpoint in {self.save_dir}: training starts from the beginning."
            )
        return None

    def _load_model(self, checkpoint):
        if not self._loading:  # plain detectron2 use (e.g. fine-tuning): its own rules
            return super()._load_model(checkpoint)
        path = self._loading
        state = _as_tensors(checkpoint["model"])
        own = self.model.state_dict()
        self._check_frozen(checkpoint, state, own, path)
        prefixes = tuple(self.frozen)
        check_state_dict(
            own,
            state,
            "checkpoint",
            path,
            type(self.model).__name__,
            hint="The run's config changed since this checkpoint was written (or the file "
            "belongs to another run): resume with the config of the run (OUTPUT_DIR/"
            "config.yaml), or start a new run in another OUTPUT_DIR.",
            ignore=prefixes,
        )
        kept = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
        self.model.load_state_dict(kept, strict=False)
        return None

    def _check_frozen(self, checkpoint, state, own, path):
        saved = checkpoint.get(FROZEN_KEY, {})
        for prefix, weights in self.frozen.items():
            now = file_fingerprint(weights)
            before = saved.get(prefix)
            if before is not None:
                if before["sha256"] != now["sha256"]:
                    raise StrictLoadError(
                        f"The weights file {weights!r} of the frozen teacher changed since the "
                        f"checkpoint {path!r} was written (sha256 {before['sha256'][:12]}... "
                        f"from {before['path']}, now {now['sha256'][:12]}...). A resumed run "
                        "must keep its teacher: restore that file, or start a new run (another "
                        "OUTPUT_DIR, or without --resume)."
                    )
                if before["path"] != now["path"]:
                    self.logger.info(
                        f"The teacher weights moved ({before['path']} -> {now['path']}); same "
                        "content."
                    )
                continue
            # a checkpoint written before frozen teachers were left out: it holds them
            old = {k: v for k, v in state.items() if k.startswith(prefix)}
            differ = [
                k for k, v in old.items() if k in own and not torch.equal(own[k].cpu(), v.cpu())
            ]
            if differ:
                raise StrictLoadError(
                    f"The checkpoint {path!r} holds a teacher that differs from its weights file "
                    f"{weights!r} ({len(differ)} tensors differ, e.g. {differ[0]}): the teacher "
                    "file changed since the run started. Restore it, or start a new run."
                )


def newest_readable_checkpoint(save_dir: str) -> str:
    """The newest checkpoint of ``save_dir`` that can be read ("" when there is none);
    unreadable newer ones are reported by name."""
    checkpointer = RunCheckpointer(nn.Module(), save_dir)
    for path in checkpointer.candidates():
        try:
            read_checkpoint_file(path, "checkpoint")
        except (StrictLoadError, FileNotFoundError) as e:
            logger.warning(f"{e} Trying the next older checkpoint of {save_dir}.")
            continue
        return path
    return ""
