"""The notebooks' shared set-up: the objects the CLI builds, a Trainer that writes where the notebook says,
and the logged curves. Pictures: `seg_gan.viz`.

    from seg_gan.notebook import build, trainer, curves

`SEG_GAN_NB_FAST=1` (set by the test suite) shrinks the data to seconds; `SEG_GAN_NB_WORKDIR` is where
runs and checkpoints go (default `runs/notebooks` under the notebook's folder).
"""

import csv
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl

from seg_gan.checkpoint import Checkpoint
from seg_gan.cli import build_cli

FAST = os.environ.get("SEG_GAN_NB_FAST") == "1"
WORKDIR = Path(os.environ.get("SEG_GAN_NB_WORKDIR", "runs/notebooks"))
# the embedded scenes at a notebook's pace; FAST: a few tiny scenes for the test suite
SMALL = {"image_size": "[64, 128]", "num_train": "32", "num_val": "8", "crop_size": "[64, 128]"}


def build(*args: str, **data: str):
    """(data module, model) exactly as `python -m seg_gan fit [args]` builds them (no logger, loading in
    the notebook's process). `data` sets data init args, e.g. build(num_train="150"); under FAST the tiny
    sizes of SMALL replace the ones given."""
    data = data | (SMALL if FAST else {})  # FAST wins: the test suite runs the notebooks in seconds
    options = [item for name, value in data.items() for item in (f"--data.init_args.{name}", str(value))]
    with warnings.catch_warnings():  # the kernel's own sys.argv (-f <connection file>) is no CLI argument
        warnings.filterwarnings("ignore", "LightningCLI's args parameter")
        cli = build_cli(["--data.init_args.num_workers", "0", "--trainer.logger", "false", *options, *args], run=False)
    return cli.datamodule, cli.model


def trainer(name: str, epochs: int, **kwargs) -> pl.Trainer:
    """A Trainer logging to CSV in WORKDIR/name and saving checkpoints there (one epoch of 4 batches if FAST).
    Logs every 2 batches (Lightning's default, 50, would leave a short run's loss curves nearly empty)."""
    settings = {"max_epochs": 1 if FAST else epochs, "limit_train_batches": 4 if FAST else None,
                "logger": pl.loggers.CSVLogger(WORKDIR, name=name), "callbacks": [Checkpoint()],
                "log_every_n_steps": 2, "enable_model_summary": False} | kwargs  # fmt: skip
    return pl.Trainer(**settings)


def curves(trainer: pl.Trainer, *keys: str) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} of the logged metrics (CSV) of a Trainer made by `trainer`."""
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    return {key: ([int(r["step"]) for r in rows if r.get(key)], [float(r[key]) for r in rows if r.get(key)])
            for key in keys}  # fmt: skip
