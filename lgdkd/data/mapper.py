"""detectron2's DatasetMapper with errors that name the bad file, and the loaders that use it.

detectron2's mapper lets a missing or corrupted image surface as a bare PIL/OS error from a
data-loader worker, with no hint of which record of which json is at fault. The mapper here
keeps detectron2's behaviour and only rewrites those failures into errors naming the file,
the record's ``image_id`` and the fix.
"""

import logging

from detectron2.data import DatasetMapper
from detectron2.data import build_detection_test_loader as _d2_build_test_loader
from detectron2.data import build_detection_train_loader as _d2_build_train_loader
from detectron2.data import detection_utils, get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations

from .catalog import DatasetError

__all__ = [
    "AnnotatedTestMapper",
    "CheckedDatasetMapper",
    "ImageReadError",
    "ImageSizeMismatchError",
    "build_test_loader",
    "build_train_loader",
    "get_train_dataset_dicts",
]

logger = logging.getLogger(__name__)


class ImageReadError(RuntimeError):
    """An image (or segmentation file) of a data set record cannot be read."""


class ImageSizeMismatchError(detection_utils.SizeMismatchError):
    """An image's real size differs from the height/width of its data set record."""


def _read_image_frame(exc):
    """The frame of detectron2's ``read_image`` that ``exc`` went through, else None."""
    tb = exc.__traceback__
    found = None
    while tb is not None:
        if tb.tb_frame.f_code is detection_utils.read_image.__code__:
            found = tb.tb_frame
        tb = tb.tb_next
    return found


def _record(dataset_dict):
    return f"image_id={dataset_dict.get('image_id', '?')!r}"


class CheckedDatasetMapper(DatasetMapper):
    """:class:`detectron2.data.DatasetMapper` whose image failures name the file and record.

    Built exactly like its parent (``CheckedDatasetMapper(cfg, is_train)`` or with explicit
    arguments). Input: one dataset dict; output: the parent's dict with ``"image"`` (uint8
    tensor (C, H, W)) and, when training, ``"instances"`` (possibly empty).

    Raises:
        ImageReadError: the file is missing, truncated or not a decodable image.
        ImageSizeMismatchError: the decoded size differs from the record's width/height.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except detection_utils.SizeMismatchError as e:
            raise ImageSizeMismatchError(
                f"{e} (record {_record(dataset_dict)}). Fix the record's width/height in the "
                f"annotation json, or replace the image with the one it describes."
            ) from e
        except Exception as e:
            frame = _read_image_frame(e)
            if frame is None:
                raise
            path = frame.f_locals.get("file_name", dataset_dict.get("file_name"))
            record = _record(dataset_dict)
            if path != dataset_dict.get("file_name"):
                record += f", image {dataset_dict.get('file_name')}"
            raise ImageReadError(
                f"Cannot read image {path} (data set record {record}): "
                f"{type(e).__name__}: {e}. The file is missing, truncated or not an image: "
                f"replace it with a valid image, or remove the record (and its annotations) "
                f"from the annotation json."
            ) from e


def get_train_dataset_dicts(cfg):
    """Dataset dicts of ``cfg.DATASETS.TRAIN``, filtered as the config asks.

    Like detectron2's loading (``get_detection_dataset_dicts``), except that when
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` leaves no image (no record has a non-crowd box)
    it raises a DatasetError saying so, instead of a bare assertion.

    Returns:
        list[dict] in detectron2's dataset format.
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise DatasetError("DATASETS.TRAIN is empty: name at least one registered data set.")
    try:
        dicts = get_detection_dataset_dicts(
            names,
            filter_empty=False,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    except AssertionError as e:
        raise DatasetError(f"Cannot load DATASETS.TRAIN {tuple(names)}: {e}") from e
    if not isinstance(dicts, list) or not dicts or "annotations" not in dicts[0]:
        return dicts
    with_boxes = sum(any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", [])) for d in dicts)
    if with_boxes == 0:
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            raise DatasetError(
                f"DATASETS.TRAIN {tuple(names)} has {len(dicts)} images but none with a "
                f"(non-crowd) box, so DATALOADER.FILTER_EMPTY_ANNOTATIONS=True removes them all "
                f"and nothing is left to train on. Check the json's annotations (image_id and "
                f"category_id must match its images and categories), or set "
                f"DATALOADER.FILTER_EMPTY_ANNOTATIONS False to train on background-only images."
            )
        logger.warning(
            "DATASETS.TRAIN %s has no box at all: training on background only.", tuple(names)
        )
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dicts = filter_images_with_only_crowd_annotations(dicts)
    return dicts


def build_train_loader(cfg):
    """detectron2's training loader over :func:`get_train_dataset_dicts`, with
    :class:`CheckedDatasetMapper` (``cfg.INPUT`` augmentations, ``is_train=True``)."""
    return _d2_build_train_loader(
        cfg, mapper=CheckedDatasetMapper(cfg, True), dataset=get_train_dataset_dicts(cfg)
    )


class AnnotatedTestMapper(CheckedDatasetMapper):
    """The test-time mapper (test resize, no random augmentation) that keeps the annotations,
    transformed like the image, as ``"instances"``: for evaluating models that read the ground
    truth (e.g. LGD's oracle teacher)."""

    def __init__(self, cfg):
        super().__init__(cfg, False)
        # DatasetMapper reads is_train only to decide whether annotations are kept; the
        # augmentations were already chosen for test time above.
        self.is_train = True


def build_test_loader(cfg, dataset_name, keep_annotations: bool = False):
    """detectron2's inference loader of one registered set, with :class:`CheckedDatasetMapper`
    (``is_train=False``: test-time resize, annotations dropped, batch size 1), or with
    :class:`AnnotatedTestMapper` when ``keep_annotations``."""
    mapper = AnnotatedTestMapper(cfg) if keep_annotations else CheckedDatasetMapper(cfg, False)
    return _d2_build_test_loader(cfg, dataset_name, mapper=mapper)
