"""Reading image and label files (with PIL), and checking their headers before anything is trained.

Images: PNG or JPEG, decoded to exactly what `PIL.Image.open(path).convert("RGB")` gives: 1-bit,
grayscale, grayscale + alpha, palette (with or without transparency), RGB, RGBA (alpha dropped),
16-bit RGB(A) (PIL keeps the high byte) and CMYK JPEG. 16-bit grayscale (mode I;16 / I) is refused:
PIL's conversion to 8 bits clips every value above 255 instead of scaling.

Labels: lossless PNG with one class id per pixel: 8-bit grayscale (mode L), palette indices (mode P,
PASCAL VOC style: the index is the id, the palette colour is ignored), 1, 2 and 4-bit grayscale (the
stored value is the id, not PIL's brightness scaled to 0..255) and 16-bit grayscale whose values all
fit 0..255. Colour or multi-channel label files and JPEG labels are refused.

Colour masks (one colour per class, e.g. a folder dataset's `mask_format: color`): lossless PNG decoded to
RGB like images (`read_color_label`); their colours become class ids in `seg_gan.data.labels.ColorLabels`.

Every refusal is a `UserError` naming the file and what was expected. Header checks read only the
header (`Image.open` is lazy), so `check_pairs` costs a few hundred bytes per file.
"""

import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from seg_gan.errors import UserError

# Pillow's name for the format -> what we call it. MPO is how PIL reports many camera JPEGs (a JPEG
# with extra frames); it decodes the first frame, the photo itself.
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}
IMAGE_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK"}  # convert("RGB") is exact for these
LABEL_MODES = {"1", "L", "P", "I;16", "I"}  # PNG 16-bit grayscale is I;16 (Pillow >= 11) or I (older)
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)
LABEL_EXPECTED = (
    "expected a PNG of single-channel class ids (mode L, 8-bit grayscale, or P, palette indices; one id per pixel)"
)


class _Paired(Protocol):
    image: Path
    label: Path | None


def _open(path: Path) -> Image.Image:
    """The image, opened lazily (header only); UserError if it is no image file PIL knows."""
    try:
        return Image.open(path)
    except DECODE_ERRORS as error:
        raise UserError(f"{path} is not a readable PNG or JPEG file ({error}); expected an image file.") from None


def _check_image(image: Image.Image, path: Path) -> None:
    if image.format not in IMAGE_FORMATS:
        raise UserError(f"{path} is a {image.format} file; expected a PNG or JPEG image.")
    if image.mode in SIXTEEN_BIT:
        raise UserError(
            f"{path} is a 16-bit grayscale image (mode {image.mode}); expected an 8-bit image (grayscale, "
            "palette, RGB or RGBA): converting it to 8 bits would clip every value above 255. Scale it to "
            "8 bits first (e.g. value // 257)."
        )
    if image.mode not in IMAGE_MODES:
        raise UserError(
            f"{path} has pixel mode {image.mode}, which seg_gan does not decode; expected an 8-bit grayscale, "
            "palette, RGB or RGBA PNG, or a grayscale, RGB or CMYK JPEG."
        )


def _check_label(image: Image.Image, path: Path) -> None:
    if IMAGE_FORMATS.get(image.format) == "JPEG":
        raise UserError(
            f"{path} is a JPEG label file; {LABEL_EXPECTED}. JPEG compression is lossy: it changes the class "
            "ids along every boundary."
        )
    if image.format != "PNG":
        raise UserError(f"{path} is a {image.format} label file; {LABEL_EXPECTED}.")
    if image.mode not in LABEL_MODES:
        raise UserError(
            f"{path} is a colour or multi-channel label file (mode {image.mode}, {len(image.getbands())} "
            f"channels); {LABEL_EXPECTED}. Convert colour labels to class ids first (one id per colour)."
        )


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, nothing decoded.

    Raises:
        UserError: not a PNG/JPEG file, or a mode `read_image` refuses (e.g. 16-bit grayscale).
    """
    with _open(path) as image:
        _check_image(image, path)
        width, height = image.size
    return height, width


def label_size(path: Path) -> tuple[int, int]:
    """(height, width) of a label file from its header, nothing decoded.

    Raises:
        UserError: not a PNG file (JPEG included), or colour / multi-channel (modes RGB, RGBA, LA, ...).
    """
    with _open(path) as image:
        _check_label(image, path)
        width, height = image.size
    return height, width


def _check_color_label(image: Image.Image, path: Path) -> None:
    if IMAGE_FORMATS.get(image.format) == "JPEG":
        raise UserError(
            f"{path} is a JPEG colour mask; expected a PNG colour mask (one colour per class). JPEG compression "
            "is lossy: it changes the colours along every boundary."
        )
    _check_image(image, path)


def color_label_size(path: Path) -> tuple[int, int]:
    """(height, width) of a colour mask from its header, nothing decoded.

    Raises:
        UserError: not a PNG file (JPEG included), or a mode `read_color_label` refuses (16-bit grayscale).
    """
    with _open(path) as image:
        _check_color_label(image, path)
        width, height = image.size
    return height, width


def _decode_failed(path: Path, error: BaseException) -> UserError:
    return UserError(f"{path} could not be decoded as an image ({error}); the file may be truncated or corrupted.")


def read_image(path: Path) -> torch.Tensor:
    """Decode an image file to uint8 [3, H, W], equal to `np.asarray(Image.open(path).convert("RGB"))`
    moved channels-first (a view with channels-last strides; no copy).

    Raises:
        UserError: not a PNG/JPEG file, a refused mode (16-bit grayscale), or a truncated/corrupt file.
    """
    return torch.from_numpy(_read_rgb(path, _check_image)).permute(2, 0, 1)


def read_color_label(path: Path) -> np.ndarray:
    """Decode a colour mask to uint8 numpy [H, W, 3], as `np.asarray(Image.open(path).convert("RGB"))`
    (palette masks give their palette colours, RGBA drops alpha).

    Raises:
        UserError: not a PNG (JPEG colour masks are lossy), 16-bit grayscale, or a truncated/corrupt file.
    """
    return _read_rgb(path, _check_color_label)


def _read_rgb(path: Path, check) -> np.ndarray:
    with _open(path) as image:
        check(image, path)
        try:
            with warnings.catch_warnings():  # PIL warns about palette transparency, which RGB drops anyway
                warnings.simplefilter("ignore", UserWarning)
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                return np.array(rgb)  # [H, W, 3] uint8; decodes here
        except DECODE_ERRORS as error:
            raise _decode_failed(path, error) from None


def _png_bit_depth(path: Path) -> int:
    """Bits per sample from the IHDR chunk (byte 24 of every PNG)."""
    with open(path, "rb") as file:
        head = file.read(25)
    return head[24]


def read_label(path: Path) -> np.ndarray:
    """Decode a label file to its class ids: uint8 numpy [H, W].

    Palette PNGs give their indices (not the colours' brightness), 1/2/4-bit grayscale the stored values
    (PIL scales them to 0..255), 16-bit grayscale its values when all are at most 255.

    Raises:
        UserError: not a PNG (JPEG labels are lossy), colour or multi-channel, 16-bit with a value above
            255 (the message names the largest), or a truncated/corrupt file.
    """
    with _open(path) as image:
        _check_label(image, path)
        try:
            values = np.array(image)  # [H, W]: bool (mode 1), uint8 (L, P), uint16 / int32 (16-bit)
        except DECODE_ERRORS as error:
            raise _decode_failed(path, error) from None
        mode = image.mode
    if mode == "L":
        depth = _png_bit_depth(path)
        if depth < 8:  # PIL scales 2/4-bit samples to 0..255 (x85, x17); the top bits give them back
            values >>= 8 - depth
        return values
    if mode in SIXTEEN_BIT:
        largest = int(values.max(initial=0))
        if largest > 255:
            raise UserError(
                f"{path} is a 16-bit label file whose largest value is {largest}; expected class ids from 0 to "
                "255 (8-bit label ids; e.g. Cityscapes *_gtFine_labelIds.png, not *_instanceIds.png)."
            )
    return values.astype(np.uint8)  # mode 1: bool -> 0/1; P: the indices as they are


def check_pairs(
    samples: Sequence[_Paired], where: str, label_header: Callable[[Path], tuple[int, int]] = label_size
) -> None:
    """Fail early, reading headers only: no images, a missing label, an unreadable or refused image or
    label file (see `image_size`, `label_size`; `label_header` is `color_label_size` for colour masks), or
    an image and label of different sizes.

    Raises:
        UserError: naming `where` (empty split) or the file, and what was expected.
    """
    if not samples:
        raise UserError(f"{where} holds no images. Expected at least one image in this split.")
    for sample in samples:
        height, width = image_size(sample.image)
        if sample.label is None:
            continue
        if not sample.label.is_file():
            raise UserError(f"{sample.image} has no label file: expected {sample.label}.")
        label_height, label_width = label_header(sample.label)
        if (height, width) != (label_height, label_width):
            raise UserError(
                f"{sample.image} is {height}x{width} but its label {sample.label} "
                f"is {label_height}x{label_width}; expected the same height x width."
            )


def check_labelled(
    samples: Sequence[_Paired],
    lookup: np.ndarray,
    ignore_index: int,
    where: str,
    read: Callable[[Path], np.ndarray] = read_label,
) -> None:
    """Refuse a split in which no label file holds a single pixel of a class: nothing could be learned
    or measured from it. Reads label files in order and stops at the first with such a pixel, so a
    normal dataset costs one file.

    Args:
        samples: the split's samples; those without a label are skipped.
        lookup: uint8 [256] label id -> train id, `ignore_index` for void.
        ignore_index: the void train id.
        where: the split, for the message.
        read: label file -> uint8 [H, W] ids (`read_label`, or a `ColorLabels` for colour masks).

    Raises:
        UserError: naming `where`, the label files checked and what was expected.
    """
    labels = [sample.label for sample in samples if sample.label is not None]
    for label in labels:
        if (lookup[read(label)] != ignore_index).any():
            return
    shown = ", ".join(str(label) for label in labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
    raise UserError(
        f"{where}: all {len(labels)} label files checked ({shown}) hold only void pixels (label ids that map "
        f"to {ignore_index}, ignored), so nothing can be learned or measured. Expected label files holding "
        "this dataset's class ids, e.g. Cityscapes *_gtFine_labelIds.png or CamVid annotations with ids 0-10 "
        "(Cityscapes' public test labels are such placeholders: evaluate on val)."
    )
