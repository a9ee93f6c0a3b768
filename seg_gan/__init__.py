"""seg_gan: adversarial semantic segmentation with PyTorch Lightning."""

from seg_gan.module import SegGAN

__all__ = ["SegGAN"]
