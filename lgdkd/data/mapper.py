"""detectron2's DatasetMapper with errors that name the bad file, and the loaders that use it.

detectron2's mapper lets a missing or corrupted image surface as a bare PIL/OS error from a
data-loader worker, with no hint of which record of which json is at fault. The mapper here
keeps detectron2's behaviour and only rewrites those failures into errors naming the file,
the record's ``image_id`` and the fix.
"""

import itertools
import logging

import torch.utils.data as torchdata
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import build_detection_test_loader as _d2_build_test_loader
from detectron2.data import detection_utils
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from detectron2.data.detection_utils import check_metadata_consistency

from .box_counts import load_dataset_dicts, usable_boxes_error
from .errors import DatasetError

__all__ = [
    "AnnotatedTestMapper",
    "CheckedDatasetMapper",
    "ImageReadError",
    "ImageSizeMismatchError",
    "build_test_loader",
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
    """Dataset dicts of ``cfg.DATASETS.TRAIN`` with the box rule applied, filtered as the
    config asks.

    Like detectron2's ``get_detection_dataset_dicts``, except that each set goes through
    :func:`lgdkd.data.box_counts.load_dataset_dicts` (boxes clipped to their image, empty
    and malformed ones dropped, counts logged once per set) and that a set left without data
    raises a DatasetError instead of a bare assertion:

    * a set whose boxes were all dropped by the rule, whatever
      ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` says (its counts and the fix are named);
    * no box at all in any set while ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on (it would
      remove every image). With the option off, a set of background images only is trained
      on, with a warning.

    Returns:
        list[dict] in detectron2's dataset format.
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise DatasetError("DATASETS.TRAIN is empty: name at least one registered data set.")
    per_set, counts = zip(*(load_dataset_dicts(name, with_counts=True) for name in names))
    per_set = list(per_set)
    for name, dicts in zip(names, per_set):
        if not len(dicts):
            raise DatasetError(f"DATASETS.TRAIN set {name!r} is empty: it has no image.")
    if cfg.MODEL.LOAD_PROPOSALS:
        files = cfg.DATASETS.PROPOSAL_FILES_TRAIN
        if len(files) != len(names):
            raise DatasetError(
                f"DATASETS.PROPOSAL_FILES_TRAIN has {len(files)} file(s) for the "
                f"{len(names)} set(s) of DATASETS.TRAIN {tuple(names)}."
            )
        per_set = [load_proposals_into_dataset(d, f) for d, f in zip(per_set, files)]
    if isinstance(per_set[0], torchdata.Dataset):
        return torchdata.ConcatDataset(per_set)
    dicts = list(itertools.chain.from_iterable(per_set))
    if "annotations" not in dicts[0]:
        return dicts

    counts = [c for c in counts if c is not None]
    emptied = [c for c in counts if c.boxes - c.crowd > 0 and c.usable == 0]
    if emptied:
        raise usable_boxes_error(emptied)
    if sum(c.usable for c in counts) == 0:
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
    if cfg.MODEL.KEYPOINT_ON and cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE > 0:
        dicts = filter_images_with_few_keypoints(
            dicts, cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        )
    try:
        classes = MetadataCatalog.get(names[0]).thing_classes
        check_metadata_consistency("thing_classes", names)
        print_instances_class_histogram(dicts, classes)
    except AttributeError:  # as detectron2: sets without class names are not checked
        pass
    return dicts


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
    :class:`AnnotatedTestMapper` when ``keep_annotations``. The set is loaded with the box
    rule (:func:`lgdkd.data.box_counts.load_dataset_dicts`), as for training."""
    mapper = AnnotatedTestMapper(cfg) if keep_annotations else CheckedDatasetMapper(cfg, False)
    dicts = load_dataset_dicts(dataset_name)
    if not len(dicts):
        raise DatasetError(f"Data set {dataset_name!r} is empty: it has no image.")
    if cfg.MODEL.LOAD_PROPOSALS:
        index = list(cfg.DATASETS.TEST).index(dataset_name)
        dicts = load_proposals_into_dataset(dicts, cfg.DATASETS.PROPOSAL_FILES_TEST[index])
    return _d2_build_test_loader(dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)
