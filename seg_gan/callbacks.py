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
import random
import re
import weakref
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
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


def runs_root(trainer: pl.Trainer) -> Path:
    """The folder that holds this project's run folders: <save_dir>/<name> of the first logger (W&B:
    <save_dir>/<project>), or <default_root_dir>/runs without a logger."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
    return Path(trainer.default_root_dir) / "runs"


_RUN_DIRS: "weakref.WeakKeyDictionary[pl.Trainer, Path]" = weakref.WeakKeyDictionary()


def run_dir(trainer: pl.Trainer) -> Path:
    """This run's own folder, chosen once per Trainer: <runs_root>/<logger version> (W&B: the run id;
    CSV/TensorBoard: version_N), or a new <default_root_dir>/runs/version_N without a logger, so no run
    ever writes into another's folder. Call it from a hook that runs on every process (setup): rank 0
    chooses and the others receive its choice."""
    if trainer in _RUN_DIRS:
        return _RUN_DIRS[trainer]
    folder = None
    if trainer.loggers:
        version = trainer.loggers[0].version
        folder = runs_root(trainer) / (version if isinstance(version, str) else f"version_{version}")
    elif trainer.is_global_zero:
        folder = new_version_folder(runs_root(trainer))
    folder = trainer.strategy.broadcast(folder)
    _RUN_DIRS[trainer] = folder
    return folder


def new_version_folder(parent: Path) -> Path:
    """Creates and returns parent/version_N for the first N not taken (mkdir is atomic: two runs
    started at once get different folders)."""
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in parent.glob("version_*") if p.name[8:].isdigit()]
    number = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{number}").mkdir()
            return parent / f"version_{number}"
        except FileExistsError:
            number += 1


def fresh_path(folder: Path, name: str) -> Path:
    """folder/name, or folder/<stem>_2<suffix>, _3, ... if taken: a run record is never overwritten
    (a resumed W&B run or a fixed logger version can point two runs at one folder)."""
    path, number = folder / name, 1
    while path.exists():
        number += 1
        path = folder / f"{Path(name).stem}_{number}{Path(name).suffix}"
    return path


class SaveConfig(SaveConfigCallback):
    """The run's record in its own folder: config.yaml (the whole resolved configuration) and, for fit,
    labeled_split.txt (the labeled training images); the configuration also goes to the logger (the
    W&B run config). Neither file ever overwrites another run's."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(fresh_path(folder, self.config_filename)), skip_none=False,
                             multifile=self.multifile)  # fmt: skip
            names = getattr(trainer.datamodule, "labeled_names", None)
            if stage == "fit" and names:
                fresh_path(folder, "labeled_split.txt").write_text("\n".join(names) + "\n")
            for logger in trainer.loggers:
                config = {k: v for k, v in self.config.clone().as_dict().items() if not k.startswith("_")}
                logger.log_hyperparams(config)
        self.already_saved = trainer.strategy.broadcast(True)


def rng_states() -> dict:
    """The global random states (torch, CUDA, numpy, Python) as plain objects (loads with weights_only)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, keys.tolist(), position, has_gauss, cached],
            "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}  # fmt: skip


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, in the run's own folder and resumable bit for bit.

    - Writes into `<run folder>/checkpoints` (see `run_dir`), also without a logger, so two runs never
      share a checkpoint folder. Lightning writes each file atomically (temporary file, then rename).
    - Keeps the random states (torch, numpy, python, CUDA) in the checkpoint and restores them, so a
      run resumed from a checkpoint taken at an epoch end continues exactly like an uninterrupted one
      (same data order and augmentations).
    - On SIGTERM (SLURM pre-emption, `scancel`), saves `last.ckpt` before the run stops.
    - `--ckpt_path last` (resolved by the CLI) takes the newest `last.ckpt` of all the project's run folders.

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

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:  # Lightning's default would be <default_root_dir>/checkpoints without a logger
            self.dirpath = str(run_dir(trainer) / "checkpoints")
        super().setup(trainer, pl_module, stage)

    def _last_path(self) -> str:
        return os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        batches = trainer.fit_loop.epoch_loop.total_batch_idx + 1
        if self.every_n_batches and batches % self.every_n_batches == 0:
            trainer.save_checkpoint(self._last_path())

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.dirpath is not None:
            trainer.save_checkpoint(self._last_path())


def newest_last_checkpoint(root: Path) -> Path | None:
    """The newest last.ckpt (or last-v1.ckpt, ...) under root/<run>/checkpoints/, or None."""
    found = [p for p in root.glob("*/checkpoints/last*.ckpt") if re.fullmatch(r"last(-v\d+)?", p.stem)]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


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
    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module computes this epoch's scores
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
