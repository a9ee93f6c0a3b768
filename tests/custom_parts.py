"""A user-written discriminator, plugged in by class_path without editing the package."""

import torch
from torch import nn


class TinyDiscriminator(nn.Module):
    def __init__(self, num_classes: int, width: int = 4):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(num_classes, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(width, 1, 3, padding=1)
        )

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(probs)  # [B, 1, H, W]
