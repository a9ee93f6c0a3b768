"""mIoU and friends from a dataset-level confusion matrix, and the per-class table users read.

The confusion matrix is torchmetrics' `MulticlassConfusionMatrix` accumulated over the whole split
(summed across processes under DDP), so scores are exact: IoU_c = TP / (TP + FP + FN), and mIoU
averages every class that occurs in the labels or the predictions (a class absent from both has
no defined IoU; torchmetrics' `MulticlassJaccardIndex(average="macro")` and the Cityscapes
evaluation drop it the same way).
"""

import torch


def scores(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """confmat [C, C] (rows = truth, cols = prediction) -> per-class `iou` [C] (nan where
    undefined), `miou` and `pixel_acc` (share of non-void pixels predicted right)."""
    confmat = confmat.double()
    true_pos = confmat.diag()
    union = confmat.sum(0) + confmat.sum(1) - true_pos
    iou = torch.where(union > 0, true_pos / union.clamp(min=1), torch.nan)
    return {
        "iou": iou,
        "miou": iou.nanmean() if (union > 0).any() else torch.tensor(0.0, dtype=torch.float64),
        "pixel_acc": true_pos.sum() / confmat.sum().clamp(min=1),
    }


def iou_table(class_names: list[str], result: dict[str, torch.Tensor], title: str) -> str:
    """A fixed-width per-class IoU table (percent) ending with the mIoU line."""
    width = max(len(name) for name in class_names) + 2
    lines = [title, f"{'class':<{width}}{'IoU %':>8}", "-" * (width + 8)]
    for name, value in zip(class_names, result["iou"].tolist(), strict=True):
        cell = "  -  " if value != value else f"{100 * value:.2f}"  # nan: class absent
        lines.append(f"{name:<{width}}{cell:>8}")
    present = int((~result["iou"].isnan()).sum())
    lines.append("-" * (width + 8))
    lines.append(
        f"mIoU {float(result['miou']):.4f}  pixel_acc {float(result['pixel_acc']):.4f}  "
        f"({present} of {len(class_names)} classes present; '-' = absent from labels and predictions)"
    )
    return "\n".join(lines)
