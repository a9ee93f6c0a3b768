"""Semi-supervised terms on unlabeled images, one function per `model.semi_method`.

Each takes the discriminator D, the batch's G outputs (`seg_gan.module.GOutput`), the model's
hyperparameters and the number of training batches done, and returns the (weight, loss) terms to add
to G's loss and the figures to log. The maths are the pure functions of `seg_gan.losses`.

- hung (Hung et al. 2018): an adversarial term on the unlabeled predictions (lambda_semi_adv), and
  from batch `semi_start` self-training (lambda_semi) on G's argmax where sigmoid(D) > mask_threshold.
- s4gan (Mittal et al. 2019): feature matching between D's features of real label maps and of the
  unlabeled predictions (lambda_fm) instead of the adversarial term; with the image-level D, its score
  picks the unlabeled images that self-train as a whole.
"""

from typing import Literal

import torch
from torch import nn

from seg_gan.errors import UserError
from seg_gan.losses import (
    confidence_mask,
    cross_entropy,
    encode_real,
    feature_matching_loss,
    generator_adversarial_loss,
    pseudo_labels,
)

Method = Literal["hung", "s4gan"]


def check_discriminator(method: str, discriminator: nn.Module) -> None:
    """UserError if `discriminator` lacks what `method` needs (s4GAN: a `features(probs, image)` method)."""
    if method == "s4gan" and not hasattr(discriminator, "features"):
        raise UserError(
            "model.semi_method: 's4gan' matches D's features, but this discriminator has no "
            "features(probs, image) method; expected model.discriminator 'image' (or a class with one)."
        )


def unlabeled_terms(discriminator: nn.Module, out, hp, batches_done: int) -> tuple[dict, dict]:
    """({log name: (weight, unweighted loss)}, {log name: figure}) for the unlabeled images of `out`."""
    u_d = discriminator(out.u_probs, out.u_image)  # [Bu, 1, H, W], or [Bu, 1, 1, 1] for an image-level D
    if hp.semi_method == "s4gan":
        real = encode_real(out.target, out.probs, hp.ignore_index, hp.real_encoding)  # [B, C, H, W]
        matching = feature_matching_loss(discriminator.features(real, out.image),
                                         discriminator.features(out.u_probs, out.u_image))  # fmt: skip
        terms = {"train/loss_fm": (hp.lambda_fm, matching)}
    else:
        adversarial = generator_adversarial_loss(u_d, hp.adversarial_loss, torch.ones_like(u_d))
        terms = {"train/loss_semi_adv": (hp.lambda_semi_adv, adversarial)}
    mask = confidence_mask(u_d, hp.mask_threshold, out.u_logits.shape[-2:])  # [Bu, H, W]: D trusts these pixels
    if batches_done >= hp.semi_start:  # 0 where D trusts no pixel
        self_training = cross_entropy(out.u_logits, pseudo_labels(out.u_logits, mask, hp.ignore_index), hp.ignore_index)
    else:
        self_training = out.u_logits.new_zeros(())
    terms["train/loss_semi"] = (hp.lambda_semi, self_training)
    return terms, {"train/semi_mask_ratio": mask.float().mean()}
