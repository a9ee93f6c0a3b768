"""Callbacks that write a run's outputs: its record (config.yaml, labeled_split.txt, val_split.txt), W&B
media, and the prediction files.

- `SaveConfig`: the resolved config.yaml and the labeled (and held-out val) split into the run's own
  folder; the whole configuration to the logger (the W&B run config), so runs can be grouped by any parameter.
- `WandbMedia`: fixed validation images with prediction / ground-truth masks (and D's confidence),
  the per-class IoU table each validation, the confusion matrix at the end of fit.
- `PredictionWriter`: train-id PNGs, the dataset's own label files and colour overlays from `predict`.
"""

from pathlib import Path

import lightning.pytorch as pl
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from seg_gan.errors import UserError
from seg_gan.runs import fresh_path, run_dir
from seg_gan.viz import colormap, confusion_figure, denormalize, palette


class SaveConfig(SaveConfigCallback):
    """The run's record in its own folder: config.yaml (the whole resolved configuration) and, for fit,
    labeled_split.txt (the labeled training images) and, where the data module held a val split out of
    train (`FolderDataModule` with `val: null`), val_split.txt; the configuration also goes to the logger
    (the W&B run config). No file ever overwrites another run's."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(fresh_path(folder, self.config_filename)), skip_none=False,
                             multifile=self.multifile)  # fmt: skip
            for attribute, filename in [("labeled_names", "labeled_split.txt"), ("val_names", "val_split.txt")]:
                names = getattr(trainer.datamodule, attribute, None)
                if stage == "fit" and names:
                    fresh_path(folder, filename).write_text("\n".join(names) + "\n")
            for logger in trainer.loggers:
                config = {k: v for k, v in self.config.clone().as_dict().items() if not k.startswith("_")}
                logger.log_hyperparams(config)
        self.already_saved = trainer.strategy.broadcast(True)


class WandbMedia(pl.Callback):
    """W&B media: fixed validation images with masks, per-class IoU table, confusion matrix.

    Args:
        num_images: validation images shown (the same ones every epoch).
        every_n_epochs: log the images every N validation epochs.
        seed: seed that picks the images.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, seed: int = 0):
        self.num_images, self.every_n_epochs, self.seed = num_images, every_n_epochs, seed

    @staticmethod
    def _run(trainer: pl.Trainer):
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger.experiment
        return None

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module computes this epoch's scores
        run = self._run(trainer)
        if run is None or trainer.sanity_checking or pl_module.val_metrics.update_count == 0:
            return
        import wandb

        scores = pl_module.val_metrics.compute()  # what the module logged for this epoch (cached)
        ious = scores.iou.tolist()
        rows = [[name, None if iou != iou else iou] for name, iou in zip(scores.class_names, ious, strict=True)]
        media = {"val/IoU_table": wandb.Table(columns=["class", "IoU"], data=rows)}
        if trainer.current_epoch % self.every_n_epochs == 0:
            media["val/examples"] = self.examples(trainer, pl_module)
        run.log({**media, "trainer/global_step": trainer.global_step})

    def examples(self, trainer: pl.Trainer, pl_module) -> list:
        """The same validation images each time: image with prediction and ground-truth masks,
        then D's confidence map (sigmoid of D on the prediction) for adversarial runs."""
        import wandb

        dataset = trainer.datamodule.val_set
        generator = torch.Generator().manual_seed(self.seed)
        indices = torch.randperm(len(dataset), generator=generator)[: self.num_images].tolist()
        labels = dict(enumerate(pl_module.val_metrics.class_names)) | {pl_module.hparams.ignore_index: "void"}
        images = []
        with torch.no_grad():
            for index in indices:
                item = dataset[index]
                image = item["image"].unsqueeze(0).to(pl_module.device)  # [1, 3, H, W]
                probs = pl_module.predict_logits(image).softmax(1)  # [1, C, H, W]
                mask = torch.nn.functional.interpolate(item["mask"][None, None].float(), size=image.shape[-2:],
                                                       mode="nearest")[0, 0].long()  # fmt: skip
                pixels = denormalize(item["image"])
                masks = {"prediction": {"mask_data": probs.argmax(1)[0].cpu().numpy(), "class_labels": labels},
                         "ground_truth": {"mask_data": mask.numpy(), "class_labels": labels}}  # fmt: skip
                images.append(wandb.Image(pixels, masks=masks, caption=item["name"]))
                if pl_module.discriminator is not None:
                    confidence = torch.sigmoid(pl_module.discriminator(probs, image))  # [1, 1, h, w]
                    confidence = torch.nn.functional.interpolate(confidence, size=image.shape[-2:])[0, 0]
                    images.append(
                        wandb.Image(colormap(confidence.cpu().numpy()), caption=f"{item['name']}: D confidence")
                    )
        return images

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        run = self._run(trainer)
        if run is None or pl_module.val_metrics.update_count == 0:
            return
        import wandb

        scores = pl_module.val_metrics.compute()
        figure = confusion_figure(scores.confmat, scores.class_names)
        run.log({"val/confusion_matrix": wandb.Image(figure), "trainer/global_step": trainer.global_step})
        plt.close(figure)


class PredictionWriter(BasePredictionWriter):
    """Writes predictions per image at the original resolution, mirroring <split>/<city>/ and keeping the stem:

    - the dataset's own label files, `<label_folder>/<split>/<city>/<name><label_suffix>` (the data module's
      `label_image`): Cityscapes `labelIds/.../<name>_labelIds.png` (label ids, what the test server and
      csEvalPixelLevelSemanticLabeling read); VOC `SegmentationClass/<split>/<name>.png` (palette PNGs,
      what the VOC evaluation server takes); a folder dataset's `masks/...` in its masks' format;
    - `trainIds/<split>/<city>/<name>_trainIds.png`: class indices;
    - `color/<split>/<city>/<name>_color.png`: the class colours blended over the image.

    Args:
        output_dir: folder for the predictions, created if missing.
        overwrite: allow writing into a folder that already holds files.
        alpha: opacity of the colours in the overlays.
    """

    def __init__(self, output_dir: str = "predictions", overwrite: bool = False, alpha: float = 0.5):
        super().__init__(write_interval="batch")
        self.output_dir, self.overwrite, self.alpha = Path(output_dir), overwrite, alpha

    def on_predict_start(self, trainer: pl.Trainer, pl_module) -> None:
        # rank 0 looks before any process writes (the broadcast waits for it): another rank's write probe
        # below must not be taken for a previous run's files
        holds_files = self.output_dir.is_dir() and any(self.output_dir.iterdir())
        if trainer.strategy.broadcast(holds_files, src=0):
            if not self.overwrite:
                raise UserError(f"writer.output_dir: {str(self.output_dir)!r} already holds files. Expected an "
                                "empty or new folder, or --writer.overwrite true to replace them.")  # fmt: skip
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / f".write-test-{trainer.global_rank}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise UserError(f"writer.output_dir: cannot write into {str(self.output_dir)!r} ({error}).") from None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        data = trainer.datamodule
        split = getattr(data, "predict_split", "predict")
        colors = palette(data.class_colors)
        for train_ids, image, name, city in zip(prediction.byte().cpu(), batch["image"], batch["name"],
                                                batch["city"], strict=True):  # fmt: skip
            train_ids = train_ids.numpy()  # [H, W] at the original resolution
            pixels = torch.nn.functional.interpolate(image[None].float(), size=train_ids.shape, mode="bilinear")[0]
            overlay = (1 - self.alpha) * denormalize(pixels) + self.alpha * colors[train_ids]
            outputs = {("trainIds", "_trainIds.png"): Image.fromarray(train_ids),
                       ("color", "_color.png"): Image.fromarray(overlay.astype(np.uint8))}  # fmt: skip
            label_image = data.label_image(train_ids) if hasattr(data, "label_image") else None
            if label_image is not None:
                outputs[(data.label_folder, data.label_suffix)] = label_image
            for (kind, suffix), picture in outputs.items():
                path = self.output_dir / kind / split / city / f"{name}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                picture.save(path)
