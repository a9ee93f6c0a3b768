"""The LightningModule: what the D step and the G step change, the supervised baseline, the D/G ratios,
and that training learns."""

import numpy as np
import pytest
import torch
from conftest import SEMI, changed, fit_one_batch, read_metrics, snapshot, tiny_args, write_cityscapes
from PIL import Image

from seg_gan import SegGAN
from seg_gan.cli import main
from seg_gan.models import FCNDiscriminator


@pytest.mark.parametrize("data_args", [{}, SEMI], ids=["supervised-batch", "with-unlabeled-batch"])
def test_d_step_changes_only_d_and_g_step_only_g(cityscapes_root, monkeypatch, data_args):
    model = SegGAN(num_classes=19, encoder_name="resnet18", g_lr=1e-2, d_lr=1e-2, semi_start=0)
    g_before, d_before = snapshot(model.generator), snapshot(model.discriminator)
    after_d_step = {}
    original_generator_step = SegGAN.generator_step

    def spy(self, *args):  # look at the weights between the D step and the G step
        after_d_step["g"], after_d_step["d"] = snapshot(self.generator), snapshot(self.discriminator)
        original_generator_step(self, *args)

    monkeypatch.setattr(SegGAN, "generator_step", spy)
    fit_one_batch(model, cityscapes_root, **data_args)
    # after the D step: D moved, G did not
    assert changed(d_before, after_d_step["d"]) and not changed(g_before, after_d_step["g"])
    # after the G step: G moved, D did not move again
    assert changed(after_d_step["g"], snapshot(model.generator))
    assert not changed(after_d_step["d"], snapshot(model.discriminator))
    # every parameter is trainable again once the step is over (toggle restored)
    assert all(p.requires_grad for p in model.parameters())


def test_lambda_adv_zero_never_builds_or_runs_a_discriminator(cityscapes_root, monkeypatch):
    built = []
    monkeypatch.setattr(FCNDiscriminator, "__init__", lambda *a, **k: built.append(1) or None)
    model = SegGAN(num_classes=19, lambda_adv=0.0)
    assert model.discriminator is None and not built
    trainer = fit_one_batch(model, cityscapes_root, max_steps=2)
    assert len(trainer.optimizers) == 1
    assert trainer.global_step == 2  # one optimizer step per batch


@pytest.mark.parametrize("lambda_adv", [0.0, 0.01])
def test_all_void_batches_add_no_cross_entropy_and_are_counted(tmp_path, lambda_adv):
    root = write_cityscapes(tmp_path / "cs", {"train": 8, "val": 1})
    for label in sorted((root / "gtFine" / "train").rglob("*_labelIds.png"))[::2]:  # 4 of 8 images all void
        Image.fromarray(np.zeros((32, 64), np.uint8)).save(label)
    model = SegGAN(num_classes=19, lambda_adv=lambda_adv)
    g_before = snapshot(model.generator)
    trainer = fit_one_batch(model, root, max_steps=8 if lambda_adv == 0 else 16, batch_size=1)  # one epoch
    assert model.guard.void_batches == 4 and trainer.callback_metrics["train/void_batches"] == 4
    assert model.guard.skipped_steps == 0 and trainer.fit_loop.epoch_loop.total_batch_idx + 1 == 8
    assert changed(g_before, snapshot(model.generator))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_d_every_n_batches(cityscapes_root):
    model = SegGAN(num_classes=19, d_every_n_batches=2)
    trainer = fit_one_batch(model, cityscapes_root, max_steps=6)  # batches 0..3: D at 0 and 2
    assert trainer.fit_loop.epoch_loop.total_batch_idx + 1 == 4


def test_g_every_n_batches(cityscapes_root, monkeypatch):
    model = SegGAN(num_classes=19, g_every_n_batches=2)
    g_batches = []
    original_generator_step = SegGAN.generator_step

    def spy(self, *args):
        g_batches.append(self.trainer.fit_loop.epoch_loop.total_batch_idx)
        original_generator_step(self, *args)

    monkeypatch.setattr(SegGAN, "generator_step", spy)
    trainer = fit_one_batch(model, cityscapes_root, max_steps=6)  # batches 0..3: D every batch, G at 0 and 2
    assert trainer.fit_loop.epoch_loop.total_batch_idx + 1 == 4 and g_batches == [0, 2]


def test_training_crops_need_not_be_multiples_of_32(cityscapes_root):
    model = SegGAN(num_classes=19)
    trainer = fit_one_batch(model, cityscapes_root, max_steps=2, crop_size=(40, 72), scale_range=(1.5, 1.5))
    assert trainer.global_step == 2


@pytest.mark.slow
def test_training_drives_val_miou_up(cityscapes_root, tmp_path):
    """~100 training batches on trivially learnable scenes: fails if training is broken."""
    main(["validate", *tiny_args(cityscapes_root, tmp_path / "untrained")])
    (untrained,) = [float(r["val/mIoU"]) for r in read_metrics(tmp_path / "untrained") if r.get("val/mIoU")]
    main(
        [
            "fit",
            *tiny_args(
                cityscapes_root,
                tmp_path / "learn",
                "--trainer.max_epochs",
                "50",
                "--trainer.check_val_every_n_epoch",
                "25",
                "--trainer.num_sanity_val_steps",
                "0",
            ),
        ]
    )
    mious = [float(r["val/mIoU"]) for r in read_metrics(tmp_path / "learn") if r.get("val/mIoU")]
    assert len(mious) == 2
    assert mious[-1] > 0.8 and mious[-1] > untrained + 0.3, (untrained, mious)
