"""Weight files: strict loading, atomic writing and fingerprints.

detectron2's ``DetectionCheckpointer`` loads leniently (it logs mismatches and goes on), which
is right for initialising a backbone from ImageNet weights but silently wrong for a teacher,
for ``--eval-only`` and for ``--resume``. Everything here is strict: a missing, unexpected or
mis-shaped key is an error that names the keys and the file.

Files are written atomically (:func:`atomic_save`): a temporary file in the same folder,
flushed to disk, then renamed over the target, so that a crash leaves either the old file or
the new one, never a truncated one.
"""

import hashlib
import os
import tempfile
from typing import Dict, Iterable, Mapping, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

__all__ = [
    "StrictLoadError",
    "atomic_save",
    "atomic_write_text",
    "check_state_dict",
    "file_fingerprint",
    "load_strict",
    "read_checkpoint",
    "read_checkpoint_file",
]


class StrictLoadError(RuntimeError):
    """A weight file cannot be read, or does not match the model it is loaded into."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_checkpoint_file(path: str, what: str = "checkpoint") -> dict:
    """The whole content of a detectron2/lgdkd checkpoint (``{"model": ..., ...}``).

    ``.pkl`` files are read as detectron2 reads them (model-zoo dicts, or Caffe2 blobs marked
    ``matching_heuristics``); anything else with ``torch.load``.

    Raises:
        FileNotFoundError: ``path`` is empty or not a file.
        StrictLoadError: the file cannot be decoded; the message names the file, its size and
            the reason (an empty or truncated file is said to be one).
    """
    if not path:
        raise FileNotFoundError(f"No {what} given (empty path).")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{what} not found: {path!r}. Train that model first (its own train_net.py run "
            "writes OUTPUT_DIR/model_final.pth) or fix the path."
        )
    size = os.path.getsize(path)
    if size == 0:
        raise StrictLoadError(
            f"Cannot read {what} {path!r}: the file is empty (0 bytes), e.g. its writing was "
            "interrupted. Use another checkpoint of the run or retrain."
        )
    try:
        loaded = DetectionCheckpointer(nn.Module())._load_file(path)
    except Exception as e:
        hint = ""
        text = str(e)
        if "zip" in text.lower() or "EOF" in text or "truncated" in text.lower():
            hint = " The file looks truncated (an interrupted write or copy)."
        raise StrictLoadError(
            f"Cannot read {what} {path!r} ({size} bytes): {type(e).__name__}: {text}.{hint}"
        ) from e
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), Mapping):
        raise StrictLoadError(f"{what} {path!r} holds no model state dict.")
    return loaded


def _as_tensors(state: Mapping) -> Dict[str, torch.Tensor]:
    return {
        k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked") or isinstance(v, torch.Tensor)
    }


def read_checkpoint(path: str, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The model state dict stored in ``path`` (.pth of detectron2/lgdkd, or detectron2 .pkl).

    Args:
        what: how to call the file in errors, e.g. "teacher weights
            (MODEL.DISTILL.TEACHER.WEIGHTS)".
    """
    loaded = read_checkpoint_file(path, what)
    if loaded.get("matching_heuristics", False):
        raise StrictLoadError(
            f"{what} {path!r} is an ImageNet or Caffe2/Detectron1-style file whose keys need "
            "heuristic renaming (e.g. a backbone's pretrained weights), not the checkpoint of "
            "a trained detector. Give a checkpoint written by training this detector."
        )
    return _as_tensors(loaded["model"])


# --------------------------------------------------------------------------------------------
# Strict matching
# --------------------------------------------------------------------------------------------
def _fmt(keys, n=8):
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def check_state_dict(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    what: str,
    path: str,
    target: str,
    hint: str = "",
    ignore: Iterable[str] = (),
):
    """Raise :class:`StrictLoadError` unless ``state`` has exactly the keys and shapes of
    ``own`` (keys starting with a prefix in ``ignore`` are left out on both sides).

    Args:
        what, path: how to name the file in the message.
        target: how to name the model (e.g. its class).
        hint: what to do about it; default: check the config.
    """
    prefixes = tuple(ignore)
    own = {k: v for k, v in own.items() if not (prefixes and k.startswith(prefixes))}
    state = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"missing in the file: {_fmt(missing)}")
    if unexpected:
        parts.append(f"not in the model: {_fmt(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatch: {_fmt(mismatched)}")
    raise StrictLoadError(
        f"{what} {path!r} does not match the model it is loaded into ({target}); "
        + "; ".join(parts)
        + ". "
        + (
            hint
            or "Check that the config file describes the network these weights were trained "
            "with (architecture, depth, class count)."
        )
    )


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
    check_state_dict(module.state_dict(), state, what, path, type(module).__name__)
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _fsync_dir(folder: str):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. on file systems that do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_save(obj, path: str):
    """``torch.save(obj, path)`` written to a temporary file, flushed and renamed: a crash
    during the write leaves the previous ``path`` (or none), never a partial file."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str):
    """Write ``text`` to ``path`` atomically (see :func:`atomic_save`)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------
_fingerprints = {}


def file_fingerprint(path: str) -> Dict[str, object]:
    """``{"path", "size", "sha256"}`` of a file (the digest is cached per path, size and
    modification time, so asking again is free)."""
    path = os.path.abspath(path)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _fingerprints:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _fingerprints[key] = digest.hexdigest()
    return {"path": path, "size": int(st.st_size), "sha256": _fingerprints[key]}
