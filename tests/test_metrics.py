"""Evaluation: scores from the confusion matrix, the table, the metric object."""

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from seg_gan.metrics import Scores, SegmentationMetrics


def random_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(preds, target) [4, 20, 20]: 6 classes in the labels, 7 predicted, class 7 never occurs, some void."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 6, (4, 20, 20), generator=gen)
    target[:, :2] = 255
    return torch.randint(0, 7, (4, 20, 20), generator=gen), target


def test_scores_agree_with_torchmetrics_jaccard():
    preds, target = random_split()
    metrics = SegmentationMetrics([f"c{i}" for i in range(8)], ignore_index=255)
    for image in range(4):  # accumulated over the split, not averaged per image
        metrics.update(preds[image : image + 1], target[image : image + 1])
    scores = metrics.compute()
    reference = MulticlassJaccardIndex(8, ignore_index=255, average="macro")(preds, target)
    assert scores.miou == pytest.approx(float(reference), abs=1e-6)
    assert torch.isnan(scores.iou[7]) and scores.iou[6] == 0  # 7: absent from both; 6: predicted only
    valid = target != 255
    assert scores.pixel_acc == pytest.approx(float((preds == target)[valid].float().mean()))
    assert int(scores.confmat.sum()) == int(valid.sum())
    assert f"mIoU {float(reference):.4f}" in scores.table("t")
    assert scores.table("t").splitlines()[-3].split() == ["c7", "-"]
    logged = scores.metrics("val")
    assert logged["val/mIoU"] == scores.miou and "val/IoU/c7" not in logged and logged["val/IoU/c6"] == 0


def test_scores_by_hand():
    confmat = torch.tensor([[3, 1], [0, 4]])  # rows = truth: 3 of class 0 right, 1 taken for class 1
    scores = Scores.from_confmat(confmat, ["a", "b"])
    assert scores.iou.tolist() == pytest.approx([3 / 4, 4 / 5])  # TP / (TP + FP + FN)
    assert scores.miou == pytest.approx((3 / 4 + 4 / 5) / 2) and scores.pixel_acc == pytest.approx(7 / 8)


def test_compute_is_cached_until_the_next_update_or_reset():
    preds, target = random_split()
    metrics = SegmentationMetrics([f"c{i}" for i in range(8)])
    metrics.update(preds, target)
    first = metrics.compute()
    assert metrics.compute() is first  # callbacks and notebooks read what the module logged
    metrics.update(preds[:1], target[:1])
    assert metrics.compute() is not first and int(metrics.compute().confmat.sum()) > int(first.confmat.sum())
    metrics.reset()
    assert metrics.update_count == 0
