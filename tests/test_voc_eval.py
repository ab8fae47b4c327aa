"""The VOC evaluator reports LD's VOC "AP": the mean over IoU 0.50:0.05:0.95 of the VOC2007
11-point AP (HikariTJU/LD's custom evaluator), plus AP50 and AP75, checked on a hand-made
VOC2007-style set where the answer is known."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import register_pascal_voc
from detectron2.structures import Boxes, Instances

from lgdkd.config import get_cfg
from lgdkd.engine import Trainer

_XML = """<annotation><filename>{id}.jpg</filename>
<size><width>200</width><height>150</height><depth>3</depth></size>
<object><name>tree</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
<bndbox><xmin>11</xmin><ymin>11</ymin><xmax>110</xmax><ymax>110</ymax></bndbox></object>
</annotation>"""


@pytest.fixture
def tiny_voc(tmp_path):
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "Annotations" / "000001.xml").write_text(_XML.format(id="000001"))
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    name = f"tiny_voc_2007_{abs(hash(str(tmp_path)))}"
    register_pascal_voc(name, str(tmp_path), "test", 2007, class_names=["tree"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("dx, expected_ap", [(16, 50.0), (0, 100.0), (40, 0.0)])
def test_voc_ap_is_the_mean_over_ten_iou_thresholds(tiny_voc, dx, expected_ap):
    """One ground-truth box 100 x 100 px (VOC's +1 convention) and one prediction shifted by
    dx px: IoU = (100 - dx) / (100 + dx), a true positive at the thresholds below it."""
    cfg = get_cfg()
    cfg.TEST.EVALUATOR = "voc"
    evaluator = Trainer.build_evaluator(cfg, tiny_voc)
    evaluator.reset()
    pred = Instances((150, 200))
    pred.pred_boxes = Boxes(torch.tensor([[10.0 + dx, 10.0, 110.0 + dx, 110.0]]))
    pred.scores = torch.tensor([0.9])
    pred.pred_classes = torch.tensor([0])
    evaluator.process([{"image_id": "000001"}], [{"instances": pred}])
    res = evaluator.evaluate()["bbox"]
    iou = (100 - dx) / (100 + dx)
    per_threshold = [100.0 if iou >= t else 0.0 for t in np.arange(0.5, 0.96, 0.05)]
    assert len(per_threshold) == 10
    assert res["AP"] == pytest.approx(np.mean(per_threshold)) == pytest.approx(expected_ap)
    assert res["AP50"] == pytest.approx(100.0 if iou >= 0.5 else 0.0)
    assert res["AP75"] == pytest.approx(100.0 if iou >= 0.75 else 0.0)
