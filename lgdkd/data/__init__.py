"""Data sets and loaders.

The engine calls, in this order, for every process::

    register_datasets_from_cfg(cfg)   # DeepForest, proving ground + DATASETS.COCO_FORMAT
    apply_num_classes(cfg)            # NUM_CLASSES keys from the training data
    get_train_dataset_dicts(cfg) + CheckedDatasetMapper(cfg, True)   # the engine's loader
    build_test_loader(cfg, name)

Every set is loaded with one box rule (:mod:`lgdkd.data.annotations`: boxes clipped to their
image, empty or malformed ones dropped, counts logged and readable with :func:`box_counts`),
for training, for the test loaders and, through :func:`evaluation_ground_truth`, for the
ground truth of COCO evaluation.

Importing this package registers nothing; :mod:`lgdkd.data.toy` (a generated set for tests)
is imported on demand.
"""

from .annotations import (
    DROP_REASONS,
    MIN_BOX_SIDE,
    BoxCounts,
    sanitize_coco_dict,
    sanitize_dataset_dicts,
)
from .box_counts import load_dataset_dicts
from .catalog import (
    NUM_CLASSES_KEYS,
    DatasetError,
    apply_num_classes,
    check_datasets,
    num_classes_of,
    read_coco_categories,
    register_coco_format,
    register_datasets_from_cfg,
)
from .deepforest import (
    DeepForestError,
    deepforest_statistics,
    prepare_deepforest,
    register_deepforest,
)
from .fashion_mnist import FashionMnistError
from .generated import default_datasets_root
from .ground_truth import EvaluationGroundTruth, box_counts, evaluation_ground_truth
from .mapper import (
    AnnotatedTestMapper,
    CheckedDatasetMapper,
    ImageReadError,
    ImageSizeMismatchError,
    build_test_loader,
    get_train_dataset_dicts,
)
from .proving_ground import (
    ProvingGroundError,
    ProvingGroundOptions,
    prepare_proving_ground,
    proving_ground_statistics,
    register_proving_ground,
)

__all__ = [
    "DROP_REASONS",
    "MIN_BOX_SIDE",
    "NUM_CLASSES_KEYS",
    "BoxCounts",
    "CheckedDatasetMapper",
    "DatasetError",
    "DeepForestError",
    "EvaluationGroundTruth",
    "FashionMnistError",
    "ImageReadError",
    "ImageSizeMismatchError",
    "ProvingGroundError",
    "ProvingGroundOptions",
    "apply_num_classes",
    "AnnotatedTestMapper",
    "box_counts",
    "build_test_loader",
    "check_datasets",
    "deepforest_statistics",
    "default_datasets_root",
    "evaluation_ground_truth",
    "get_train_dataset_dicts",
    "load_dataset_dicts",
    "num_classes_of",
    "prepare_deepforest",
    "prepare_proving_ground",
    "proving_ground_statistics",
    "read_coco_categories",
    "register_coco_format",
    "register_datasets_from_cfg",
    "register_deepforest",
    "register_proving_ground",
    "sanitize_coco_dict",
    "sanitize_dataset_dicts",
]
