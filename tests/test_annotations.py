"""Which boxes are used: one rule for the training boxes and the COCO evaluation ground truth.

CPU only, about 10 s: tiny generated COCO sets (64 x 80 px toy images) whose json is edited to
hold degenerate, malformed, or partly outside boxes; one untrained tiny RetinaNet evaluation.
"""

import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from lgdkd.config import get_cfg
from lgdkd.data import (
    MIN_BOX_SIDE,
    CheckedDatasetMapper,
    DatasetError,
    box_counts,
    evaluation_ground_truth,
    get_train_dataset_dicts,
    register_coco_format,
    sanitize_dataset_dicts,
)
from lgdkd.data.annotations import apply_box_rule
from lgdkd.data.toy import make_toy_coco
from lgdkd.engine import Trainer
from lgdkd.evaluation.bootstrap import average_precision, match_images

H, W = 64, 80  # toy image size


@pytest.fixture
def box_log(caplog, monkeypatch):
    """caplog records of lgdkd.data.annotations, also when an earlier test set up lgdkd's
    logger without propagation (the handler is attached to the module's logger itself)."""
    log = logging.getLogger("lgdkd.data.annotations")
    monkeypatch.setattr(log, "propagate", False)
    log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=log.name)
    yield caplog
    log.removeHandler(caplog.handler)


def _toy_set(tmp_path, name, edit=None, image_size=(H, W)):
    """Register a 4-image toy set (objects in every image) as ``name``, its json edited by
    ``edit(data)``. Returns (json path, the json's data)."""
    json_path, image_root = make_toy_coco(
        str(tmp_path / name), num_images=4, image_size=image_size, empty_every=0
    )
    with open(json_path) as f:
        data = json.load(f)
    if edit is not None:
        edit(data)
        with open(json_path, "w") as f:
            json.dump(data, f)
    register_coco_format(name, json_path, image_root)
    return json_path, data


def _cfg(train=(), **extra):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)  # scale 1: mapped boxes equal the json's
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.RANDOM_FLIP = "none"
    for k, v in extra.items():
        cfg.merge_from_list([k, v])
    return cfg


def test_rule_on_arrays():
    boxes = np.array(
        [
            [10, 10, 20, 20],  # inside
            [70, 10, 30, 20],  # right part outside: clipped to w = 10
            [-5, -5, 20, 20],  # top-left outside: clipped to [0, 0, 15, 15]
            [10, 10, 0, 20],  # zero width
            [10, 10, -4, 20],  # negative width
            [np.nan, 10, 20, 20],  # non-finite
            [90, 10, 10, 10],  # entirely right of the image
            [60, 10, 20 + 1e-9, 20],  # x + w = 80 + 1e-9: float rounding, left as it is
            [70, 10, 100, 30],  # XYXY, right part outside: clipped to x1 = 80
        ]
    )
    xywh = np.array([True] * 8 + [False])
    sizes = np.tile([W, H], (len(boxes), 1)).astype(float)
    out, reason, clipped = apply_box_rule(boxes, xywh, sizes)
    assert reason.tolist() == [0, 0, 0, 3, 2, 1, 4, 0, 0]
    assert clipped.tolist() == [False, True, True] + [False] * 5 + [True]
    assert out[1].tolist() == [70, 10, 10, 20] and out[2].tolist() == [0, 0, 15, 15]
    assert out[7].tolist() == boxes[7].tolist() and out[8].tolist() == [70, 10, 80, 30]
    thin = apply_box_rule([[10, 10, MIN_BOX_SIDE, 5]], [True], [[W, H]])[1]
    assert thin.tolist() == [3]


def test_dataset_dicts_are_copied_on_write():
    records = [
        {
            "image_id": i,
            "file_name": f"{i}.png",
            "width": W,
            "height": H,
            "annotations": [
                {"bbox": [1, 1, 10, 10], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
                {"bbox": [70, 1, 90, 10], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},
                {"bbox": [0, 0, 500, 500], "bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 1},
            ],
        }
        for i in range(2)
    ]
    clean = [dict(records[0], annotations=records[0]["annotations"][:1])]
    assert sanitize_dataset_dicts(clean, "clean", num_classes=2)[0] is clean
    out, counts = sanitize_dataset_dicts(records, "xyxy", num_classes=2)
    assert out is not records and records[0]["annotations"][1]["bbox"] == [70, 1, 90, 10]
    assert [a["bbox"] for a in out[1]["annotations"]] == [[1, 1, 10, 10], [70, 1, 80, 10]] + [
        [0, 0, 500, 500]
    ]  # crowd regions are left as they are
    assert out[0]["annotations"][0] is records[0]["annotations"][0]
    assert (counts.boxes, counts.crowd, counts.clipped, counts.dropped) == (6, 2, 2, {})
    records[1]["annotations"][0]["category_id"] = 2
    with pytest.raises(DatasetError, match=r"'xyxy'.*image_id=1 \(1\.png\).*category_id=2"):
        sanitize_dataset_dicts(records, "xyxy", num_classes=2)


def test_all_zero_width_boxes_is_an_error(tmp_path):
    def zero_width(data):
        for a in data["annotations"]:
            a["bbox"][2] = 0.0

    _, data = _toy_set(tmp_path, "boxes_zero_width", zero_width)
    n = len(data["annotations"])
    for filter_empty in ("True", "False"):
        cfg = _cfg(["boxes_zero_width"], **{"DATALOADER.FILTER_EMPTY_ANNOTATIONS": filter_empty})
        with pytest.raises(DatasetError) as e:
            get_train_dataset_dicts(cfg)
        msg = str(e.value)
        assert "'boxes_zero_width': 4 images" in msg and f"{n} boxes" in msg
        assert f"{n} dropped (zero width or height)" in msg
        assert "Which boxes are used" in msg
    assert box_counts("boxes_zero_width").dropped == {"zero_size": n}


def test_one_degenerate_box_is_dropped_and_reported(tmp_path, box_log):
    def one_flat(data):
        data["annotations"][1]["bbox"][3] = 0.0

    _, data = _toy_set(tmp_path, "boxes_one_flat", one_flat)
    n = len(data["annotations"])
    dicts = get_train_dataset_dicts(_cfg(["boxes_one_flat"]))
    assert sum(len(d["annotations"]) for d in dicts) == n - 1
    flat = data["annotations"][1]
    assert flat["bbox"] not in [a["bbox"] for d in dicts for a in d["annotations"]]
    counts = box_counts("boxes_one_flat")
    assert (counts.boxes, counts.usable, counts.dropped) == (n, n - 1, {"zero_size": 1})
    lines = [r.getMessage() for r in box_log.records if "boxes_one_flat" in r.getMessage()]
    assert lines == [
        f"boxes_one_flat: {n} boxes in 4 images; 1 dropped (zero width or height), "
        f"0 clipped to the image"
    ]
    get_train_dataset_dicts(_cfg(["boxes_one_flat"]))  # logged once per process
    assert len([r for r in box_log.records if "boxes_one_flat" in r.getMessage()]) == 1


def test_malformed_boxes_are_dropped_with_examples(tmp_path, box_log):
    def malformed(data):
        data["annotations"][0]["bbox"][0] = None  # json null
        data["annotations"][1]["bbox"][2] = -12.0

    _, data = _toy_set(tmp_path, "boxes_malformed", malformed)
    get_train_dataset_dicts(_cfg(["boxes_malformed"]))
    counts = box_counts("boxes_malformed")
    assert counts.dropped == {"non_finite": 1, "negative_size": 1}
    image_id = data["annotations"][1]["image_id"]
    assert any(
        f"image_id={image_id}" in e and "-12.0" in e and "negative width or height" in e
        for e in counts.examples
    )
    assert any("e.g." in r.getMessage() for r in box_log.records)


def test_unknown_category_is_a_clear_error(tmp_path):
    def unknown(data):
        data["annotations"][2]["category_id"] = 7

    json_path, data = _toy_set(tmp_path, "boxes_unknown_cat", unknown)
    a = data["annotations"][2]
    expected = f"annotation id={a['id']} of image_id={a['image_id']} has category_id=7"
    with pytest.raises(DatasetError) as e:
        get_train_dataset_dicts(_cfg(["boxes_unknown_cat"]))
    assert json_path in str(e.value) and expected in str(e.value)
    with pytest.raises(DatasetError, match=expected):
        evaluation_ground_truth("boxes_unknown_cat", str(tmp_path / "eval"))


def _outside(data):
    """Image id 2 (width w): one box reaching 20 px over the right border, one over the
    top-left corner, one entirely right of the image (dropped). Returns their ids."""
    w = next(im["width"] for im in data["images"] if im["id"] == 2)
    anns = [a for a in data["annotations"] if a["image_id"] == 2]
    anns[0]["bbox"] = [w - 10.0, 10.0, 30.0, 20.0]
    anns[0]["area"] = 600.0
    template = dict(anns[0], area=400.0)
    next_id = max(a["id"] for a in data["annotations"]) + 1
    data["annotations"] += [
        dict(template, id=next_id, bbox=[-5.0, -5.0, 20.0, 20.0]),
        dict(template, id=next_id + 1, bbox=[w + 10.0, 10.0, 10.0, 10.0]),
    ]
    return anns[0]["id"], next_id, next_id + 1


def test_box_outside_is_clipped_for_training_and_evaluation(tmp_path):
    ids = {}

    def edit(data):
        ids["right"], ids["corner"], ids["away"] = _outside(data)

    json_path, _ = _toy_set(tmp_path, "boxes_outside", edit)
    with open(json_path, "rb") as f:
        source = f.read()

    # training: the dataset dicts and the mapped instances
    cfg = _cfg(["boxes_outside"])
    record = next(d for d in get_train_dataset_dicts(cfg) if d["image_id"] == 2)
    boxes = [a["bbox"] for a in record["annotations"]]
    assert [70.0, 10.0, 10.0, 20.0] in boxes and [0.0, 0.0, 15.0, 15.0] in boxes
    assert [90.0, 10.0, 10.0, 10.0] not in boxes
    gt = CheckedDatasetMapper(cfg, True)(record)["instances"].gt_boxes.tensor.tolist()
    assert [70.0, 10.0, 80.0, 30.0] in gt and [0.0, 0.0, 15.0, 15.0] in gt
    counts = box_counts("boxes_outside")
    assert (counts.clipped, counts.dropped) == (2, {"outside_image": 1})

    # evaluation: the COCO api of the evaluator the trainer builds
    out = str(tmp_path / "inference")
    evaluator = Trainer.build_evaluator(_cfg(), "boxes_outside", output_folder=out)
    anns = evaluator._coco_api.anns
    assert anns[ids["right"]]["bbox"] == [70.0, 10.0, 10.0, 20.0]
    assert anns[ids["right"]]["area"] == 200.0  # no segmentation: the clipped box's area
    assert anns[ids["corner"]]["bbox"] == [0.0, 0.0, 15.0, 15.0]
    assert ids["away"] not in anns
    truth = evaluation_ground_truth("boxes_outside", out)
    assert truth.sanitized and os.path.dirname(truth.json_file) == out
    assert box_counts("boxes_outside", evaluation=True) == truth.counts == counts
    with open(json_path, "rb") as f:
        assert f.read() == source  # the set's own file is never rewritten

    # perfect predictions of the clipped boxes: AP 100 against the clipped ground truth only
    def ap(evaluator):
        evaluator.reset()
        for image_id in evaluator._coco_api.getImgIds():
            gts = evaluator._coco_api.imgToAnns[image_id]
            mapping = MetadataCatalog.get("boxes_outside").thing_dataset_id_to_contiguous_id
            pred = Instances((H, W))
            xywh = torch.tensor([a["bbox"] for a in gts]).reshape(-1, 4)
            xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
            pred.pred_boxes = Boxes(xyxy.clamp(min=0).clamp(max=W))
            pred.scores = torch.ones(len(gts))
            pred.pred_classes = torch.tensor([mapping[a["category_id"]] for a in gts])
            evaluator.process([{"image_id": image_id}], [{"instances": pred}])
        return evaluator.evaluate()["bbox"]

    assert ap(evaluator)["AP"] == pytest.approx(100.0)
    # the folder names the ground truth its detections were evaluated against, and AP50
    # recomputed per image from the two files agrees with the evaluator's
    with open(os.path.join(out, "ground_truth.json")) as f:
        record = json.load(f)
    assert record == {"dataset": "boxes_outside", "json_file": truth.json_file}
    with open(record["json_file"]) as f, open(
        os.path.join(out, "coco_instances_results.json")
    ) as g:
        matches = match_images(json.load(f), json.load(g))
    assert average_precision(matches) == pytest.approx(100.0)
    raw = COCOEvaluator("boxes_outside", output_dir=str(tmp_path / "raw"), distributed=False)
    raw_ap = ap(raw)
    assert raw_ap["AP"] < 100.0  # what the raw json would have reported
    with open(json_path) as f, open(tmp_path / "raw" / "coco_instances_results.json") as g:
        raw_matches = match_images(json.load(f), json.load(g))
    assert average_precision(raw_matches) == pytest.approx(raw_ap["AP50"], abs=1e-6)


def test_clean_set_is_evaluated_with_its_own_json(toy_datasets, tmp_path):
    truth = evaluation_ground_truth(toy_datasets.val, str(tmp_path))
    assert (truth.json_file, truth.evaluator_name) == (toy_datasets.val_json, toy_datasets.val)
    assert not truth.sanitized and not truth.counts.changed and os.listdir(tmp_path) == []


def test_ground_truth_copy_follows_the_source_content(tmp_path):
    json_path, _ = _toy_set(tmp_path, "boxes_cache", lambda data: _outside(data))
    first = evaluation_ground_truth("boxes_cache", str(tmp_path / "eval"))
    again = evaluation_ground_truth("boxes_cache", str(tmp_path / "eval"))
    assert again == first and first.sanitized
    with open(json_path) as f:
        data = json.load(f)
    data["annotations"][0]["bbox"] = [1.0, 2.0, 100.0, 7.0]  # over the right border too
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1)
    changed = evaluation_ground_truth("boxes_cache", str(tmp_path / "eval"))
    assert changed.json_file != first.json_file and changed.counts.clipped == 3
    with open(changed.json_file) as f:
        assert json.load(f)["annotations"][0]["bbox"] == [1.0, 2.0, 79.0, 7.0]


def test_set_without_json_is_converted_with_the_rule(tmp_path):
    name = "boxes_dicts_only"
    records = [
        {
            "image_id": 1,
            "file_name": "a.png",
            "width": W,
            "height": H,
            "annotations": [
                {"bbox": [60, 5, 95, 25], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
                {"bbox": [5, 5, 5, 25], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
            ],
        }
    ]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).thing_classes = ["thing"]
    truth = evaluation_ground_truth(name, str(tmp_path))
    with open(truth.json_file) as f:
        anns = json.load(f)["annotations"]
    assert [a["bbox"] for a in anns] == [[60.0, 5.0, 20.0, 20.0]]
    assert (
        truth.counts.dropped == {"zero_size": 1} and records[0]["annotations"][0]["bbox"][2] == 95
    )


def test_evaluation_of_a_model_on_a_clipped_set(tiny_cfg, tmp_path):
    _toy_set(tmp_path, "boxes_eval", lambda data: _outside(data), image_size=(96, 128))
    cfg = tiny_cfg("retinanet")
    cfg.DATASETS.TEST = ("boxes_eval",)
    model = Trainer.build_model(cfg)
    results = Trainer.test(cfg, model)
    assert set(results["bbox"]) >= {"AP", "AP50"}  # one set: detectron2 returns its results
    folder = os.path.join(cfg.OUTPUT_DIR, "inference", "boxes_eval")
    names = os.listdir(folder)
    assert "coco_instances_results.json" in names
    assert any(n.startswith("boxes_eval_ground_truth_") for n in names)
