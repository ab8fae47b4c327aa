"""Data sets that lgdkd generates on first use (DeepForest, its dev split, the proving ground, the
toy sets): where they live, how their files are pinned, how a folder is published once when
several processes start together, and their lazy registration in detectron2's catalogs."""

import contextlib
import hashlib
import os
import shutil
import tempfile
from typing import Callable, Type

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "default_datasets_root",
    "file_lock",
    "publish_folder",
    "register_lazy_set",
    "sha256_file",
]


def default_datasets_root() -> str:
    """Root folder of the data sets: ``$DETECTRON2_DATASETS`` if set, else ``datasets/``.

    Without the variable, the ``datasets/`` folder of the lgdkd checkout is used (the folder
    that holds ``datasets/README.md``); for an installed, non-editable lgdkd, ``./datasets``.
    """
    env = os.environ.get("DETECTRON2_DATASETS")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo_datasets = os.path.join(os.path.dirname(package), "datasets")
    if os.path.isdir(repo_datasets):
        return repo_datasets
    return os.path.abspath("datasets")


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str):
    """Exclusive advisory lock on ``path``; yields True when held. POSIX ``flock``; where it
    is unavailable this yields False and the atomic rename of :func:`publish_folder` alone
    keeps the result consistent."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield False
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def publish_folder(folder: str, build: Callable[[str], None], replace: bool = False) -> None:
    """Make ``folder`` by ``build(tmp)`` once, safe when several processes start together.

    Under the lock ``<parent>/.<name>.lock``: when ``folder`` exists (and not ``replace``)
    nothing is done; else the temporary folders that killed builds left
    (``<parent>/.<name>-tmp-*``) are removed, ``build`` writes (and checks) a fresh temporary
    folder of mode 0755, and that folder is renamed into place, replacing an old one with
    ``replace``. A build that fails leaves nothing behind.
    """
    parent, name = os.path.split(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    prefix = f".{name}-tmp-"
    with file_lock(os.path.join(parent, f".{name}.lock")) as locked:
        if os.path.isdir(folder) and not replace:
            return
        if locked:  # every builder holds the lock: the others' temporary folders are stale
            for other in os.listdir(parent):
                if other.startswith(prefix):
                    shutil.rmtree(os.path.join(parent, other), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would keep other users out of the set
        try:
            build(tmp)
            if replace and os.path.isdir(folder):
                shutil.rmtree(folder)
            try:
                os.rename(tmp, folder)
            except OSError:
                if not os.path.isdir(folder):  # not a lost race (no lock): a real failure
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)


def register_lazy_set(
    name: str,
    json_file: str,
    image_root: str,
    load: Callable[[], list],
    error: Type[Exception],
    **metadata,
) -> str:
    """Register ``name`` in detectron2's catalogs with ``load`` (called on first use: the files
    may not exist yet) and its metadata (``json_file``, ``image_root``, COCO evaluation and
    ``metadata``). Idempotent for the same ``json_file``; another one under the same name
    raises ``error``."""
    if name in DatasetCatalog.list():
        registered = getattr(MetadataCatalog.get(name), "json_file", None)
        if registered != json_file:
            raise error(
                f"Data set {name!r} is already registered with {registered}, not {json_file}: "
                "DETECTRON2_DATASETS changed in this process, or another data set uses the name."
            )
        return name
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        evaluator_type="coco", json_file=json_file, image_root=image_root, **metadata
    )
    return name
