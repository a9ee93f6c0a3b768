from seg_gan.models.discriminators import (
    DISCRIMINATORS,
    FCNDiscriminator,
    ImageDiscriminator,
    PatchDiscriminator,
    build_discriminator,
)
from seg_gan.models.generator import build_generator

__all__ = [
    "DISCRIMINATORS", "FCNDiscriminator", "ImageDiscriminator", "PatchDiscriminator",
    "build_discriminator", "build_generator",
]  # fmt: skip
