"""PNG decoding and the joint image/mask transforms (torchvision.transforms.v2).

Images travel as uint8 `tv_tensors.Image` [3, H, W] and masks as `tv_tensors.Mask` [H, W] of train
ids, so every geometric op moves both together (masks always with nearest interpolation).
"""

import struct
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_png, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from seg_gan.errors import UserError
from seg_gan.models.generator import IMAGENET_MEAN, IMAGENET_STD

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, reading 24 bytes; UserError if not a PNG."""
    with open(path, "rb") as file:
        head = file.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise UserError(f"{path} is not a readable PNG file (bad or missing PNG header).")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def read_png(path: Path, mode: ImageReadMode) -> torch.Tensor:
    """Decode a PNG to uint8 [C, H, W] with torchvision's libpng binding (faster than PIL here)."""
    try:
        return decode_png(read_file(str(path)), mode=mode)
    except RuntimeError as error:
        raise UserError(f"{path} could not be decoded as PNG ({error}); the file may be truncated.") from None


class RandomScale(v2.Transform):
    """Resize image and mask together by one random factor from `scale_range` (aspect kept)."""

    def __init__(self, scale_range: tuple[float, float]):
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = TF.get_size(next(x for x in flat_inputs if isinstance(x, tv_tensors.Image)))
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        return {"size": [max(1, round(height * scale)), max(1, round(width * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, params["size"], antialias=True)


def train_transform(
    crop_size: tuple[int, int],
    scale_range: tuple[float, float],
    hflip: bool,
    color_jitter: float,
    ignore_index: int,
) -> v2.Compose:
    """Random scale, random crop (padding image 0 and mask `ignore_index`), flip, jitter, normalise."""
    steps: list[v2.Transform] = [
        RandomScale(scale_range),
        v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:  # photometric: touches tv_tensors.Image only
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return v2.Compose([*steps, *_to_float()])


def eval_transform(eval_size: tuple[int, int] | None) -> v2.Compose:
    """Whole image, resized to `eval_size` if given; the mask is left at its full resolution
    (the model upsamples its logits to the mask), so metrics are exact at the label resolution."""
    resize = [] if eval_size is None else [_ResizeImageOnly(eval_size)]
    return v2.Compose([*resize, *_to_float()])


class _ResizeImageOnly(v2.Transform):
    _transformed_types = (tv_tensors.Image,)

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = list(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, self.size, antialias=True)


def _to_float() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
