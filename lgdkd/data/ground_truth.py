"""The ground truth that COCO evaluation reads, with the boxes of the training rule.

detectron2's ``COCOEvaluator`` reads the json named by the set's ``json_file`` metadata (or
converts the dataset dicts when there is none), so without this module a box partly outside
its image is clipped for training but not for evaluation. :func:`evaluation_ground_truth`
applies :mod:`lgdkd.data.annotations`' rule to that json and gives the evaluator:

* the set's own json and name, when the rule changes nothing (its numbers are then those of
  the official file, e.g. COCO val2017);
* otherwise a sanitised copy, ``<output_dir>/<name>_ground_truth_<sha>.json``, where
  ``<sha>`` is the sha256 of the source file's bytes and :data:`RULE_VERSION`: a copy is
  reused only for the same source content, never for a stale one. The evaluator reads it
  through a metadata-only name (``<name>@ground_truth_<sha>``) whose ``json_file`` is the
  copy and whose class metadata are the set's.

Pascal VOC sets are not handled here: ``PascalVOCDetectionEvaluator`` reads the XML boxes as
VOC's devkit does (datasets/README.md, "Which boxes are used").
"""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.utils.file_io import PathManager

from .annotations import RULE_VERSION, BoxCounts, sanitize_coco_dict
from .box_counts import load_dataset_dicts, recorded_box_counts, report_box_counts
from .errors import DatasetError

__all__ = [
    "EvaluationGroundTruth",
    "box_counts",
    "evaluation_box_counts",
    "evaluation_ground_truth",
]


@dataclass(frozen=True)
class EvaluationGroundTruth:
    """What :func:`evaluation_ground_truth` gives the COCO evaluator.

    Attributes:
        json_file: the COCO json of the ground truth (the set's own, or the sanitised copy).
        evaluator_name: the name to give ``COCOEvaluator``: the set's, or the metadata-only
            name whose ``json_file`` is the copy.
        counts: what the rule did to the set's json.
        sanitized: whether ``json_file`` was written here (a sanitised copy, or the
            conversion of a set without json) rather than being the set's own json.
    """

    dataset: str
    json_file: str
    evaluator_name: str
    counts: BoxCounts
    sanitized: bool


# (json path, size, mtime) -> result; a json changed on disk is read again
_memo: Dict[Tuple[str, int, int], EvaluationGroundTruth] = {}


def evaluation_ground_truth(dataset_name, output_dir) -> EvaluationGroundTruth:
    """The COCO ground truth of ``dataset_name`` with the training rule applied.

    The set's json is read once per process (again when it changes on disk); a set without
    ``json_file`` metadata is converted from its dataset dicts (detectron2's
    ``convert_to_coco_dict``) on every call. A sanitised copy is written (atomically) under
    ``output_dir`` the first time it is needed in this process and reused while its name,
    which holds the source's sha256, matches.

    Raises:
        DatasetError: the json is not COCO, or names a category id it does not define.
    """
    meta = MetadataCatalog.get(dataset_name)
    json_file = getattr(meta, "json_file", None)
    if json_file is None:
        return _from_dataset_dicts(dataset_name, output_dir)
    local = PathManager.get_local_path(json_file)
    if not os.path.isfile(local):
        DatasetCatalog.get(dataset_name)  # sets generated on first load write their json then
    st = os.stat(local)
    key = (os.path.abspath(local), st.st_size, st.st_mtime_ns)
    found = _memo.get(key)
    if found is not None and os.path.isfile(found.json_file):
        report_box_counts(found.counts, evaluation=True, note=_note(found))
        return found
    with open(local, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{local} (data set {dataset_name!r}) is not valid json: {e}") from e
    out, counts = sanitize_coco_dict(data, dataset_name, local)
    if out is data:
        result = EvaluationGroundTruth(dataset_name, local, dataset_name, counts, False)
    else:
        digest = _sha256(raw)
        path, name = _publish(dataset_name, output_dir, digest, out, data.get("categories"))
        result = EvaluationGroundTruth(dataset_name, path, name, counts, True)
    _memo[key] = result
    report_box_counts(counts, evaluation=True, note=_note(result))
    return result


def evaluation_box_counts(dataset_name) -> BoxCounts:
    """The rule's counts on the evaluation ground truth of ``dataset_name``, nothing written."""
    meta = MetadataCatalog.get(dataset_name)
    json_file = getattr(meta, "json_file", None)
    if json_file is None:
        data = convert_to_coco_dict(dataset_name)
        where = None
    else:
        where = PathManager.get_local_path(json_file)
        if not os.path.isfile(where):
            DatasetCatalog.get(dataset_name)
        with open(where, "rb") as f:
            data = json.load(f)
    _, counts = sanitize_coco_dict(data, dataset_name, where)
    report_box_counts(counts, evaluation=True)
    return counts


def box_counts(dataset_name, evaluation=False) -> BoxCounts:
    """The :class:`BoxCounts` of a registered set, as this process last reported them.

    Args:
        evaluation: False for the set's dataset dicts (training and test loaders), True for
            the ground truth that COCO evaluation reads (its json). The two can differ by
            what detectron2's loader skips (e.g. instances without a valid polygon).

    A set that this process has not loaded yet is loaded (and reported) now.
    """
    counts = recorded_box_counts(dataset_name, evaluation)
    if counts is None:
        if evaluation:
            evaluation_box_counts(dataset_name)
        else:
            load_dataset_dicts(dataset_name)
        counts = recorded_box_counts(dataset_name, evaluation)
    if counts is None:
        raise DatasetError(f"Data set {dataset_name!r} has no box annotations to count.")
    return counts


def _from_dataset_dicts(dataset_name, output_dir):
    data = convert_to_coco_dict(dataset_name)
    # detectron2 stamps the conversion time here: it would change the content key every time
    data["info"] = {"description": f"{dataset_name}, converted from its dataset dicts"}
    out, counts = sanitize_coco_dict(data, dataset_name)
    raw = json.dumps(out, sort_keys=True).encode()
    path, name = _publish(dataset_name, output_dir, _sha256(raw), out, out.get("categories"))
    result = EvaluationGroundTruth(dataset_name, path, name, counts, True)
    report_box_counts(counts, evaluation=True, note=_note(result))
    return result


def _sha256(raw):
    return hashlib.sha256(RULE_VERSION.encode() + b"\0" + raw).hexdigest()


def _note(result):
    if not result.sanitized and result.evaluator_name == result.dataset:
        return f"{result.json_file} used as it is"
    return f"evaluated against {result.json_file}"


def _publish(dataset_name, output_dir, digest, data, categories):
    """Write ``data`` (unless a file of the same content key exists) and register the
    metadata-only name that points COCOEvaluator at it. Returns (path, name)."""
    if output_dir is None:
        raise ValueError(f"An output folder is needed to write the ground truth of {dataset_name}")
    name = f"{dataset_name}@ground_truth_{digest[:16]}"
    alias = MetadataCatalog.get(name)
    # the name's json_file is fixed on first use in this process (MetadataCatalog refuses a
    # different value), so later calls, e.g. with the teacher's output folder, reuse that file
    path = getattr(alias, "json_file", None) or os.path.join(
        output_dir, f"{_safe(dataset_name)}_ground_truth_{digest[:16]}.json"
    )
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    if getattr(alias, "json_file", None) is None:
        source = MetadataCatalog.get(dataset_name)
        extra = {}
        if hasattr(source, "thing_classes"):
            extra["thing_classes"] = list(source.thing_classes)
        id_map = getattr(source, "thing_dataset_id_to_contiguous_id", None)
        if id_map is None and categories and hasattr(source, "json_file"):
            # what detectron2's load_coco_json sets on the set when it is loaded
            id_map = {c: i for i, c in enumerate(sorted(c["id"] for c in categories))}
        if id_map is not None:
            extra["thing_dataset_id_to_contiguous_id"] = dict(id_map)
        alias.set(json_file=path, evaluator_type="coco", ground_truth_of=dataset_name, **extra)
    return path, name


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
