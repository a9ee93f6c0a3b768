"""Cross-entropy, adversarial losses, and the label encodings that turn ground truth into D's "real" input.

Shapes: `logits` [B, C, H, W], `probs` [B, C, H, W] softmax maps, `target` [B, H, W] int64 train ids
(ignore_index = void), D logits either [B, 1, H, W] (per pixel, already upsampled to the label size) or
[B, 1, 1, 1].
"""

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
