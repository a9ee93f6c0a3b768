import csv

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import write_cityscapes
from PIL import Image
from torchmetrics.classification import MulticlassJaccardIndex

from seg_gan import SegGAN
from seg_gan.data import CityscapesDataModule
from seg_gan.errors import UserError
from seg_gan.metrics import iou_table, scores
from seg_gan.models import FCNDiscriminator, ImageDiscriminator, PatchDiscriminator


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[name], after[name]) for name in before)


def fit_one_batch(model: SegGAN, root, max_steps: int = 1, logger=False, **data_args) -> pl.Trainer:
    settings = {"batch_size": 2, "num_workers": 0, "crop_size": (32, 64), "scale_range": (1, 1)} | data_args
    data = CityscapesDataModule(str(root), **settings)
    trainer = pl.Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    return trainer


SEMI = {"labeled_fraction": 0.5, "unlabeled_stream": True}


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


@pytest.mark.parametrize(
    "cls, out",
    [(FCNDiscriminator, (2, 1, 64, 96)), (ImageDiscriminator, (2, 1, 1, 1)), (PatchDiscriminator, (2, 1, 6, 10))],
)
def test_discriminator_output_shapes(cls, out):
    d = cls(5)
    logits = d(torch.softmax(torch.randn(2, 5, 64, 96), 1), torch.randn(2, 3, 64, 96))
    assert logits.shape == out


def test_predict_logits_handles_any_image_size():
    model = SegGAN(num_classes=4, lambda_adv=0.0).eval()
    with torch.no_grad():
        assert model.predict_logits(torch.randn(1, 3, 45, 70)).shape == (1, 4, 45, 70)
        assert model.predict_logits(torch.randn(1, 3, 45, 70), (90, 140)).shape == (1, 4, 90, 140)


def test_scores_agree_with_torchmetrics_jaccard():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (4, 20, 20), generator=gen)
    target[:, :2] = 255
    preds = torch.randint(0, 7, (4, 20, 20), generator=gen)  # class 7 never occurs at all
    confmat = torch.zeros(8, 8, dtype=torch.long)
    valid = target != 255
    confmat.index_put_((target[valid], preds[valid]), torch.ones(int(valid.sum()), dtype=torch.long), accumulate=True)
    result = scores(confmat)
    reference = MulticlassJaccardIndex(8, ignore_index=255, average="macro")(preds, target)
    assert float(result["miou"]) == pytest.approx(float(reference), abs=1e-6)
    assert torch.isnan(result["iou"][7]) and not torch.isnan(result["iou"][6])  # 6: predicted only -> IoU 0
    assert result["iou"][6] == 0
    assert float(result["pixel_acc"]) == pytest.approx(float((preds == target)[valid].float().mean()))
    table = iou_table([f"c{i}" for i in range(8)], result, "t")
    assert f"mIoU {float(reference):.4f}" in table


@pytest.mark.parametrize(
    "kwargs, name",
    [({"lambda_adv": -0.1}, "lambda_adv"), ({"g_lr": 0}, "g_lr"), ({"encoder_name": "resnet19"}, "encoder_name"),
     ({"label_flip": 0.6}, "label_flip"), ({"g_every_n_batches": 0}, "g_every_n_batches")],
)  # fmt: skip
def test_bad_values_name_the_parameter(kwargs, name):
    with pytest.raises(UserError, match=name):
        SegGAN(num_classes=4, **kwargs)


def test_local_encoder_weights(tmp_path):
    source = SegGAN(num_classes=3, lambda_adv=0.0)
    path = tmp_path / "encoder.pth"
    torch.save(source.generator.encoder.state_dict(), path)
    loaded = SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(path))
    for (name, a), (_, b) in zip(
        source.generator.encoder.state_dict().items(), loaded.generator.encoder.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # a whole-model state dict with "encoder." prefixes works too
    torch.save({"state_dict": source.generator.state_dict()}, path)
    SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(path))
    # weights of another encoder fail clearly
    torch.save(SegGAN(num_classes=3, lambda_adv=0.0, encoder_name="resnet34").generator.encoder.state_dict(), path)
    with pytest.raises(UserError, match="does not fit the encoder.*unexpected keys"):
        SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(path))
    with pytest.raises(UserError, match="is not a file"):
        SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(tmp_path / "nope.pth"))


def test_d_fake_batch_includes_the_unlabeled_predictions(cityscapes_root, monkeypatch):
    model = SegGAN(num_classes=19, semi_start=0)
    seen = []
    original = SegGAN.discriminator_step

    def spy(self, d_opt, image, target, fake, u_image=None, u_fake=None):
        seen.append((len(image), None if u_fake is None else len(u_fake)))
        forward = self.discriminator.forward
        self.discriminator.forward = lambda maps, images: (seen.append(len(maps)), forward(maps, images))[1]
        try:
            original(self, d_opt, image, target, fake, u_image, u_fake)
        finally:
            del self.discriminator.forward

    monkeypatch.setattr(SegGAN, "discriminator_step", spy)
    fit_one_batch(model, cityscapes_root, **SEMI)
    assert seen == [(2, 2), 2 + 2 + 2]  # one D forward on [real; labeled fake; unlabeled fake]


S4GAN = {"semi_method": "s4gan", "discriminator": "image"}


@pytest.mark.parametrize("method", [{}, S4GAN], ids=["hung", "s4gan"])
@pytest.mark.parametrize("threshold, expect_loss", [(1.0, False), (0.0, True)])
def test_self_training_loss_follows_the_mask_threshold(cityscapes_root, tmp_path, threshold, expect_loss, method):
    model = SegGAN(num_classes=19, semi_start=0, mask_threshold=threshold, **method)
    logger = pl.loggers.CSVLogger(tmp_path)
    fit_one_batch(model, cityscapes_root, max_steps=4, logger=logger, **SEMI)
    rows = [r for r in csv.DictReader(open(logger.experiment.metrics_file_path)) if r.get("train/loss_semi")]
    assert rows
    unlabeled_term = "train/loss_fm" if method else "train/loss_semi_adv"
    assert all(float(r[unlabeled_term]) > 0 for r in rows)
    losses = [float(r["train/loss_semi"]) for r in rows]
    ratios = [float(r["train/semi_mask_ratio"]) for r in rows]
    if expect_loss:
        assert all(loss > 0 for loss in losses) and all(ratio == 1.0 for ratio in ratios)
    else:
        assert all(loss == 0 for loss in losses) and all(ratio == 0.0 for ratio in ratios)


def test_s4gan_feature_matching_compares_real_maps_with_unlabeled_predictions(cityscapes_root):
    model = SegGAN(num_classes=19, semi_start=10**6, lambda_adv=1e-9, lambda_fm=1.0, g_lr=1e-2, **S4GAN)
    calls = []
    original = type(model.discriminator).features

    def spy(self, probs, image):
        calls.append((probs.requires_grad, len(probs)))
        return original(self, probs, image)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model.discriminator), "features", spy)
        fit_one_batch(model, cityscapes_root, **SEMI)
    # D step, G step (labeled adversarial), then the two feature-matching calls: real maps (no graph to G),
    # unlabeled predictions (graph to G)
    assert calls[-2:] == [(False, 2), (True, 2)]


def test_s4gan_needs_a_discriminator_with_features():
    with pytest.raises(UserError, match="features"):
        SegGAN(num_classes=4, semi_method="s4gan", discriminator="fcn")


def test_unlabeled_stream_needs_unlabeled_images(cityscapes_root):
    with pytest.raises(UserError, match="unlabeled_stream: true, but every training image is labeled"):
        fit_one_batch(SegGAN(num_classes=19), cityscapes_root, unlabeled_stream=True)


class NaNDiscriminator(FCNDiscriminator):
    """Returns non-finite logits on the listed calls (0-based), real ones otherwise."""

    def __init__(self, num_classes: int, bad_calls=frozenset({0})):
        super().__init__(num_classes)
        self.bad_calls, self.calls = bad_calls, 0

    def forward(self, probs, image):
        logits = super().forward(probs, image)
        bad = self.bad_calls == "all" or self.calls in self.bad_calls
        self.calls += 1
        return logits * float("nan") if bad else logits


def test_a_non_finite_loss_skips_that_step_only(cityscapes_root):
    model = SegGAN(num_classes=19, discriminator=NaNDiscriminator)
    trainer = fit_one_batch(model, cityscapes_root, max_steps=5)  # batch 0: G only (D skipped); 1, 2: D + G
    assert model.skipped_steps == 1  # the first D step (first D call) was skipped
    assert trainer.global_step == 5 and all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_non_finite_losses_stop_the_run_with_a_message(cityscapes_root):
    from seg_gan.module import TrainingDiverged

    model = SegGAN(num_classes=19, discriminator=lambda n: NaNDiscriminator(n, "all"), max_consecutive_skips=3)
    before = snapshot(model.discriminator)
    with pytest.raises(TrainingDiverged, match="3 D optimizer steps in a row had a non-finite loss"):
        fit_one_batch(model, cityscapes_root, max_steps=20)
    assert not changed(before, snapshot(model.discriminator))  # no NaN ever reached the weights


class OneSidedNaNDiscriminator(FCNDiscriminator):
    """Non-finite logits in D's own step only (its parameters are trainable there), or in G's step only."""

    def __init__(self, num_classes: int, bad_step: str = "d"):
        super().__init__(num_classes)
        self.bad_step = bad_step

    def forward(self, probs, image):
        logits = super().forward(probs, image)
        in_d_step = next(self.parameters()).requires_grad  # toggled_optimizer freezes D in G's step
        return logits * float("nan") if in_d_step == (self.bad_step == "d") else logits


@pytest.mark.parametrize("bad_step", ["d", "g"])
def test_consecutive_skips_are_counted_apart_for_g_and_d(cityscapes_root, bad_step):
    from seg_gan.module import TrainingDiverged

    model = SegGAN(num_classes=19, discriminator=lambda n: OneSidedNaNDiscriminator(n, bad_step),
                   max_consecutive_skips=3)  # fmt: skip
    fine = model.generator if bad_step == "d" else model.discriminator
    before = snapshot(fine)
    # the other network's finite steps between the failing ones used to reset the one shared count
    with pytest.raises(TrainingDiverged, match=f"3 {bad_step.upper()} optimizer steps in a row had a non-finite"):
        fit_one_batch(model, cityscapes_root, max_steps=40)
    assert model.skipped_steps == 3 and changed(before, snapshot(fine))  # the other one did train


@pytest.mark.parametrize("lambda_adv", [0.0, 0.01])
def test_all_void_batches_add_no_cross_entropy_and_are_counted(tmp_path, lambda_adv):
    root = write_cityscapes(tmp_path / "cs", {"train": 8, "val": 1})
    for label in sorted((root / "gtFine" / "train").rglob("*_labelIds.png"))[::2]:  # 4 of 8 images all void
        Image.fromarray(np.zeros((32, 64), np.uint8)).save(label)
    model = SegGAN(num_classes=19, lambda_adv=lambda_adv)
    g_before = snapshot(model.generator)
    trainer = fit_one_batch(model, root, max_steps=8 if lambda_adv == 0 else 16, batch_size=1)  # one epoch
    assert model.void_batches == 4 and trainer.callback_metrics["train/void_batches"] == 4
    assert model.skipped_steps == 0 and trainer.fit_loop.epoch_loop.total_batch_idx + 1 == 8
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


def test_label_flip_swaps_real_and_fake_of_labeled_images_only():
    torch.manual_seed(0)
    model = SegGAN(num_classes=4, label_flip=0.3)
    real, fake = torch.zeros(2000, 1, 2, 2), torch.ones(2010, 1, 2, 2)  # 10 unlabeled fakes at the end
    new_real, new_fake = model._flip_labels(real, fake)
    flipped = new_real[:, 0, 0, 0] == 1
    labeled_fake = new_fake[:2000]
    assert torch.equal(new_real[flipped], fake[:2000][flipped]) and torch.equal(labeled_fake[flipped], real[flipped])
    assert torch.equal(new_real[~flipped], real[~flipped])
    assert torch.equal(labeled_fake[~flipped], fake[:2000][~flipped])
    assert torch.equal(new_fake[2000:], fake[2000:])
    assert 0.27 < flipped.float().mean() < 0.33
    assert SegGAN(num_classes=4)._flip_labels(real, fake)[0] is real  # off by default


def test_training_crops_need_not_be_multiples_of_32(cityscapes_root):
    model = SegGAN(num_classes=19)
    trainer = fit_one_batch(model, cityscapes_root, max_steps=2, crop_size=(40, 72), scale_range=(1.5, 1.5))
    assert trainer.global_step == 2
