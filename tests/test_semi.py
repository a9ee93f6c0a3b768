"""Semi-supervised terms (Hung, s4GAN) inside real training steps."""

import csv

import lightning.pytorch as pl
import pytest
from conftest import SEMI, fit_one_batch

from seg_gan import SegGAN
from seg_gan.errors import UserError


def test_d_fake_batch_includes_the_unlabeled_predictions(cityscapes_root, monkeypatch):
    model = SegGAN(num_classes=19, semi_start=0)
    seen = []
    original = SegGAN.discriminator_step

    def spy(self, d_opt, out):
        seen.append((len(out.image), None if out.u_probs is None else len(out.u_probs)))
        forward = self.discriminator.forward
        self.discriminator.forward = lambda maps, images: (seen.append(len(maps)), forward(maps, images))[1]
        try:
            original(self, d_opt, out)
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
