"""Data sets and loaders.

The engine calls, in this order, for every process::

    register_datasets_from_cfg(cfg)   # DeepForest + DATASETS.COCO_FORMAT, names checked
    apply_num_classes(cfg)            # NUM_CLASSES keys from the training data
    build_train_loader(cfg) / build_test_loader(cfg, name)

Importing this package registers nothing; :mod:`lgdkd.data.toy` (a generated set for tests)
is imported on demand.
"""

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
    default_datasets_root,
    prepare_deepforest,
    register_deepforest,
)
from .mapper import (
    AnnotatedTestMapper,
    CheckedDatasetMapper,
    ImageReadError,
    ImageSizeMismatchError,
    build_test_loader,
    build_train_loader,
    get_train_dataset_dicts,
)

__all__ = [
    "NUM_CLASSES_KEYS",
    "CheckedDatasetMapper",
    "DatasetError",
    "DeepForestError",
    "ImageReadError",
    "ImageSizeMismatchError",
    "apply_num_classes",
    "AnnotatedTestMapper",
    "build_test_loader",
    "build_train_loader",
    "check_datasets",
    "deepforest_statistics",
    "default_datasets_root",
    "get_train_dataset_dicts",
    "num_classes_of",
    "prepare_deepforest",
    "read_coco_categories",
    "register_coco_format",
    "register_datasets_from_cfg",
    "register_deepforest",
]
