"""Inference on whole images of any size: whole-image or sliding-window, optional flip averaging.

All functions take a normalised image [B, 3, H, W] and return logits [B, C, H, W] (or at out_size).
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

InferenceMode = Literal["whole", "slide"]


def whole(generator: nn.Module, image: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """smp encoders need sides divisible by their output stride (32): pad, run, crop."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % 32, (-width) % 32
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    return generator(image.contiguous(memory_format=memory_format))[..., :height, :width]


def sliding(generator: nn.Module, image: torch.Tensor, window: tuple[int, int], stride: tuple[int, int],
            memory_format=torch.contiguous_format) -> torch.Tensor:  # fmt: skip
    """Windows of `window` every `stride` pixels (the last one flush with the border); overlapping
    logits are averaged. For models trained on crops smaller than the evaluation images."""
    height, width = image.shape[-2:]
    win_h, win_w = min(window[0], height), min(window[1], width)
    rows = _starts(height, win_h, stride[0])
    cols = _starts(width, win_w, stride[1])
    total, count = None, torch.zeros(1, 1, height, width, device=image.device)
    for top in rows:
        for left in cols:
            logits = whole(generator, image[..., top : top + win_h, left : left + win_w], memory_format)
            if total is None:
                total = image.new_zeros(image.shape[0], logits.shape[1], height, width, dtype=logits.dtype)
            total[..., top : top + win_h, left : left + win_w] += logits
            count[..., top : top + win_h, left : left + win_w] += 1
    return total / count


def _starts(size: int, window: int, stride: int) -> list[int]:
    steps = max(1, math.ceil((size - window) / stride) + 1)
    return sorted({min(i * stride, size - window) for i in range(steps)})


def predict_logits(generator: nn.Module, image: torch.Tensor, out_size: tuple[int, int] | None = None,
                   mode: InferenceMode = "whole", window: tuple[int, int] = (512, 1024),
                   stride: tuple[int, int] = (341, 683), flip: bool = False,
                   memory_format=torch.contiguous_format) -> torch.Tensor:  # fmt: skip
    """Logits at `out_size` (default: the image size); `flip` averages with the mirrored image."""

    def run(x: torch.Tensor) -> torch.Tensor:
        if mode == "slide":
            return sliding(generator, x, window, stride, memory_format)
        return whole(generator, x, memory_format)

    logits = run(image)
    if flip:
        logits = (logits + run(image.flip(-1)).flip(-1)) / 2
    if out_size is not None and logits.shape[-2:] != tuple(out_size):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits
