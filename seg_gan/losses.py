"""Cross-entropy, adversarial losses, and the label encodings that turn ground truth into D's "real" input.

Shapes: `logits` [B, C, H, W], `probs` [B, C, H, W] softmax maps, `target` [B, H, W] int64 train ids
(ignore_index = void), D logits either [B, 1, H, W] (per pixel, already upsampled to the label size) or
[B, 1, 1, 1].
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F

AdversarialLoss = Literal["bce", "lsgan", "hinge"]
RealEncoding = Literal["onehot", "scaling"]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (target != ignore_index); 0 when there are none.

    `F.cross_entropy(..., ignore_index=...)` divides by the number of labelled pixels and returns NaN
    (0 / 0) for a batch that is all void, which would skip the step; here the sum is divided by
    max(count, 1), so such a batch adds 0, still as part of the graph (a zero gradient reaches every
    parameter that produced `logits`, so DDP processes stay in step). Otherwise equal to F.cross_entropy.

    Args:
        logits: float [B, C, H, W] (or [N, C]).
        target: int64 [B, H, W] (or [N]) class indices, `ignore_index` for void.
        ignore_index: the void value.

    Returns:
        A float scalar tensor.
    """
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


def encode_real(
    target: torch.Tensor,
    probs: torch.Tensor,
    ignore_index: int,
    encoding: RealEncoding = "onehot",
    scaling_tau: float = 0.9,
) -> torch.Tensor:
    """D's "real" sample for a batch of label maps: [B, C, H, W].

    `onehot`: the one-hot ground truth (Hung et al. 2018).
    `scaling`: Luc et al. 2016: the true class gets max(p_true, tau) and the other classes share
    the rest in proportion to G's probabilities, so a real map is not trivially told apart from a
    soft fake one by its hard 0/1 values.

    At void pixels the real sample copies G's (detached) prediction, so the void layout cannot be a
    tell for D; those pixels are also masked out of D's loss (see `valid_mask`).
    """
    num_classes = probs.shape[1]
    valid = target != ignore_index  # [B, H, W]
    safe_target = torch.where(valid, target, 0)
    onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)  # [B, C, H, W]
    probs = probs.detach()
    if encoding == "onehot":
        real = onehot
    elif encoding == "scaling":
        p_true = (probs * onehot).sum(1, keepdim=True)  # [B, 1, H, W]
        y_true = p_true.clamp(min=scaling_tau)
        rest = probs * (1 - y_true) / (1 - p_true).clamp(min=1e-6)
        real = onehot * y_true + (1 - onehot) * rest
    else:
        raise ValueError(f"unknown real-label encoding {encoding!r}; expected 'onehot' or 'scaling'")
    return torch.where(valid.unsqueeze(1), real, probs)


def valid_mask(target: torch.Tensor, ignore_index: int, d_logits: torch.Tensor) -> torch.Tensor:
    """Float weights shaped like `d_logits`: 0 at void pixels (per-pixel D), all ones otherwise."""
    if d_logits.shape[-2:] != target.shape[-2:]:  # image-level D: nothing to mask
        return torch.ones_like(d_logits)
    return (target != ignore_index).unsqueeze(1).to(d_logits.dtype)


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def discriminator_loss(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    kind: AdversarialLoss,
    real_weight: torch.Tensor,
    fake_weight: torch.Tensor,
) -> torch.Tensor:
    """D's loss: push real logits up and fake logits down. BCE is computed from logits (stable)."""
    if kind == "bce":
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits), reduction="none")
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits), reduction="none")
    elif kind == "lsgan":
        real, fake = (real_logits - 1) ** 2, fake_logits**2
    elif kind == "hinge":
        real, fake = F.relu(1 - real_logits), F.relu(1 + fake_logits)
    else:
        raise ValueError(f"unknown adversarial loss {kind!r}; expected 'bce', 'lsgan' or 'hinge'")
    return _masked_mean(real, real_weight) + _masked_mean(fake, fake_weight)


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: AdversarialLoss, weight: torch.Tensor) -> torch.Tensor:
    """G's adversarial loss: make D call its prediction real (non-saturating for `bce`)."""
    if kind == "bce":
        loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="none")
    elif kind == "lsgan":
        loss = (fake_logits - 1) ** 2
    elif kind == "hinge":
        loss = -fake_logits
    else:
        raise ValueError(f"unknown adversarial loss {kind!r}; expected 'bce', 'lsgan' or 'hinge'")
    return _masked_mean(loss, weight)


def discriminator_accuracy(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_weight: torch.Tensor, fake_weight: torch.Tensor
) -> dict[str, torch.Tensor]:
    """GAN-health figures of one D step: mean D probability on real (`d_real`) and fake (`d_fake`) maps
    over the weighted pixels, and the share of weighted pixels D puts on the right side (`d_accuracy`).
    Scored against the true roles: `flip_labels` swaps only what D's loss sees."""
    with torch.no_grad():
        right = ((real_logits > 0) * real_weight).sum() + ((fake_logits < 0) * fake_weight).sum()
        return {
            "d_real": _masked_mean(torch.sigmoid(real_logits), real_weight),
            "d_fake": _masked_mean(torch.sigmoid(fake_logits), fake_weight),
            "d_accuracy": right / (real_weight.sum() + fake_weight.sum()).clamp(min=1),
        }


def flip_labels(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy labels for D (a stabiliser when D wins too easily): with `probability`, per labeled image,
    its real and fake logits swap places in D's loss. `fake_logits` holds the B labeled fakes first, then
    any unlabeled ones, which never flip. Same image, same valid pixels, so the loss weights stay put.

    Args:
        real_logits: [B, 1, ...] D on the real maps.
        fake_logits: [B + Bu, 1, ...] D on the labeled, then the unlabeled fake maps.
        probability: in [0, 0.5); draws from torch's global generator.

    Returns:
        (real_logits, fake_logits) as D's loss should see them.
    """
    if probability == 0:
        return real_logits, fake_logits
    count = len(real_logits)
    flip = torch.rand(count, device=real_logits.device) < probability  # [B]
    flip = flip.view(-1, *[1] * (real_logits.dim() - 1))
    labeled_fake = fake_logits[:count]
    swapped_fake = torch.cat([torch.where(flip, real_logits, labeled_fake), fake_logits[count:]])
    return torch.where(flip, labeled_fake, real_logits), swapped_fake


def confidence_mask(d_logits: torch.Tensor, threshold: float, size: tuple[int, int]) -> torch.Tensor:
    """Where D trusts a prediction (Hung et al. 2018): sigmoid(D) > threshold, as bool [B, H, W] at
    `size`. A patch or image-level D's scores ([B, 1, h, w] or [B, 1, 1, 1]) are spread over the pixels
    they cover (nearest), so an image-level D trusts or rejects whole images (s4GAN)."""
    with torch.no_grad():
        confident = (torch.sigmoid(d_logits) > threshold).float()
        if confident.shape[-2:] != tuple(size):
            confident = F.interpolate(confident, size=tuple(size), mode="nearest")
        return confident[:, 0].bool()


def pseudo_labels(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Self-training targets: G's own argmax [B, H, W] where `mask` (bool [B, H, W]) holds, void elsewhere."""
    with torch.no_grad():
        return torch.where(mask, logits.argmax(1), ignore_index)


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """s4GAN (Mittal et al. 2019): mean absolute difference between the batch-mean D features of real
    label maps ([B, F], no gradient) and of G's unlabeled predictions ([Bu, F]), a scalar."""
    return (real_features.detach().mean(0) - fake_features.mean(0)).abs().mean()


def correctness_target(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What an error-predicting D learns (Ke et al. 2020's flaw detector; Samson et al. 2019): per pixel, is
    G's argmax right? Returns (target float [B, 1, H, W]: 1 right, 0 wrong; weight [B, 1, H, W]: 0 at void)."""
    with torch.no_grad():
        valid = (target != ignore_index).unsqueeze(1)
        right = (logits.argmax(1, keepdim=True) == target.unsqueeze(1)) & valid
        return right.to(logits.dtype), valid.to(logits.dtype)


def correctness_loss(d_logits: torch.Tensor, right: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """D's loss for the error-predicting task: binary cross-entropy of its per-pixel logits [B, 1, H, W]
    against `right`, over the weighted (labelled) pixels."""
    return _masked_mean(F.binary_cross_entropy_with_logits(d_logits, right, reduction="none"), weight)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the pixels of `mask` (bool [B, H, W]) divided by all B*H*W pixels, so that the loss
    grows with the share of confident pixels (self-training on hard pseudo-labels).
    `target` int64 [B, H, W] must be a valid class wherever `mask` holds."""
    per_pixel = F.cross_entropy(logits, torch.where(mask, target, 0), reduction="none")  # [B, H, W]
    return (per_pixel * mask).sum() / mask.numel()


def squared_error_consistency(logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """French et al. 2020's consistency as published (their code's defaults: `cons_loss_fn var`, confidence
    not per pixel): the squared difference of the student's softmax and the teacher's probabilities summed
    over classes, averaged over every pixel and scaled by the share of confident pixels in the batch.
    `logits`, `teacher_probs` [B, C, H, W]; `mask` bool [B, H, W] (teacher's max probability > threshold)."""
    per_pixel = (logits.softmax(1) - teacher_probs).square().sum(1)  # [B, H, W], in [0, 2]
    return per_pixel.mean() * mask.float().mean()


def box_mask(batch: int, size: tuple[int, int], area: float = 0.5, generator: torch.Generator | None = None,
             device: torch.device | str | None = None):  # fmt: skip
    """CutMix masks (French et al. 2020): float [batch, 1, H, W] on `device`, 1 inside one random box per
    image that covers `area` of it (side ratio drawn in [1/2, 2], clipped to the image), 0 outside. The
    boxes are drawn on the host (`generator`, a CPU one, or torch's global) and filled in on the device:
    no host-to-device copy, which would wait for the device's queued work."""
    height, width = size
    masks = torch.zeros(batch, 1, height, width, device=device)
    for index in range(batch):
        ratio = float(torch.empty(()).uniform_(0.5, 2.0, generator=generator))
        box_h = min(height, max(1, round(height * (area * ratio) ** 0.5)))
        box_w = min(width, max(1, round(height * width * area / box_h)))
        top = int(torch.randint(0, height - box_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - box_w + 1, (), generator=generator))
        masks[index, :, top : top + box_h, left : left + box_w] = 1
    return masks


def mask_precision(mask: torch.Tensor, pseudo: torch.Tensor, hidden: torch.Tensor, ignore_index: int):
    """How good a self-training mask is, measured against labels the training never sees: (precision, the
    share of masked pixels whose pseudo-label equals the hidden label; coverage, the share of labelled
    pixels masked). All [B, H, W]; pixels whose hidden label is void do not count. 0 / 0 gives nan: precision
    with no masked labelled pixel, both with no labelled pixel (no host-device synchronisation)."""
    with torch.no_grad():
        valid = hidden != ignore_index
        chosen = mask & valid
        right = (chosen & (pseudo == hidden)).sum()
        return right / chosen.sum().float(), chosen.sum() / valid.sum().float()


def precision_at_coverage(confidence: torch.Tensor, pseudo: torch.Tensor, hidden: torch.Tensor,
                          coverage: float | torch.Tensor, ignore_index: int) -> torch.Tensor:  # fmt: skip
    """Precision of the `coverage` share (in [0, 1], as `mask_precision` gives it) of labelled pixels with the
    highest `confidence` (e.g. G's max softmax, [B, H, W]): the mask another method would need to match at
    equal coverage. Pixels with the same confidence as the last one taken (common near 1.0 in fp32) count at
    their mean precision: the expected precision of a random pick among them. A float scalar tensor, nan if
    the mask is empty (coverage 0 or nan) or a labelled pixel's confidence is nan. Fixed shapes only: no
    host-device synchronisation where `coverage` is a device tensor or a Python float."""
    with torch.no_grad():
        valid = (hidden != ignore_index).flatten()  # [N]
        score = torch.where(valid, confidence.flatten(), -math.inf)  # void pixels last
        right = ((pseudo == hidden).flatten() & valid).double()
        count = torch.round(valid.sum().double() * coverage)  # as round(coverage * labelled) did; nan stays nan
        rank = (count.nan_to_num(0) - 1).clamp(0, len(score) - 1).long().view(1)
        cut = score.sort(descending=True).values.gather(0, rank)  # the count-th highest confidence
        above, tied = score > cut, (score == cut) & valid
        taken_tied = count - above.sum()  # how many of the tied pixels the mask takes
        hits = (right * above).sum() + taken_tied * (right * tied).sum() / tied.sum().clamp(min=1)
        defined = (count > 0) & ~score.isnan().any()
        return torch.where(defined, hits / count, math.nan).float()
