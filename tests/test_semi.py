"""Semi-supervised methods (Hung, error-predicting D, s4GAN, softmax confidence, CutMix mean teacher) inside
real training steps, and the diagnostic that measures their masks against labels training never sees."""

import csv

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import SEMI, fit_one_batch, read_metrics, snapshot, tiny_args
from PIL import Image

from seg_gan import SegGAN
from seg_gan.cli import main
from seg_gan.data import CityscapesDataModule
from seg_gan.errors import UserError
from seg_gan.models import FCNDiscriminator, ImageDiscriminator


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


def is_clean(maps: torch.Tensor) -> bool:
    """Whether a map D is given is a clean softmax or label map (every value in [0, 1])."""
    return bool(((maps >= 0) & (maps <= 1)).all())


class RecordingDiscriminator(FCNDiscriminator):
    """Records, per call, whether the map it is given is clean."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.clean = []

    def forward(self, probs, image):
        self.clean.append(is_clean(probs))
        return super().forward(probs, image)


class RecordingImageDiscriminator(ImageDiscriminator):
    """The same for s4GAN's image-level D: its forward and feature matching both go through `features`."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.clean = []

    def features(self, probs, image):
        self.clean.append(is_clean(probs))
        return super().features(probs, image)


# D step, then the G step's calls: the labeled fake (lambda_adv > 0), then Hung's unlabeled predictions or
# s4GAN's feature matching (unlabeled predictions, real maps; its mask reads the unlabeled features' head)
@pytest.mark.parametrize("discriminator, method, calls", [(RecordingDiscriminator, "hung", 3),
                                                          (RecordingImageDiscriminator, "s4gan", 4)])  # fmt: skip
def test_instance_noise_reaches_every_map_d_judges(cityscapes_root, discriminator, method, calls):
    # D trained on noisy maps only must not judge clean ones: Hung's unlabeled adversarial term and
    # confidence mask (until 1179e20), and s4GAN's feature matching and image mask (until 957c28f), read
    # clean maps (a Hung noise-0.3 pilot's mask was empty from batch 180 on)
    model = SegGAN(num_classes=19, semi_start=0, instance_noise=0.3, semi_method=method, discriminator=discriminator)
    fit_one_batch(model, cityscapes_root, **SEMI)
    assert len(model.discriminator.clean) == calls
    assert not any(model.discriminator.clean)


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
    # the last two calls are the feature matching: unlabeled predictions (graph to G) and real maps (none)
    assert sorted(calls[-2:]) == [(False, 2), (True, 2)]


def test_s4gan_needs_a_discriminator_with_features():
    with pytest.raises(UserError, match="features"):
        SegGAN(num_classes=4, semi_method="s4gan", discriminator="fcn")


def test_unlabeled_stream_needs_unlabeled_images(cityscapes_root):
    with pytest.raises(UserError, match="unlabeled_stream: true, but every training image is labeled"):
        fit_one_batch(SegGAN(num_classes=19), cityscapes_root, unlabeled_stream=True)


def test_the_mean_teacher_follows_the_student_only_and_is_what_evaluation_runs(cityscapes_root):
    model = SegGAN(num_classes=19, lambda_adv=0.0, semi_method="cutmix", semi_start=0, lambda_semi=1.0,
                   mask_threshold=0.0, ema_decay=0.9, g_optimizer="adam", g_lr=1e-2)  # fmt: skip
    assert model.discriminator is None and model.evaluated is model.teacher
    start = {name: t.clone() for name, t in model.teacher.state_dict().items()}  # parameters and buffers
    assert not any(p.requires_grad for p in model.teacher.parameters())
    fit_one_batch(model, cityscapes_root, **SEMI)  # one batch: teacher = 0.9 start + 0.1 student
    student, teacher = model.generator.state_dict(), model.teacher.state_dict()
    assert any("running_mean" in name for name in teacher) and any("num_batches" in name for name in teacher)
    for name, value in teacher.items():
        if value.dtype.is_floating_point:  # weights and BatchNorm statistics
            assert torch.allclose(value, 0.9 * start[name] + 0.1 * student[name], atol=1e-6), name
        else:  # batch counts: the student's
            assert torch.equal(value, student[name]) and not torch.equal(value, start[name]), name
    image = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.predict_logits(image), model.teacher(image))  # validation/predict: the teacher
        assert not torch.equal(model.predict_logits(image), model.generator(image))


def test_cutmix_consistency_switch_picks_the_loss(cityscapes_root, tmp_path):
    def semi_loss(consistency: str) -> float:
        torch.manual_seed(0)
        model = SegGAN(num_classes=19, lambda_adv=0.0, semi_method="cutmix", semi_start=0, mask_threshold=0.0,
                       cutmix_consistency=consistency)  # fmt: skip
        logger = pl.loggers.CSVLogger(tmp_path / consistency)
        fit_one_batch(model, cityscapes_root, logger=logger, **SEMI)
        rows = list(csv.DictReader(open(logger.experiment.metrics_file_path)))
        return float(next(r["train/loss_semi"] for r in rows if r.get("train/loss_semi")))

    squared, cross = semi_loss("squared_error"), semi_loss("cross_entropy")
    # every pixel confident (threshold 0): the squared error of two probability maps lies in [0, 2]; an
    # untrained 19-class G's cross-entropy to the teacher's argmax is about log 19 = 2.9
    assert 0 < squared < 2 < cross


@pytest.mark.parametrize("method", ["confidence", "cutmix"])  # hung and s4gan share the confidence code path
def test_hidden_labels_are_logged_against_and_never_trained_on(cityscapes_root, tmp_path, method):
    def run(name: str) -> tuple[dict, list[dict]]:
        torch.manual_seed(0)
        model = SegGAN(num_classes=19, semi_method=method, semi_start=0, mask_threshold=0.0,
                       lambda_adv=0.01 if method == "hung" else 0.0)  # fmt: skip
        logger = pl.loggers.CSVLogger(tmp_path / name)
        fit_one_batch(model, cityscapes_root, max_steps=2 if method == "hung" else 1, logger=logger, **SEMI)
        rows = list(csv.DictReader(open(logger.experiment.metrics_file_path)))
        return snapshot(model.generator), rows

    weights, rows = run("true")
    precision = [float(r["train/semi_mask_precision"]) for r in rows if r.get("train/semi_mask_precision")]
    assert precision and all(0 <= p <= 1 for p in precision)
    assert any(r.get("train/softmax_mask_precision_same_coverage") for r in rows)
    data = CityscapesDataModule(str(cityscapes_root), labeled_fraction=0.5, crop_size=(32, 64))
    data.setup("fit")
    for sample in data.unlabeled_samples:  # scramble the unlabeled images' label files
        Image.fromarray(np.full((32, 64), 7, np.uint8)).save(sample.hidden)  # all road
    scrambled, rows = run("scrambled")
    assert all(torch.equal(weights[k], scrambled[k]) for k in weights)  # training never read them
    assert [float(r["train/semi_mask_precision"]) for r in rows if r.get("train/semi_mask_precision")] != precision


@pytest.mark.parametrize("arm", [
    ["--model.discriminator_target", "correct", "--model.mask_threshold", "0.5"],
    ["--model.semi_method", "s4gan", "--model.discriminator", "image", "--model.lambda_adv", "0",
     "--model.d_dropout", "0.5", "--model.mask_threshold", "0.7", "--model.d_lr", "1e-5"],
    ["--model.semi_method", "confidence", "--model.lambda_adv", "0", "--model.mask_threshold", "0.95"],
    ["--model.semi_method", "cutmix", "--model.lambda_adv", "0", "--model.mask_threshold", "0.97"],
], ids=["error-d", "s4gan-published", "confidence", "cutmix"])  # fmt: skip
def test_every_semi_supervised_method_fits_from_the_cli(cityscapes_root, tmp_path, arm):
    semi = ["--data.labeled_fraction", "0.5", "--data.unlabeled_stream", "true", "--model.semi_start", "0"]
    main(["fit", *tiny_args(cityscapes_root, tmp_path, "--trainer.max_steps", "4", "--data.batch_size", "2",
                            *semi, *arm)])  # fmt: skip
    keys = set().union(*read_metrics(tmp_path))
    assert {"train/loss_semi", "train/semi_mask_ratio", "train/semi_mask_coverage", "val/mIoU"} <= keys
    if "s4gan" in arm:  # as published: no adversarial term, D sees only unlabeled predictions as fakes
        assert "train/loss_adv" not in keys and {"train/loss_fm", "train/loss_d_hung_scale"} <= keys


def test_an_error_predicting_discriminator_sees_the_image_and_learns_right_from_wrong(cityscapes_root):
    model = SegGAN(num_classes=19, discriminator_target="correct", d_lr=1e-3)
    assert model.discriminator.use_image  # where G is wrong depends on the image, not only on the map
    trainer = fit_one_batch(model, cityscapes_root, max_steps=20)
    assert float(trainer.callback_metrics["train/d_accuracy"]) > 0.5  # right vs wrong pixels, after 10 D steps


def test_methods_that_need_a_discriminator_refuse_to_run_without_one(cityscapes_root):
    with pytest.raises(UserError, match="'hung' needs the discriminator, but model.lambda_adv is 0"):
        fit_one_batch(SegGAN(num_classes=19, lambda_adv=0.0), cityscapes_root, **SEMI)
    with pytest.raises(UserError, match="'correct' does not go with semi_method 's4gan'"):
        SegGAN(num_classes=19, semi_method="s4gan", discriminator="image", discriminator_target="correct")
