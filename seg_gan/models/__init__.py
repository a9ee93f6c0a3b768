from seg_gan.models.discriminators import (
    DISCRIMINATORS,
    FCNDiscriminator,
    ImageDiscriminator,
    PatchDiscriminator,
    build_discriminator,
)
from seg_gan.models.generator import IMAGENET_MEAN, IMAGENET_STD, build_generator

__all__ = [
    "DISCRIMINATORS", "FCNDiscriminator", "ImageDiscriminator", "PatchDiscriminator",
    "build_discriminator", "build_generator", "IMAGENET_MEAN", "IMAGENET_STD",
]  # fmt: skip
