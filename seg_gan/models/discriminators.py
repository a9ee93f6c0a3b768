"""Discriminators. Every one is built as `D(num_classes)` and called as `D(probs, image)`.

probs: [B, C, H, W] a softmax map or an encoded label map; image: [B, 3, H, W] normalised RGB.
Output: logits, [B, 1, H, W] for a per-pixel D (upsampled to the label size), [B, 1, h, w] for a
patch D, [B, 1, 1, 1] for an image-level D. Write your own with the same two signatures and pass
it as `--model.discriminator.class_path your_module.YourD`.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

DiscriminatorName = Literal["fcn", "image", "patch"]


def _conv(in_ch: int, out_ch: int, stride: int, spectral_norm: bool) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=stride, padding=1)
    return apply_spectral_norm(conv) if spectral_norm else conv


class FCNDiscriminator(nn.Module):
    """Hung et al. 2018: five 4x4 stride-2 convs (64-128-256-512-1), LeakyReLU 0.2, per-pixel score.

    Args:
        num_classes: channels of the label/softmax map.
        use_image: also feed the RGB image (3 more input channels; an error-predicting D needs it).
        width: channels of the first conv (doubles per layer).
        spectral_norm: wrap every conv in spectral normalisation.
        dropout: Dropout2d probability after each of the first three convs (0 = none).
    """

    def __init__(self, num_classes: int, use_image: bool = False, width: int = 64, spectral_norm: bool = False,
                 dropout: float = 0.0):  # fmt: skip
        super().__init__()
        self.use_image = use_image
        channels = [num_classes + 3 * use_image, width, width * 2, width * 4, width * 8]
        self.net = nn.Sequential(
            *_conv_stack(channels, spectral_norm, dropout), _conv(channels[-1], 1, 2, spectral_norm)
        )

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([probs, image], 1) if self.use_image else probs
        logits = self.net(x)  # [B, 1, H/32, W/32]
        return F.interpolate(logits, size=probs.shape[-2:], mode="bilinear", align_corners=False)


def _conv_stack(channels: list[int], spectral_norm: bool, dropout: float) -> list[nn.Module]:
    """4x4 stride-2 convs with LeakyReLU 0.2, and Dropout2d after the first three (s4GAN's D) if asked."""
    layers: list[nn.Module] = []
    for index, (in_ch, out_ch) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        layers += [_conv(in_ch, out_ch, 2, spectral_norm), nn.LeakyReLU(0.2, inplace=True)]
        if dropout > 0 and index < 3:
            layers.append(nn.Dropout2d(dropout))
    return layers


class ImageDiscriminator(nn.Module):
    """Luc et al. 2016 / s4GAN-style image-level D on [softmax, image]: one score per image.

    Args:
        num_classes: channels of the label/softmax map.
        width: channels of the first conv (doubles per layer).
        spectral_norm: wrap every conv and the linear head in spectral normalisation.
        dropout: Dropout2d probability after each of the first three convs (s4GAN as published: 0.5).
    """

    def __init__(self, num_classes: int, width: int = 64, spectral_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        channels = [num_classes + 3, width, width * 2, width * 4, width * 8]
        self.convs = nn.Sequential(*_conv_stack(channels, spectral_norm, dropout))
        head = nn.Linear(channels[-1], 1)
        self.head = apply_spectral_norm(head) if spectral_norm else head

    def features(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """[B, 8*width] pooled features before the head (s4GAN matches their means)."""
        return self.convs(torch.cat([probs, image], 1)).mean((2, 3))

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(probs, image))[:, :, None, None]  # [B, 1, 1, 1]


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN (70x70 receptive field) on [softmax, image]: one score per patch.

    Args:
        num_classes: channels of the label/softmax map.
        width: channels of the first conv (doubles per layer).
        spectral_norm: use spectral normalisation instead of batch norm.
    """

    def __init__(self, num_classes: int, width: int = 64, spectral_norm: bool = False):
        super().__init__()
        channels = [num_classes + 3, width, width * 2, width * 4, width * 8]
        strides = [2, 2, 2, 1]
        layers: list[nn.Module] = []
        for i, (in_ch, out_ch, stride) in enumerate(zip(channels[:-1], channels[1:], strides, strict=True)):
            layers.append(_conv(in_ch, out_ch, stride, spectral_norm))
            if i > 0 and not spectral_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers.append(_conv(channels[-1], 1, 1, spectral_norm))
        self.net = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([probs, image], 1))  # [B, 1, ~H/8, ~W/8]


DISCRIMINATORS = {"fcn": FCNDiscriminator, "image": ImageDiscriminator, "patch": PatchDiscriminator}


def build_discriminator(name: str, num_classes: int, spectral_norm: bool = False, dropout: float = 0.0,
                        use_image: bool = False) -> nn.Module:  # fmt: skip
    """A built-in D by name; `use_image` gives the FCN D the RGB image too (the others always see it);
    `dropout` is Dropout2d after the first three convs of the FCN and image Ds (PatchGAN: not supported)."""
    if name == "fcn":
        return FCNDiscriminator(num_classes, use_image=use_image, spectral_norm=spectral_norm, dropout=dropout)
    if name == "image":
        return ImageDiscriminator(num_classes, spectral_norm=spectral_norm, dropout=dropout)
    return DISCRIMINATORS[name](num_classes, spectral_norm=spectral_norm)
