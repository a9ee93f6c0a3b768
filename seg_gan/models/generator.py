"""The generator G: any segmentation-models-pytorch encoder-decoder, image -> class logits."""

import difflib
from pathlib import Path
from typing import Literal

import segmentation_models_pytorch as smp
import torch
from torch import nn

from seg_gan.errors import UserError

Arch = Literal[
    "Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
    "Linknet", "MAnet", "PAN", "UPerNet", "Segformer",
]  # fmt: skip


def build_generator(arch: str, encoder_name: str, encoder_weights: str | None, num_classes: int) -> nn.Module:
    """`smp.create_model` with clear errors; `encoder_weights` is None, "imagenet" or a local file."""
    names = smp.encoders.get_encoder_names()
    if encoder_name not in names:
        close = difflib.get_close_matches(encoder_name, names, n=5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise UserError(
            f"model.encoder_name: unknown encoder {encoder_name!r}. Expected one of the "
            f"{len(names)} names in segmentation_models_pytorch.encoders.get_encoder_names()." + hint
        )
    from_file = encoder_weights not in (None, "imagenet")
    generator = smp.create_model(
        arch,
        encoder_name=encoder_name,
        encoder_weights=None if from_file else encoder_weights,
        classes=num_classes,
    )
    if from_file:
        load_encoder_weights(generator.encoder, Path(encoder_weights))
    return generator


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local state dict into an smp encoder, failing clearly on missing/extra/misshaped keys.

    Accepts a plain state dict, a dict with a "state_dict" key, and keys prefixed with "encoder."
    (as saved from a whole smp model).
    """
    if not path.is_file():
        raise UserError(
            f"model.encoder_weights: {str(path)!r} is not a file. Expected null, 'imagenet', "
            "or the path of a local encoder state dict (.pth/.pt)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise UserError(f"model.encoder_weights: cannot read {str(path)!r} as a torch state dict ({error}).") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"model.encoder_weights: {str(path)!r} holds a {type(state).__name__}, expected a state dict.")
    if any(key.startswith("encoder.") for key in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if misshaped:
            problems.append(f"{len(misshaped)} shape mismatches (e.g. {misshaped[:3]})")
        raise UserError(
            f"model.encoder_weights: {str(path)!r} does not fit the encoder: "
            + "; ".join(problems)
            + ". Expected a state dict saved from the same smp encoder_name."
        )
    encoder.load_state_dict(state)
