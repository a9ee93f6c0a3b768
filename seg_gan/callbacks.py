"""Experiment tracking: a W&B logger that never blocks, the config saver, and W&B media logging.

- `WandbLogger`: Lightning's, recording offline when there is no API key (or when going online
  fails), with `val/mIoU` summarised as its max; the run is finished at the end so a second run in
  the same process or folder starts clean.
- `SaveConfig`: writes the resolved `config.yaml` into the run's own folder and hands the whole
  configuration to the logger (the W&B run config), so runs can be grouped by any parameter.
- `WandbMedia`: fixed validation images with prediction / ground-truth masks (and D's confidence),
  the per-class IoU table each validation, the confusion matrix at the end of fit.
- `PredictionWriter`: label-id / train-id PNGs and colour overlays from `predict`.
- `Checkpoint`: ModelCheckpoint with atomic writes, random states for exact resume, save on SIGTERM.
"""

import netrc
import os
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

from seg_gan.errors import UserError
from seg_gan.models import IMAGENET_MEAN, IMAGENET_STD


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger (same arguments) that records offline instead of prompting or failing.

    Offline (no API key, going online failed, `offline`, `mode: offline`), `log_model` still logs the
    checkpoints: as artifacts of the offline run, copied into `$WANDB_DATA_DIR/artifacts/staging` until
    `wandb sync` uploads them (one warning says so).

    Args:
        name: run name shown in W&B.
        save_dir: folder for W&B's files and the run folders (checkpoints, config.yaml).
        project: W&B project.
        group: W&B group (e.g. one per experiment arm).
        tags: W&B tags.
        offline: record offline (upload later with `wandb sync <save_dir>/wandb/offline-run-*`).
        log_model: log checkpoints as W&B artifacts (`true`: at the end, `all`: as saved).
        **kwargs: Lightning's (`id`, `prefix`, ...) and `wandb.init`'s (`entity`, `resume`, `mode`, ...).
    """

    def __init__(self, name: str | None = None, save_dir: str = "runs", project: str = "seg_gan",
                 group: str | None = None, tags: list[str] | None = None, offline: bool = False,
                 log_model: bool | str = False, **kwargs):  # fmt: skip
        mode = "offline" if offline else kwargs.get("mode") or os.environ.get("WANDB_MODE")
        reason = "offline=True" if offline else f"mode {mode!r}"
        if mode in (None, "online") and not has_wandb_credentials():
            mode, reason = "offline", "no W&B API key found"  # no account here: record locally, never prompt
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        # W&B's own `mode`, not Lightning's `offline`: that refuses log_model (W&B keeps artifacts of offline
        # runs) and sets WANDB_MODE for the rest of the process
        kwargs["mode"] = mode
        super().__init__(name=name, save_dir=save_dir, project=project, log_model=log_model, group=group, tags=tags,
                         **kwargs)  # fmt: skip
        if mode in ("offline", "dryrun"):
            self._warn_artifacts_offline(reason)
        elif mode == "disabled" and log_model:  # W&B would still copy every checkpoint into its staging folder
            rank_zero_warn(f"W&B is disabled (mode 'disabled'): log_model={log_model!r} is ignored.")
            self._log_model = False

    def _warn_artifacts_offline(self, reason: str) -> None:
        if self._log_model:
            from wandb.env import get_data_dir

            rank_zero_warn(f"W&B records this run offline ({reason}); log_model={self._log_model!r} keeps the "
                           f"checkpoints as artifacts of the offline run, copied into {get_data_dir()}/artifacts/"
                           f"staging (WANDB_DATA_DIR) until `wandb sync {self.save_dir}/wandb/offline-run-*` "
                           "uploads them.")  # fmt: skip

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            try:
                super().experiment  # noqa: B018 - creates the run
            except Exception as error:  # no network, server down, bad key: keep training, offline
                rank_zero_warn(f"W&B could not start online ({error}); recording offline instead.")
                self._wandb_init["mode"] = "offline"
                self._warn_artifacts_offline("going online failed")
                super().experiment  # noqa: B018
            if hasattr(self._experiment, "define_metric"):
                self._experiment.define_metric("val/mIoU", summary="max")
        return self._experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish()
            self._experiment = None  # a later fit/validate in this process starts a new run


def run_dir(trainer: pl.Trainer) -> Path | None:
    """The folder of this run: <save_dir>/<project>/<run id> for W&B, the log dir otherwise."""
    logger = trainer.logger
    if isinstance(logger, LightningWandbLogger):
        return Path(logger.save_dir) / str(logger.name) / str(logger.version)
    return None if trainer.log_dir is None else Path(trainer.log_dir)


class SaveConfig(SaveConfigCallback):
    """config.yaml into the run's own folder (no clash between runs) and the full config to the logger."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = run_dir(trainer)
        if trainer.is_global_zero and folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(folder / self.config_filename), skip_none=False, overwrite=True,
                             multifile=self.multifile)  # fmt: skip
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                config = {k: v for k, v in self.config.clone().as_dict().items() if not k.startswith("_")}
                logger.log_hyperparams(config)
        self.already_saved = trainer.strategy.broadcast(True)


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, crash-safe and resumable bit for bit.

    - Writes to `<file>.partial` and renames, so a crash while saving never leaves a corrupt file.
    - Keeps the random states (torch, numpy, python, CUDA) in the checkpoint and restores them, so a
      run resumed from a checkpoint taken at an epoch end continues exactly like an uninterrupted one
      (same data order and augmentations).
    - On SIGTERM (SLURM pre-emption, `scancel`), saves `last.ckpt` before the run stops.
    - `ckpt_path: last` also looks in the other run folders of the same project (each invocation gets
      a new W&B run id or CSV version, hence a new folder) and takes the newest `last.ckpt`.

    Args:
        every_n_batches: also write `last.ckpt` every N training batches (null: at epoch ends only).
            Resuming from such a mid-epoch checkpoint is supported but not bit-exact.
        monitor: metric that picks `best.ckpt`.
        mode: 'max' or 'min' of the monitored metric.
        filename: name of the best checkpoint.
        save_last: keep `last.ckpt`.
        dirpath: checkpoint folder (null: `<run folder>/checkpoints`).
    """

    def __init__(
        self,
        every_n_batches: int | None = None,
        monitor: str | None = "val/mIoU",
        mode: Literal["min", "max"] = "max",
        filename: str | None = "best",
        save_last: bool = True,
        dirpath: str | None = None,
    ):
        if every_n_batches is not None and every_n_batches < 1:
            raise UserError(f"checkpoint.every_n_batches: {every_n_batches} must be at least 1 (or null).")
        super().__init__(dirpath=dirpath, monitor=monitor, mode=mode, filename=filename, save_last=save_last,
                         auto_insert_metric_name=False)  # fmt: skip
        self.every_n_batches = every_n_batches

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        batches = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        if self.every_n_batches and batches % self.every_n_batches == 0 and self.dirpath is not None:
            self._save_checkpoint(trainer, os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION))

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        found = super()._find_last_checkpoints(trainer)
        if found or self.dirpath is not None:  # a fixed dirpath is shared by every run already
            return found
        own = Path(self._ModelCheckpoint__resolve_ckpt_dir(trainer))  # <save_dir>/<project>/<run>/checkpoints
        pattern = f"*/{own.name}/{self.CHECKPOINT_NAME_LAST}*{self.FILE_EXTENSION}"
        return {str(path) for path in own.parent.parent.glob(pattern)}

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            os.replace(partial, filepath)  # atomic on POSIX
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("checkpoint renamed")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        states = _collect_rng_states()
        name, keys, position, has_gauss, cached = states["numpy"]  # plain lists: loads with weights_only
        states["numpy"] = [name, keys.tolist(), position, has_gauss, cached]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            states = dict(checkpoint["rng_states"])
            name, keys, position, has_gauss, cached = states["numpy"]
            states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached)
            _set_rng_states(states)

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.dirpath is not None:
            self._save_checkpoint(trainer, os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION))


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
            if isinstance(logger, LightningWandbLogger):
                return logger.experiment
        return None

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        run = self._run(trainer)
        if run is None or trainer.sanity_checking or pl_module.last_result is None:
            return
        import wandb

        _, result = pl_module.last_result
        rows = [
            [name, None if iou != iou else iou]
            for name, iou in zip(pl_module.class_names, result["iou"].tolist(), strict=True)
        ]
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
        labels = {i: name for i, name in enumerate(pl_module.class_names)} | {pl_module.ignore_index: "void"}
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
        if run is None or pl_module.last_result is None:
            return
        import wandb

        _, result = pl_module.last_result
        figure = confusion_figure(result["confmat"], pl_module.class_names)
        run.log({"val/confusion_matrix": wandb.Image(figure), "trainer/global_step": trainer.global_step})
        plt.close(figure)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] ImageNet-normalised -> [H, W, 3] uint8."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.cpu() * std + mean).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()


def colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8 (viridis)."""
    return (matplotlib.colormaps["viridis"](values)[..., :3] * 255).astype(np.uint8)


def confusion_figure(confmat: torch.Tensor, class_names: list[str]):
    """Row-normalised confusion matrix (rows = ground truth) as a matplotlib figure."""
    counts = confmat.double()
    rates = (counts / counts.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = max(4, 0.35 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(class_names)), class_names, rotation=90)
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    axes.set_title("confusion (row-normalised)")
    figure.tight_layout()
    return figure


class PredictionWriter(BasePredictionWriter):
    """Writes predictions per image, mirroring <split>/<city>/ and keeping the file stem:

    - `labelIds/<split>/<city>/<name>_labelIds.png`: dataset label ids (Cityscapes: what the test
      server and csEvalPixelLevelSemanticLabeling read), at the original resolution;
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
        if trainer.is_global_zero and self.output_dir.is_dir() and any(self.output_dir.iterdir()):
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
        palette = np.zeros((256, 3), np.uint8)
        palette[: len(data.class_colors)] = np.asarray(data.class_colors, np.uint8)
        for train_ids, image, name, city in zip(prediction.byte().cpu(), batch["image"], batch["name"],
                                                batch["city"], strict=True):  # fmt: skip
            train_ids = train_ids.numpy()  # [H, W] at the original resolution
            outputs = {"trainIds": train_ids}
            if data.label_ids is not None:
                outputs["labelIds"] = data.label_ids[train_ids]
            pixels = torch.nn.functional.interpolate(image[None].float(), size=train_ids.shape, mode="bilinear")[0]
            overlay = (1 - self.alpha) * denormalize(pixels) + self.alpha * palette[train_ids]
            outputs["color"] = overlay.astype(np.uint8)
            for kind, array in outputs.items():
                path = self.output_dir / kind / split / city / f"{name}_{kind}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
