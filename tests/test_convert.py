import pytest
import segmentation_models_pytorch as smp
import torch

from seg_gan.errors import UserError
from seg_gan.models.convert import convert_in_order


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
