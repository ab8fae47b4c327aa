"""Command line and start-up: arguments, config loading with clear errors, ``setup``.

``setup(args)`` turns train_net.py's arguments into the frozen config of a run: lgdkd's keys,
the config file and the command-line overrides, OUTPUT_DIR derived from the config's path,
the data sets of the config registered, class counts from the data, the device and the seed
fixed for this machine, then detectron2's ``default_setup`` (logging, config.yaml, RNGs).
"""

import difflib
import logging
import os
import re

import torch
import torch.distributed as dist
import yaml
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser as _d2_argument_parser
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import check_config, get_cfg
from ..data import apply_num_classes, register_datasets_from_cfg

__all__ = [
    "ConfigKeyError",
    "default_argument_parser",
    "derive_output_dir",
    "load_config",
    "setup",
]

logger = logging.getLogger(__name__)

_CPU_NOTE = """
Without CUDA (or with MODEL.DEVICE cpu) training runs on the CPU, and --num-gpus N starts N
CPU processes that communicate with the gloo backend (one model replica each).
"""


def default_argument_parser(epilog=None):
    """detectron2's parser (--config-file, --resume, --eval-only, --num-gpus, --num-machines,
    --machine-rank, --dist-url, trailing KEY VALUE opts), with a note on CPU runs."""
    parser = _d2_argument_parser(epilog)
    parser.epilog = (parser.epilog or "") + _CPU_NOTE
    return parser


class ConfigKeyError(KeyError):
    """A config file or command-line option names a key that the config does not have."""

    def __str__(self):
        return str(self.args[0])


_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def _all_keys(node, prefix=""):
    for name, value in node.items():
        yield prefix + name
        if isinstance(value, CfgNode):
            yield from _all_keys(value, prefix + name + ".")


def _closest_keys(cfg, key, n=5):
    keys = list(_all_keys(cfg))
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    leaves = {k: k.rsplit(".", 1)[-1] for k in keys}
    close_leaf = difflib.get_close_matches(leaf, set(leaves.values()), n=n, cutoff=0.8)
    for k in keys:
        if leaves[k] in close_leaf and k not in close:
            close.append(k)
    return close[:n]


def _unknown_key_error(cfg, exc, source):
    """A ConfigKeyError for yacs' 'Non-existent key' errors, else None."""
    match = _UNKNOWN_KEY.search(str(exc))
    if match is None:
        return None
    key = match.group(1)
    close = _closest_keys(cfg, key)
    hint = f"Closest valid keys: {', '.join(close)}." if close else "No similar key exists."
    if key.startswith("MODEL.DISTILL.") and not close:
        hint += (
            " A role declares its MODEL.DISTILL node in its own module (lgdkd.config."
            "distill_config): import that module before the config is made."
        )
    return ConfigKeyError(
        f"{source}: unknown config key {key!r}. {hint} Every key and its meaning is listed in "
        "detectron2/config/defaults.py and lgdkd/config.py."
    )


def derive_output_dir(config_file: str) -> str:
    """``output/<path of the config below configs/, without .yaml>``.

    ``configs/LGD/retinanet_R_50_FPN_1x.yaml`` -> ``output/LGD/retinanet_R_50_FPN_1x``; a
    config outside any ``configs/`` folder gives ``output/<file name without extension>``.
    Relative to the current directory, like detectron2's default ``./output``.
    """
    parts = os.path.normpath(os.path.abspath(config_file)).split(os.sep)
    stem = os.path.splitext(parts[-1])[0]
    folders = parts[:-1]
    if "configs" in folders:
        last = len(folders) - 1 - folders[::-1].index("configs")
        return os.path.join("output", *folders[last + 1 :], stem)
    return os.path.join("output", stem)


def _sets_output_dir(config_file, opts):
    if "OUTPUT_DIR" in list(opts or [])[0::2]:
        return True
    return bool(config_file) and "OUTPUT_DIR" in CfgNode.load_yaml_with_base(config_file)


def load_config(args) -> CfgNode:
    """lgdkd's config with ``args.config_file`` and ``args.opts`` merged (not frozen).

    OUTPUT_DIR is derived from the config file's path (:func:`derive_output_dir`) unless the
    file (or one of its _BASE_ files) or the options set it. An unknown key raises
    :class:`ConfigKeyError` naming the file, the key and the closest valid keys; a missing
    file raises FileNotFoundError.
    """
    cfg = get_cfg()
    config_file = getattr(args, "config_file", "")
    opts = list(getattr(args, "opts", None) or [])
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file {config_file!r} not found (from {os.getcwd()}).")
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            err = _unknown_key_error(cfg, e, f"config file {config_file} (or its _BASE_ files)")
            if err is None:
                raise
            raise err from None
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as e:
        err = _unknown_key_error(cfg, e, "command-line option")
        if err is None:
            raise
        raise err from None
    if config_file and not _sets_output_dir(config_file, opts):
        cfg.OUTPUT_DIR = derive_output_dir(config_file)
    try:
        check_config(cfg, f"config file {config_file}" if config_file else "the config")
    except ValueError as e:
        raise ConfigKeyError(str(e)) from None
    return cfg


def _resolve_seed(cfg, resume: bool):
    """A fixed seed for SEED < 0, and the reason: the seed of the run being resumed (from its
    config.yaml), or a new random one shared by all processes."""
    if cfg.SEED >= 0:
        return cfg.SEED, None
    previous = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if resume and os.path.isfile(previous):
        with open(previous) as f:
            seed = int((yaml.safe_load(f) or {}).get("SEED", -1))
        if seed >= 0:
            return seed, f"SEED -1: reusing the seed {seed} of the run being resumed ({previous})."
    seed = int(comm.shared_random_seed())
    return seed, f"SEED -1: picked the seed {seed}; it is saved in config.yaml for --resume."


def setup(args) -> CfgNode:
    """The frozen config of a run, with logging, config.yaml and RNGs set up.

    Steps: :func:`load_config`; register the config's data sets
    (``lgdkd.data.register_datasets_from_cfg``) and set the class counts from the training
    data (``lgdkd.data.apply_num_classes``); MODEL.DEVICE "cpu" when CUDA is unavailable and
    AMP off on the CPU (both logged); a fixed SEED (see below); freeze; detectron2's
    ``default_setup``.

    SEED < 0 ("random" in detectron2) becomes one concrete seed, written to config.yaml, so
    that ``--resume`` (which reads it back) continues the same random streams.
    """
    cfg = load_config(args)
    register_datasets_from_cfg(cfg)
    apply_num_classes(cfg)
    notes = []
    if not torch.cuda.is_available() and torch.device(cfg.MODEL.DEVICE).type != "cpu":
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE!r} -> 'cpu'.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and torch.device(cfg.MODEL.DEVICE).type == "cpu":
        notes.append("SOLVER.AMP.ENABLED needs CUDA: training in float32 on the CPU.")
        cfg.SOLVER.AMP.ENABLED = False
    if torch.device(cfg.MODEL.DEVICE).type == "cpu" and torch.set_flush_denormal(True):
        # denormal floats (e.g. in frozen pretrained layers) slow CPU convolutions manyfold
        notes.append("CPU run: denormal floats are flushed to zero.")
    cfg.SEED, note = _resolve_seed(cfg, getattr(args, "resume", False))
    if note:
        notes.append(note)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="lgdkd")
    for note in notes:
        logger.warning(note)
    if comm.get_world_size() > 1:
        backend = dist.get_backend()
        kind = "CPU processes" if backend == "gloo" else "GPU processes"
        logger.info(f"{comm.get_world_size()} {kind} communicating with {backend}.")
    return cfg
