"""What keeps a run sane: option ranges, non-finite losses skipped and counted, the stop rule."""

import pytest
import torch
from conftest import changed, fit_one_batch, snapshot

from seg_gan import SegGAN
from seg_gan.errors import UserError
from seg_gan.guards import TrainingDiverged
from seg_gan.models import FCNDiscriminator


@pytest.mark.parametrize(
    "kwargs, name",
    [({"lambda_adv": -0.1}, "lambda_adv"), ({"g_lr": 0}, "g_lr"), ({"encoder_name": "resnet19"}, "encoder_name"),
     ({"label_flip": 0.6}, "label_flip"), ({"g_every_n_batches": 0}, "g_every_n_batches")],
)  # fmt: skip
def test_bad_values_name_the_parameter(kwargs, name):
    with pytest.raises(UserError, match=name):
        SegGAN(num_classes=4, **kwargs)


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
    assert model.guard.skipped_steps == 1  # the first D step (first D call) was skipped
    assert trainer.global_step == 5 and all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_non_finite_losses_stop_the_run_with_a_message(cityscapes_root):
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
    model = SegGAN(num_classes=19, discriminator=lambda n: OneSidedNaNDiscriminator(n, bad_step),
                   max_consecutive_skips=3)  # fmt: skip
    fine = model.generator if bad_step == "d" else model.discriminator
    before = snapshot(fine)
    # the other network's finite steps between the failing ones used to reset the one shared count
    with pytest.raises(TrainingDiverged, match=f"3 {bad_step.upper()} optimizer steps in a row had a non-finite"):
        fit_one_batch(model, cityscapes_root, max_steps=40)
    assert model.guard.skipped_steps == 3 and changed(before, snapshot(fine))  # the other one did train
