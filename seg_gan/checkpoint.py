"""Checkpoints: the crash-safe, resumable `Checkpoint` callback, the newest `last.ckpt` of a project,
the check that a checkpoint fits the model it is loaded into, and the one loader used outside the Trainer.
"""

import os
import random
import re
import zipfile
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seg_gan.errors import UserError
from seg_gan.runs import run_dir


def rng_states() -> dict:
    """The global random states (torch, CUDA, numpy, Python) as plain objects (loads with weights_only)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


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
        super().__init__(
            dirpath=dirpath,
            monitor=monitor,
            mode=mode,
            filename=filename,
            save_last=save_last,
            auto_insert_metric_name=False,
        )
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


# Options whose change alters the stored tensors (names or shapes). The others only change evaluation or
# training, and are taken from the run's own configuration, never from the checkpoint.
STRUCTURE = ("arch", "encoder_name", "num_classes", "discriminator", "spectral_norm", "lambda_adv")
# Options a resumed run may change: evaluation, speed and guards. Any other difference would be silently
# undone by the restored optimizer and scheduler states, or would make another experiment.
FREE_ON_RESUME = (
    "inference",
    "window",
    "stride",
    "flip_tta",
    "channels_last",
    "compile_models",
    "encoder_weights",
    "max_consecutive_skips",
    "collapse_patience",
    "class_names",
)
CONFIG_HINT = "its run folder holds them in config.yaml: --config <run folder>/config.yaml"
# Options added after checkpoints had been written without them, whose default is not what such a
# checkpoint ran with: {option: (the semi_method it acts in, what a checkpoint without it ran with)}.
BEFORE_OPTION = {"cutmix_consistency": ("cutmix", "cross_entropy")}


def check_checkpoint_fits(checkpoint: dict, own_state: dict, hparams: dict, resuming: bool) -> None:
    """Refuse a checkpoint that does not fit the model it is loaded into, naming the option that differs.

    Args:
        checkpoint: the loaded checkpoint (`state_dict`, `hyper_parameters`).
        own_state: the model's `state_dict()`.
        hparams: the model's hyperparameters (what this run was configured with).
        resuming: `fit` continues the checkpoint's run: then training options must not differ either.

    Raises:
        UserError: another class count; tensors of other names or shapes (naming the structural option
            that differs, e.g. model.arch); on resume, any training option that differs, also one
            the checkpoint predates whose default changed what a run does (`BEFORE_OPTION`).
    """
    stored, saved = checkpoint.get("state_dict", {}), checkpoint.get("hyper_parameters", {})
    if saved.get("num_classes", hparams["num_classes"]) != hparams["num_classes"]:
        raise UserError(
            f"ckpt_path: the checkpoint was trained for {saved['num_classes']} classes, but the data "
            f"has {hparams['num_classes']}. Expected a checkpoint trained on this dataset."
        )
    misfit = sorted(set(stored) ^ set(own_state))
    misfit += [k for k in own_state if k in stored and stored[k].shape != own_state[k].shape]
    if misfit:
        differs = []
        for name in STRUCTURE:
            theirs, ours = saved.get(name), hparams.get(name)
            if name == "lambda_adv" and theirs is not None and (theirs > 0) != (ours > 0):
                has = "has" if theirs > 0 else "has no"
                differs.append(
                    f"model.lambda_adv is {ours} here but {theirs} in the checkpoint (which {has} discriminator)"
                )
            elif name != "lambda_adv" and name in saved and theirs != ours:
                differs.append(f"model.{name} is {ours!r} here but {theirs!r} in the checkpoint")
        found = "; ".join(differs) or f"{len(misfit)} tensors differ in name or shape (e.g. {misfit[:3]})"
        raise UserError(
            f"ckpt_path: the checkpoint's weights do not fit this model: {found}. Expected the "
            f"options the checkpoint was trained with ({CONFIG_HINT})."
        )
    if resuming:
        changed = []
        for name, (method, ran) in BEFORE_OPTION.items():
            if name not in saved and saved.get("semi_method") == method and hparams.get(name, ran) != ran:
                predates = f"the checkpoint predates the option and ran {ran!r}"
                changed.append(f"model.{name} is {hparams[name]!r} here, but {predates}")
        for name, value in saved.items():
            ours = hparams.get(name, value)
            if name not in FREE_ON_RESUME and (list(value) if isinstance(value, tuple) else value) != (
                list(ours) if isinstance(ours, tuple) else ours
            ):
                changed.append(f"model.{name} is {ours!r} here but {value!r} in the checkpoint")
        if changed:
            raise UserError(
                f"ckpt_path: resuming a run with other training options: {'; '.join(changed)}. Expected the options "
                f"the run was trained with ({CONFIG_HINT}; evaluation and speed options may differ); to fine-tune "
                "from these weights with new options, start a new run from them instead."
            )


def check_checkpoint_file(path: str | Path, name: str = "ckpt_path") -> Path:
    """The path, if it is a readable checkpoint file (its archive index is read, not its tensors).

    Raises:
        UserError: naming `name` and the path: missing file, or a file torch cannot read (truncated, other format).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{name}: {str(path)!r} is not a file. Expected a checkpoint saved by fit "
            "(runs/seg_gan/<run id>/checkpoints/last.ckpt or best.ckpt)."
        )
    if not zipfile.is_zipfile(path):  # what torch.save writes; a cut-off save loses the archive's index
        raise UserError(f"{name}: {str(path)!r} could not be read as a checkpoint (not a PyTorch archive: "
                        "truncated, or another kind of file).")  # fmt: skip
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated zip, pickle of another format, ... come in many types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{name}: {str(path)!r} could not be read as a checkpoint ({first_line}).") from None
    return path


def load_model(path: str | Path, num_classes: int | None = None, name: str = "ckpt_path", **overrides):
    """The `SegGAN` of a checkpoint, on the CPU and in eval mode, for use outside the Trainer (export,
    benchmarks, notebooks). `overrides` replace stored options that do not change the weights
    (e.g. inference="slide", window=(512, 1024)).

    Raises:
        UserError: missing or unreadable file, a checkpoint that is not a seg_gan one, or one trained for
            another number of classes than `num_classes` (when given).
    """
    from seg_gan.module import SegGAN  # the module imports this file

    path = check_checkpoint_file(path, name)
    try:
        model = SegGAN.load_from_checkpoint(path, map_location="cpu", weights_only=False, **overrides)
    except UserError:
        raise
    except Exception as error:  # a foreign checkpoint: missing keys, other hyperparameters, ...
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{name}: {str(path)!r} could not be loaded as a seg_gan checkpoint ({first_line}).") from None
    if num_classes is not None and model.hparams.num_classes != num_classes:
        raise UserError(
            f"{name}: the checkpoint was trained for {model.hparams.num_classes} classes, but the data "
            f"has {num_classes}. Expected a checkpoint trained on this dataset."
        )
    return model.eval()
