"""Training engine: start-up (:func:`setup`), the :class:`Trainer` and :func:`launch`.

A train script needs three calls (see train_net.py)::

    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, ..., backend=default_backend(load_config(args).MODEL.DEVICE))
    # in main(args): cfg = setup(args); Trainer(cfg) -> resume_or_load -> train
"""

from .defaults import (
    ConfigKeyError,
    default_argument_parser,
    derive_output_dir,
    load_config,
    setup,
)
from .launch import default_backend, launch
from .seeding import derive_seed, seed_global_rngs
from .train_loader import ResumableTrainLoader
from .train_loop import StepTrainer
from .trainer import Trainer, teacher_param_groups, unwrap_model

__all__ = [
    "ConfigKeyError",
    "ResumableTrainLoader",
    "StepTrainer",
    "Trainer",
    "default_argument_parser",
    "default_backend",
    "derive_output_dir",
    "derive_seed",
    "launch",
    "load_config",
    "seed_global_rngs",
    "setup",
    "teacher_param_groups",
    "unwrap_model",
]
