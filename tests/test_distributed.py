"""DDP on CPU (gloo): exact metrics across processes and identical weights after a fit.

These run `python -m seg_gan` as a real subprocess, since Lightning's DDP launcher re-runs the command
for the second process.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SIZES, mixed_cityscapes
from PIL import Image

from seg_gan.cli import main

TESTS = Path(__file__).resolve().parent


def common(root: Path, out: Path) -> list[str]:
    return [
        "--data.class_path", "seg_gan.data.CityscapesDataModule", "--data.root", str(root),
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.crop_size", "[32, 64]",
        "--data.scale_range", "[1.0, 1.0]", "--model.arch", "Unet", "--trainer.default_root_dir", str(out),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]  # fmt: skip


def run_ddp(args: list[str], strategy: str = "ddp") -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "seg_gan", *args, "--trainer.devices", "2", "--trainer.strategy", strategy]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def logged(out: Path, key: str) -> list[float]:
    (path,) = out.rglob("metrics.csv")
    return [float(row[key]) for row in csv.DictReader(path.open()) if row.get(key)]


@pytest.mark.slow
def test_ddp_validate_equals_one_process_with_an_odd_number_of_images(cityscapes_root, tmp_path):
    # 3 validation images over 2 processes: a padding sampler would count one image twice
    assert len(list((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))) == 3
    main(["fit", *common(cityscapes_root, tmp_path / "fit"), "--trainer.max_steps", "4",
          "--trainer.limit_val_batches", "0"])  # fmt: skip
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    main(["validate", *common(cityscapes_root, tmp_path / "one"), "--ckpt_path", str(checkpoint)])
    run_ddp(["validate", *common(cityscapes_root, tmp_path / "two"), "--ckpt_path", str(checkpoint)])
    (single,), (distributed,) = logged(tmp_path / "one", "val/mIoU"), logged(tmp_path / "two", "val/mIoU")
    assert abs(single - distributed) < 1e-6, (single, distributed)
    assert 0 < single < 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["auto", "ddp_spawn"])  # auto with 2 devices is DDP, as ddp is
def test_ddp_fit_keeps_g_and_d_identical_on_both_processes(cityscapes_root, tmp_path, strategy):
    # however Lightning arrives at DDP, the two backward passes per batch (D step, G step) work
    out = tmp_path / "ddp"
    out.mkdir()
    dump = ["--trainer.callbacks+=custom_parts.DumpWeights", f"--trainer.callbacks.out_dir={out}"]
    steps = ["--trainer.max_steps", "4", "--trainer.limit_val_batches", "0"]
    run_ddp(["fit", *common(cityscapes_root, out), *steps, *dump], strategy)
    end0, end1, start0 = (torch.load(out / name) for name in ["end-rank0.pt", "end-rank1.pt", "start-rank0.pt"])
    assert any(key.startswith("discriminator.") for key in end0)
    # gradients were averaged: every parameter agrees. BatchNorm running statistics are per process on
    # CPU (SyncBatchNorm, --trainer.sync_batchnorm, needs GPUs); the checkpoint keeps rank 0's.
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in end0.items():
        if not key.endswith(statistics):
            assert torch.equal(value, end1[key]), key
    moved = [key for key in end0 if key.endswith("weight") and not torch.equal(end0[key], start0[key])]
    assert any(k.startswith("generator.") for k in moved) and any(k.startswith("discriminator.") for k in moved)


@pytest.mark.slow
def test_ddp_evaluates_and_predicts_mixed_sizes_in_batches(tmp_path):
    # 5 images of 3 sizes over 2 processes: shards [0, 2, 4] and [1, 3], each grouped by size; a padding
    # sampler would give the second process image 0 again
    sizes = [*SIZES, (50, 70)]
    root = mixed_cityscapes(tmp_path / "cs", sizes)
    main(["validate", *common(root, tmp_path / "one")])  # no checkpoint: the same seeded initial weights
    run_ddp(["validate", *common(root, tmp_path / "two"), "--data.eval_batch_size", "2"])
    (single,), (distributed,) = logged(tmp_path / "one", "val/mIoU"), logged(tmp_path / "two", "val/mIoU")
    assert distributed == pytest.approx(single, rel=1e-6) and single > 0  # from the same confusion counts
    out = tmp_path / "predictions"
    run_ddp(["predict", *common(root, tmp_path / "predict"), "--data.eval_batch_size", "2",
             "--writer.output_dir", str(out)])  # fmt: skip
    for index, size in enumerate(sizes):
        path = out / "trainIds" / "val" / "aachen" / f"aachen_{index:06d}_000019_trainIds.png"
        assert np.array(Image.open(path)).shape == size
