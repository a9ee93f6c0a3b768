"""Evaluation, owned by one object: a dataset-level confusion matrix -> per-class IoU, mIoU, pixel
accuracy -> the per-class table users read (as mmsegmentation's IoU metric does).

`SegmentationMetrics` is torchmetrics' `MulticlassConfusionMatrix` (summed across processes under DDP,
so scores are exact) whose `compute()` returns `Scores`. IoU_c = TP / (TP + FP + FN); mIoU averages
every class that occurs in the labels or the predictions (a class absent from both has no defined
IoU; torchmetrics' `MulticlassJaccardIndex(average="macro")` and the Cityscapes evaluation drop it the
same way). It is not a per-image average.
"""

from dataclasses import dataclass

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


@dataclass
class Scores:
    """Scores of one split.

    Attributes:
        confmat: int64 [C, C] pixel counts, rows = ground truth, columns = prediction (void excluded).
        class_names: the C class names.
        iou: float64 [C], nan for a class absent from labels and predictions.
        miou: mean of the defined IoUs (0 when no class is defined at all).
        pixel_acc: share of labelled pixels predicted right.
    """

    confmat: torch.Tensor
    class_names: list[str]
    iou: torch.Tensor
    miou: float
    pixel_acc: float

    @classmethod
    def from_confmat(cls, confmat: torch.Tensor, class_names: list[str]) -> "Scores":
        counts = confmat.detach().cpu().long()
        true_pos, total = counts.diag().double(), counts.double()
        union = total.sum(0) + total.sum(1) - true_pos
        iou = torch.where(union > 0, true_pos / union.clamp(min=1), torch.nan)
        miou = float(iou.nanmean()) if (union > 0).any() else 0.0
        return cls(counts, list(class_names), iou, miou, float(true_pos.sum() / total.sum().clamp(min=1)))

    def metrics(self, split: str) -> dict[str, float]:
        """`split/mIoU`, `split/pixel_acc` and `split/IoU/<class>` (defined classes only), for logging."""
        values = {f"{split}/mIoU": self.miou, f"{split}/pixel_acc": self.pixel_acc}
        for name, iou in zip(self.class_names, self.iou.tolist(), strict=True):
            if iou == iou:  # nan: the class has no IoU
                values[f"{split}/IoU/{name}"] = iou
        return values

    def table(self, title: str) -> str:
        """A fixed-width per-class IoU table (percent) ending with the mIoU line."""
        width = max(len(name) for name in self.class_names) + 2
        lines = [title, f"{'class':<{width}}{'IoU %':>8}", "-" * (width + 8)]
        for name, value in zip(self.class_names, self.iou.tolist(), strict=True):
            cell = "  -  " if value != value else f"{100 * value:.2f}"
            lines.append(f"{name:<{width}}{cell:>8}")
        present = int((~self.iou.isnan()).sum())
        lines += [
            "-" * (width + 8),
            f"mIoU {self.miou:.4f}  pixel_acc {self.pixel_acc:.4f}  ({present} of "
            f"{len(self.class_names)} classes present; '-' = absent from labels and predictions)",
        ]
        return "\n".join(lines)


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Accumulates a split's confusion matrix; `compute()` gives its `Scores` (cached until the next
    `update` or `reset`, so callbacks and notebooks read the same figures the module logged).

    Args:
        class_names: the C class names (C = number of classes).
        ignore_index: void label, left out of every count.

    `update(preds, target)`: preds int64 [B, H, W] predicted classes, target int64 [B, H, W] train ids.
    """

    def __init__(self, class_names: list[str], ignore_index: int = 255):
        super().__init__(len(class_names), ignore_index=ignore_index, validate_args=False)
        self.class_names = list(class_names)

    def compute(self) -> Scores:
        return Scores.from_confmat(super().compute(), self.class_names)
