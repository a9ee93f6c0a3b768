"""Generators and discriminators: shapes, local encoder weights, converted ImageNet weights."""

import pytest
import segmentation_models_pytorch as smp
import torch

from seg_gan import SegGAN
from seg_gan.errors import UserError
from seg_gan.models import FCNDiscriminator, ImageDiscriminator, PatchDiscriminator
from seg_gan.models.convert import convert_in_order


@pytest.mark.parametrize(
    "cls, out",
    [(FCNDiscriminator, (2, 1, 64, 96)), (ImageDiscriminator, (2, 1, 1, 1)), (PatchDiscriminator, (2, 1, 6, 10))],
)
def test_discriminator_output_shapes(cls, out):
    d = cls(5)
    logits = d(torch.softmax(torch.randn(2, 5, 64, 96), 1), torch.randn(2, 3, 64, 96))
    assert logits.shape == out


def test_local_encoder_weights(tmp_path):
    source = SegGAN(num_classes=3, lambda_adv=0.0)
    path = tmp_path / "encoder.pth"
    torch.save(source.generator.encoder.state_dict(), path)
    loaded = SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(path))
    for (name, a), (_, b) in zip(
        source.generator.encoder.state_dict().items(), loaded.generator.encoder.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # a whole-model state dict with "encoder." prefixes works too
    torch.save({"state_dict": source.generator.state_dict()}, path)
    SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(path))
    # weights of another encoder fail clearly
    torch.save(SegGAN(num_classes=3, lambda_adv=0.0, encoder_name="resnet34").generator.encoder.state_dict(), path)
    with pytest.raises(UserError, match="does not fit the encoder.*unexpected keys"):
        SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(path))
    with pytest.raises(UserError, match="is not a file"):
        SegGAN(num_classes=3, lambda_adv=0.0, encoder_weights=str(tmp_path / "nope.pth"))


def efficientnet_pytorch_style(encoder_name: str) -> dict[str, torch.Tensor]:
    """A state dict in another package's key names (same order and shapes) plus a classifier."""
    target = smp.encoders.get_encoder(encoder_name, weights=None).state_dict()
    source = {
        f"_other.{i}.{key.replace('.', '_')}": torch.randn_like(v) if v.is_floating_point() else torch.full_like(v, 7)
        for i, (key, v) in enumerate(target.items())
    }
    source["_fc.weight"] = torch.randn(1000, 1280)
    return source


def test_converted_weights_load_into_the_smp_encoder():
    source = efficientnet_pytorch_style("timm-tf_efficientnet_lite0")
    converted = convert_in_order(source, "timm-tf_efficientnet_lite0")
    encoder = smp.encoders.get_encoder("timm-tf_efficientnet_lite0", weights=None)
    encoder.load_state_dict(converted)  # strict: every key, every shape
    values = [v for k, v in source.items() if not k.startswith("_fc.")]
    for loaded, original in zip(encoder.state_dict().values(), values, strict=True):
        assert torch.equal(loaded, original)


def test_conversion_refuses_mismatched_shapes():
    source = efficientnet_pytorch_style("timm-tf_efficientnet_lite0")
    first = next(iter(source))
    source[first] = torch.zeros(3, 3)
    with pytest.raises(UserError, match="does not fit"):
        convert_in_order(source, "timm-tf_efficientnet_lite0")
