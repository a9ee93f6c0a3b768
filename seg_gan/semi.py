"""Semi-supervised terms on unlabeled images, one function per `model.semi_method`.

Each takes the model and the batch's G outputs (`seg_gan.module.GOutput`) and returns the (weight, loss)
terms to add to G's loss and the figures to log; the maths are the pure functions of `seg_gan.losses`.

- hung (Hung et al. 2018): an adversarial term on the unlabeled predictions (lambda_semi_adv) and, from
  batch `semi_start`, self-training (lambda_semi) on G's argmax where sigmoid(D) > mask_threshold. With
  `discriminator_target: correct`, D predicts where G's argmax is right (an error-predicting D: Ke et al.
  2020's flaw detector, Samson et al. 2019's gambling network) and both terms use that prediction.
- s4gan (Mittal et al. 2019): feature matching (lambda_fm) between D's features of real label maps and of
  the unlabeled predictions instead of the adversarial term; the image-level D's score picks the
  unlabeled images that self-train as a whole.
- confidence: self-training where G's own max softmax > mask_threshold, no D (the ablation: what D adds).
- cutmix (French et al. 2020): a mean teacher (EMA of G, `ema_decay`) labels two unlabeled images mixed by
  a box covering half the image; the student (G, on a colour-jittered view of the mix) learns the teacher's
  mixed probabilities (lambda_semi): as published, the squared error of the two softmax maps over every
  pixel, scaled by the share of pixels whose teacher max softmax > mask_threshold (`cutmix_consistency
  squared_error`), or cross-entropy to the teacher's argmax on those pixels only (`cross_entropy`).
  Validation, test and predict use the teacher.

Where the unlabeled images' labels are on disk (`hidden_mask`, never trained on), every method logs its
mask's precision and coverage against them, and the precision of G's max-softmax mask at the same
coverage: `train/semi_mask_precision`, `train/semi_mask_coverage`, `train/softmax_mask_precision_same_coverage`.
"""

from typing import Literal

import torch
from torch import nn

from seg_gan.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg_gan.errors import UserError
from seg_gan.inference import whole
from seg_gan.losses import (
    box_mask,
    confidence_mask,
    cross_entropy,
    encode_real,
    feature_matching_loss,
    generator_adversarial_loss,
    mask_precision,
    masked_cross_entropy,
    precision_at_coverage,
    pseudo_labels,
    squared_error_consistency,
)

Method = Literal["hung", "s4gan", "confidence", "cutmix"]
NEEDS_DISCRIMINATOR = ("hung", "s4gan")
CUTMIX_AREA = 0.5  # French et al. 2020: the box covers half the image
JITTER = 0.4  # brightness, contrast and saturation factors of the student's view drawn in [0.6, 1.4]


def check_options(method: str, target: str, discriminator: nn.Module | None) -> None:
    """UserError for a method that cannot work with this D (s4GAN: `features`, a real/fake D)."""
    if method == "s4gan" and discriminator is not None and not hasattr(discriminator, "features"):
        raise UserError(
            "model.semi_method: 's4gan' matches D's features, but this discriminator has no "
            "features(probs, image) method; expected model.discriminator 'image' (or a class with one)."
        )
    if method == "s4gan" and target != "real_fake":
        raise UserError("model.discriminator_target: 'correct' does not go with semi_method 's4gan' (which "
                        "matches the features of real label maps); expected 'real_fake'.")  # fmt: skip


def check_unlabeled(method: str, discriminator: nn.Module | None) -> None:
    """UserError when unlabeled batches arrive for a method that needs a D and none was built."""
    if discriminator is None and method in NEEDS_DISCRIMINATOR:
        raise UserError(
            f"model.semi_method: {method!r} needs the discriminator, but model.lambda_adv is 0 (none is built); "
            "expected lambda_adv > 0, a method without D (confidence, cutmix), or data.unlabeled_stream false."
        )


def unlabeled_terms(model, out, batches_done: int) -> tuple[dict, dict]:
    """({log name: (weight, unweighted loss)}, {log name: figure}) for the unlabeled images of `out`."""
    hp, d = model.hparams, model.discriminator
    if hp.semi_method == "cutmix":
        return cutmix(model, out, batches_done)
    terms, confidence = {}, out.u_probs.detach().max(1).values  # [Bu, H, W] G's own confidence
    if hp.semi_method == "confidence":
        mask = confidence > hp.mask_threshold
    elif hp.semi_method == "s4gan":
        # D is only ever trained on noisy maps (instance_noise), so its features and scores read noisy ones
        real = model.noisy(encode_real(out.target, out.probs, hp.ignore_index, hp.real_encoding))  # [B, C, H, W]
        u_probs = model.noisy(out.u_probs)  # [Bu, C, H, W]
        fake_features = d.features(u_probs, out.u_image)  # [Bu, F]
        terms["train/loss_fm"] = (hp.lambda_fm, feature_matching_loss(d.features(real, out.image), fake_features))
        with torch.no_grad():
            scores = d.head(fake_features)[:, :, None, None] if hasattr(d, "head") else d(u_probs, out.u_image)
        mask = confidence_mask(scores, hp.mask_threshold, out.u_logits.shape[-2:])  # whole images
    else:  # hung: D judges G's unlabeled predictions (real/fake, or right/wrong per pixel)
        u_d = d(model.noisy(out.u_probs), out.u_image)  # [Bu, 1, H, W]; D is only ever trained on noisy maps
        adversarial = generator_adversarial_loss(u_d, hp.adversarial_loss, torch.ones_like(u_d))
        terms["train/loss_semi_adv"] = (hp.lambda_semi_adv, adversarial)
        mask = confidence_mask(u_d, hp.mask_threshold, out.u_logits.shape[-2:])  # [Bu, H, W]
    pseudo = pseudo_labels(out.u_logits, mask, hp.ignore_index)
    started = batches_done >= hp.semi_start
    self_training = cross_entropy(out.u_logits, pseudo, hp.ignore_index) if started else out.u_logits.sum() * 0
    terms["train/loss_semi"] = (hp.lambda_semi, self_training)
    figures = {"train/semi_mask_ratio": mask.float().mean()}
    return terms, figures | diagnostics(mask, out.u_logits.argmax(1), confidence, out.u_hidden, hp.ignore_index)


def cutmix(model, out, batches_done: int) -> tuple[dict, dict]:
    """French et al. 2020's CutMix consistency with the mean teacher `model.teacher`."""
    hp, images = model.hparams, out.u_image  # [Bu, 3, H, W]
    with torch.no_grad():
        was_training = model.teacher.training
        model.teacher.eval()  # the teacher labels with its EMA statistics
        teacher_probs = whole(model.teacher, images, model.memory_format).softmax(1)  # [Bu, C, H, W]
        model.teacher.train(was_training)
        box = box_mask(len(images), images.shape[-2:], CUTMIX_AREA, device=images.device)  # [Bu, 1, H, W]
        mix = lambda x: box * x + (1 - box) * x.roll(1, 0)  # noqa: E731 - image i with image i-1
        teacher_probs = mix(teacher_probs)  # [Bu, C, H, W] what the teacher says about each pixel of the mix
        confidence, targets = teacher_probs.max(1)  # [Bu, H, W]
        student_view = colour_jitter(mix(images), JITTER)
    logits = whole(model.generator, student_view, model.memory_format)  # [Bu, C, H, W]
    mask = confidence > hp.mask_threshold
    if batches_done < hp.semi_start:
        consistency = logits.sum() * 0
    elif hp.cutmix_consistency == "squared_error":  # as published: soft targets, every pixel, x confident share
        consistency = squared_error_consistency(logits, teacher_probs, mask)
    else:  # the teacher's argmax as a hard pseudo-label on its confident pixels (FixMatch-style)
        consistency = masked_cross_entropy(logits, targets, mask)
    hidden = None
    if out.u_hidden is not None:
        hidden = torch.where(box[:, 0] > 0, out.u_hidden, out.u_hidden.roll(1, 0))  # the labels mixed alike
    figures = {"train/semi_mask_ratio": mask.float().mean()}
    return {"train/loss_semi": (hp.lambda_semi, consistency)}, figures | diagnostics(
        mask, targets, confidence, hidden, hp.ignore_index
    )


def diagnostics(mask, pseudo, confidence, hidden, ignore_index: int) -> dict:
    """The mask's precision and coverage against the hidden labels, and the precision of the most confident
    pixels by G's own softmax at the same coverage ({} without hidden labels). All three every batch, nan
    where there is nothing to count (an empty mask; no labelled pixel): a key left out of one batch's log
    would repeat an earlier batch's value in the logger's row for it."""
    if hidden is None:
        return {}
    precision, coverage = mask_precision(mask, pseudo, hidden, ignore_index)
    same = precision_at_coverage(confidence, pseudo, hidden, coverage, ignore_index)
    return {"train/semi_mask_coverage": coverage, "train/semi_mask_precision": precision,
            "train/softmax_mask_precision_same_coverage": same}  # fmt: skip


def colour_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-image random brightness, contrast and saturation (factors in [1 - strength, 1 + strength]) of
    ImageNet-normalised images [B, 3, H, W], returned normalised the same way."""
    mean, std = per_channel(IMAGENET_MEAN, images), per_channel(IMAGENET_STD, images)  # [1, 3, 1, 1]
    pixels = images * std + mean  # [0, 1]
    factors = 1 + strength * (2 * torch.rand(3, len(images), 1, 1, 1, device=images.device) - 1)
    luma = lambda x: 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]  # noqa: E731 - [B, 1, H, W] grey
    pixels = pixels * factors[0]  # brightness
    gray = luma(pixels).mean((2, 3), keepdim=True)
    pixels = (pixels - gray) * factors[1] + gray  # contrast around each image's mean grey
    gray = luma(pixels)
    pixels = (pixels - gray) * factors[2] + gray  # saturation
    return (pixels.clamp(0, 1) - mean) / std


def per_channel(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """`values` as [1, C, 1, 1] (torch's default dtype, as `torch.tensor(values)`) on `like`'s device, filled
    there: a tensor made from a list is a host-to-device copy, which waits for the device's queued work."""
    out = torch.empty(1, len(values), 1, 1, device=like.device)
    for channel, value in enumerate(values):
        out[:, channel] = value
    return out


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, for every float tensor of the state (parameters
    and BatchNorm statistics); integer buffers (batch counts) are copied."""
    for mine, theirs in zip(teacher.state_dict().values(), student.state_dict().values(), strict=True):
        if mine.dtype.is_floating_point:
            mine.lerp_(theirs, 1 - decay)
        else:
            mine.copy_(theirs)
