"""`python -m seg_gan fit|validate|test|predict`: LightningCLI with the data module linked into the model.

With no --config, the CLI's defaults are the embedded synthetic run of `seg_gan/default.yaml`.
"""

import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seg_gan.callbacks import PredictionWriter, SaveConfig, WandbMedia
from seg_gan.checkpoint import Checkpoint, check_checkpoint_file, newest_last_checkpoint
from seg_gan.data import SegmentationDataModule
from seg_gan.errors import UserError, clean_message, find_user_error
from seg_gan.module import SegGAN
from seg_gan.runs import runs_root

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")  # the embedded default run, shipped in the package


def default_values() -> dict:
    """seg_gan/default.yaml as parser defaults: `model.arch`-style keys, the data module as a class path."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    values = {"seed_everything": config.pop("seed_everything"), "data": config.pop("data")}
    for group, options in config.items():  # model, trainer
        values |= {f"{group}.{name}": value for name, value in options.items()}
    return values


class SegGANCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Class count, void label and class names come from the data: never typed twice.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.set_defaults(default_values())
        # `predict` writes files: --writer.output_dir, --writer.overwrite, --writer.alpha
        parser.add_class_arguments(PredictionWriter, "writer")
        # best.ckpt / last.ckpt unless trainer.enable_checkpointing is false: --checkpoint.every_n_batches, ...
        parser.add_class_arguments(Checkpoint, "checkpoint")

    def _parse_ckpt_path(self) -> None:
        # Lightning's version replaces the model options given by the user with the checkpoint's stored
        # hyperparameters (a sliding-window validate would silently run whole-image). Here the user's
        # options win; SegGAN.on_load_checkpoint refuses those that do not fit the stored weights.
        # Only a missing or unreadable file is reported now, before anything is built.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            check_checkpoint_file(ckpt_path)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_options(config.trainer)
        if self.subcommand is not None:  # output folders: fail now, naming them, not mid-run
            logger = config.trainer.logger
            save_dir = logger.get("init_args", {}).get("save_dir") if hasattr(logger, "get") else None
            check_writable("trainer.default_root_dir", config.trainer.default_root_dir)
            check_writable("trainer.logger.save_dir", save_dir)
            check_writable("checkpoint.dirpath", config.checkpoint.dirpath)

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        # The checkpoint callback is added unless the user turned checkpointing off (Lightning refuses a
        # ModelCheckpoint with enable_checkpointing=False).
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config.trainer.get("enable_checkpointing") is not False:
            callbacks = config.trainer.get("callbacks") or []
            kwargs["callbacks"] = [*(callbacks if isinstance(callbacks, list) else [callbacks]), config.checkpoint]
        return super().instantiate_trainer(**kwargs)

    def _resolve_last(self) -> None:
        """`--ckpt_path last`: the newest last.ckpt of all the project's run folders (each invocation gets
        a new folder, where Lightning would look only in its own)."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last" or config.checkpoint.dirpath is not None:
            return  # with a fixed checkpoint.dirpath, Lightning's own lookup already sees every run
        found = newest_last_checkpoint(runs_root(self.trainer))
        if found is not None:
            config["ckpt_path"] = str(found)

    def before_fit(self) -> None:
        self._resolve_last()

    def before_validate(self) -> None:
        self._resolve_last()

    def before_test(self) -> None:
        self._resolve_last()

    def before_predict(self) -> None:
        self._resolve_last()
        self.trainer.callbacks.append(self.config_init[self.subcommand]["writer"])


def check_trainer_options(trainer) -> None:
    """Trainer options that manual optimisation cannot honour (two optimizers stepped by SegGAN itself):
    refused naming the model option that does the job, instead of Lightning's advice to edit training_step."""
    if trainer.get("gradient_clip_val"):
        raise UserError(
            f"trainer.gradient_clip_val: {trainer.gradient_clip_val} is not applied by Lightning with manual "
            "optimisation. Expected --model.gradient_clip_val (clips G's and D's gradient norms) instead."
        )
    if trainer.get("gradient_clip_algorithm") not in (None, "norm"):
        raise UserError(
            f"trainer.gradient_clip_algorithm: {trainer.gradient_clip_algorithm!r} is not supported; "
            "model.gradient_clip_val clips by norm. Expected null."
        )
    if trainer.get("accumulate_grad_batches", 1) != 1:
        raise UserError(
            f"trainer.accumulate_grad_batches: {trainer.accumulate_grad_batches} is not supported with the "
            "alternating D/G steps. Expected 1; raise data.batch_size (or use more devices) instead."
        )
    strategy = trainer.get("strategy")
    if isinstance(strategy, str) and strategy.startswith(("fsdp", "deepspeed")):
        raise UserError(
            f"trainer.strategy: {strategy!r} is not supported: SegGAN alternates two optimizers with manual "
            "optimisation. Expected a DDP strategy (ddp, ddp_spawn, or auto with devices > 1)."
        )


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
