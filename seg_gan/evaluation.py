"""Evaluation, for any segmentation LightningModule: whole-image or sliding-window predictions, the
validation and test metric objects, the logged scores and the per-class table.

`SegmentationModule` is the base of `seg_gan.SegGAN`, which adds the adversarial training. A subclass
sets `self.evaluated` (the network evaluation runs: G, or the mean teacher), `self.memory_format`,
`self.val_metrics` and `self.test_metrics` (`seg_gan.metrics.SegmentationMetrics`), and the hyperparameters
`inference`, `window`, `stride`, `flip_tta`.
"""

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from seg_gan.inference import predict_logits


class SegmentationModule(pl.LightningModule):
    evaluated: torch.nn.Module
    validated_epoch = 0  # the epoch of the last validation, for the table printed at the end of fit

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised image -> [B, C, H, W] logits of the evaluated network."""
        return self.evaluated(image)

    def predict_logits(self, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits [B, C, H, W] for whole images of any size at `out_size` (default: the image size), with
        the configured inference mode (whole / sliding window) and flip averaging."""
        return predict_logits(self.evaluated, image, out_size, self.hparams.inference, self.hparams.window,
                              self.hparams.stride, self.hparams.flip_tta, self.memory_format)  # fmt: skip

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self.predict_step(batch, batch_idx), batch["mask"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.predict_step(batch, batch_idx), batch["mask"])

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # at the labels' resolution (full, whatever data.eval_size); a prediction item's mask is all void
        return self.predict_logits(batch["image"], batch["mask"].shape[-2:]).argmax(1)  # [B, H, W] train ids

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches to catch errors early, not a score
            return self.val_metrics.reset()
        self.log_dict(self.val_metrics.compute().metrics("val"))  # the confusion matrix summed over processes
        self.validated_epoch = self.current_epoch  # for the table printed at the end of fit
        if self.trainer.state.fn == "validate":
            self.print_table("val")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute().metrics("test"))
        self.print_table("test")

    def on_fit_end(self) -> None:
        self.print_table("val")

    @rank_zero_only
    def print_table(self, split: str) -> None:
        metrics = self.val_metrics if split == "val" else self.test_metrics
        if metrics.update_count == 0:
            print("\nNo validation ran, so there is no per-class IoU table (see trainer.check_val_every_n_epoch).")
        else:
            epoch = self.validated_epoch if split == "val" else self.current_epoch
            print("\n" + metrics.compute().table(f"Per-class IoU ({split}, epoch {epoch})"), flush=True)
