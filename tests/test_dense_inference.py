"""The inference steps GFL and PAA share (lgdkd/modeling/detectors/dense_inference.py)."""

import torch

from lgdkd.modeling.detectors.dense_inference import candidates, detections, top_locations


def test_top_locations_keeps_the_rows_with_the_highest_class_score_aligned():
    scores = torch.tensor([[0.1, 0.2], [0.9, 0.0], [0.3, 0.4], [0.0, 0.8]])
    boxes = torch.arange(16.0).reshape(4, 4)
    s, b = top_locations(scores, 2, boxes)
    assert torch.equal(s, scores[[1, 3]]) and torch.equal(b, boxes[[1, 3]])
    s, b = top_locations(scores, 4, boxes)  # no more rows than k: everything, in order
    assert s is scores and b is boxes


def test_candidates_are_every_location_class_pair_above_the_threshold():
    boxes = [torch.tensor([[0.0, 0, 1, 1], [1, 1, 2, 2]]), torch.tensor([[2.0, 2, 3, 3]])]
    scores = [torch.tensor([[0.6, 0.7], [0.1, 0.2]]), torch.tensor([[0.05, 0.9]])]
    b, s, c = candidates(boxes, scores, 0.5)
    assert torch.equal(c, torch.tensor([0, 1, 1]))
    assert torch.allclose(s, torch.tensor([0.6, 0.7, 0.9]))
    assert torch.equal(b, torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]]))
    out = detections((4, 5), b, s, c)
    assert out.image_size == (4, 5) and len(out) == 3
    assert torch.equal(out.pred_boxes.tensor, b) and torch.equal(out.pred_classes, c)
