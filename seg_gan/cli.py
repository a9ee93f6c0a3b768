"""`python -m seg_gan fit|validate|test|predict`: LightningCLI with the data module linked into the model.

With no --config, the CLI's defaults are the embedded synthetic run (configs/synthetic.yaml spells
out the same values; a test keeps the two equal).
"""

import os
import signal
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seg_gan.callbacks import Checkpoint, PredictionWriter, SaveConfig, WandbMedia
from seg_gan.data import SegmentationDataModule
from seg_gan.errors import UserError, clean_message, find_user_error
from seg_gan.module import SegGAN

# The embedded default run: synthetic street scenes, a small fast generator, Adam.
DEFAULTS = {
    "data": {
        "class_path": "seg_gan.data.SyntheticCityscapesDataModule",
        "init_args": {"batch_size": 8, "num_workers": 2, "scale_range": [0.75, 1.25], "crop_size": [96, 192]},
    },
    "model.arch": "FPN",
    "model.encoder_name": "resnet18",
    "model.g_optimizer": "adam",
    "model.g_lr": 2e-3,
    "model.g_weight_decay": 0.0,
    "model.d_lr": 1e-4,
    "trainer.max_epochs": 4,
    "trainer.logger": {
        "class_path": "seg_gan.callbacks.WandbLogger",
        "init_args": {"project": "seg_gan", "save_dir": "runs"},
    },
}


class SegGANCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Class count, void label and class names come from the data: never typed twice.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.set_defaults(DEFAULTS)
        # `predict` writes files: --writer.output_dir, --writer.overwrite, --writer.alpha
        parser.add_class_arguments(PredictionWriter, "writer")
        # best.ckpt / last.ckpt, always on: --checkpoint.every_n_batches, --checkpoint.monitor, ...
        parser.add_lightning_class_args(Checkpoint, "checkpoint")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyperparameters here: name a missing or unreadable file
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
            raise UserError(f"ckpt_path: {ckpt_path!r} is not a file. Expected a checkpoint saved by fit "
                            "(runs/seg_gan/<run id>/checkpoints/last.ckpt or best.ckpt).")  # fmt: skip
        try:
            super()._parse_ckpt_path()
        except Exception as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"ckpt_path: {ckpt_path!r} could not be read as a checkpoint ({first_line}).") from None

    def before_instantiate_classes(self) -> None:
        # Each batch runs two backward passes (D step, G step) and each leaves the other network's
        # parameters without gradients; DDP must be told, or it stops with "unused parameters".
        # Gradients are still averaged across processes for every parameter that has one.
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.strategy == "ddp":
            config.trainer.strategy = "ddp_find_unused_parameters_true"
        if self.subcommand is not None:  # output folders: fail now, naming them, not mid-run
            logger = config.trainer.logger
            save_dir = logger.get("init_args", {}).get("save_dir") if hasattr(logger, "get") else None
            check_writable("trainer.default_root_dir", config.trainer.default_root_dir)
            check_writable("trainer.logger.save_dir", save_dir)
            check_writable("checkpoint.dirpath", config.checkpoint.dirpath)

    def before_predict(self) -> None:
        self.trainer.callbacks.append(self.config_init[self.subcommand]["writer"])


def check_writable(name: str, folder: str | None) -> None:
    """UserError naming the argument when `folder` could not be created or written into (checked on
    its nearest existing ancestor, so nothing is created here)."""
    if not folder:
        return
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        reason = f"{str(existing)!r} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{str(existing)!r} is read-only"
    else:
        return
    raise UserError(
        f"{name}: cannot write into {str(path)!r} ({reason}). Expected a folder that can be created and "
        "written to, e.g. a path under your home or scratch folder."
    )


def build_cli(args: list[str] | None = None, run: bool = True) -> SegGANCLI:
    """The CLI as `python -m seg_gan` builds it; with run=False (and no subcommand in `args`) it only
    builds `cli.datamodule`, `cli.model` and `cli.trainer`, for notebooks and benchmarks."""
    return SegGANCLI(
        SegGAN,
        SegmentationDataModule,
        subclass_mode_data=True,
        trainer_defaults={"callbacks": [WandbMedia()]},
        save_config_callback=SaveConfig,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        auto_configure_optimizers=False,  # SegGAN builds its own two optimizers
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] == ["export"]:  # not a Trainer subcommand: its own small parser
            from seg_gan.export import main as export

            return export(argv[1:])
        build_cli(args)
    except SIGTERMException:  # Lightning exits with status 0 here; a pre-empted run has not finished
        print("stopped by SIGTERM: last.ckpt was saved; resume with --ckpt_path last", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"error: {clean_message(user_error)}", file=sys.stderr)
        sys.exit(2)
