"""Decoding image and label files: every PNG/JPEG mode is decoded as PIL decodes it (labels: to their
class ids) or refused before training with a message naming the file."""

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_camvid, write_cityscapes
from PIL import Image

from seg_gan.data import CamVidDataModule, CityscapesDataModule
from seg_gan.data.camvid import CAMVID_CLASSES
from seg_gan.data.io import image_size, label_size, read_image, read_label
from seg_gan.errors import UserError

H, W = 6, 10
RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
IDS = (np.arange(H * W).reshape(H, W) % 12).astype(np.uint8)  # class ids 0..11


def raw_png(path: Path, samples: np.ndarray, bit_depth: int, color_type: int) -> None:
    """A PNG written by hand, for the bit depths PIL does not write: `samples` [H, W, channels] of
    unsigned values, packed big-endian at `bit_depth` bits (rows padded to whole bytes)."""
    height, width, channels = samples.shape
    rows = []
    for row in samples.reshape(height, width * channels).astype(np.uint32):
        if bit_depth == 16:
            rows.append(b"\x00" + struct.pack(f">{len(row)}H", *row))
        elif bit_depth == 8:
            rows.append(b"\x00" + bytes(row.astype(np.uint8)))
        else:
            bits = "".join(format(v, f"0{bit_depth}b") for v in row)
            bits += "0" * (-len(bits) % 8)
            rows.append(b"\x00" + int(bits, 2).to_bytes(len(bits) // 8, "big"))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + chunk(b"IEND", b""))  # fmt: skip


def palette_image(indices: np.ndarray, colors: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices, "P")
    image.putpalette(colors.astype(np.uint8).ravel().tolist())
    return image


def save(image: Image.Image, **options):
    return lambda path: image.save(path, **options)


PALETTE = RNG.integers(0, 256, (256, 3))
GRAY16 = (PIXELS[..., 0].astype(np.uint16) * 257) ^ 0x00F0  # spans 0..65535, low byte not a copy
# name: (suffix, writer). Every one decodes to PIL's convert("RGB"), except REFUSED_IMAGES.
IMAGES = {
    "1-bit": (".png", save(Image.fromarray(PIXELS[..., 0] > 127))),
    "L": (".png", save(Image.fromarray(PIXELS[..., 0]))),
    "L 2-bit": (".png", lambda p: raw_png(p, PIXELS[..., :1] >> 6, 2, 0)),
    "L 4-bit": (".png", lambda p: raw_png(p, PIXELS[..., :1] >> 4, 4, 0)),
    "LA": (".png", save(Image.fromarray(PIXELS[..., :2], "LA"))),
    "LA 16-bit": (".png", lambda p: raw_png(p, PIXELS[..., :2].astype(np.uint16) * 257, 16, 4)),
    "P": (".png", save(palette_image(PIXELS[..., 0], PALETTE))),
    "P 1-bit": (".png", save(palette_image(PIXELS[..., 0] >> 7, PALETTE[:2]), bits=1)),
    "P 2-bit": (".png", save(palette_image(PIXELS[..., 0] >> 6, PALETTE[:4]), bits=2)),
    "P 4-bit": (".png", save(palette_image(PIXELS[..., 0] >> 4, PALETTE[:16]), bits=4)),
    "P transparency": (".png", save(palette_image(PIXELS[..., 0], PALETTE), transparency=3)),
    "RGB": (".png", save(Image.fromarray(PIXELS[..., :3]))),
    "RGBA": (".png", save(Image.fromarray(PIXELS))),
    "RGB 16-bit": (".png", lambda p: raw_png(p, PIXELS[..., :3].astype(np.uint16) * 256 + 77, 16, 2)),
    "RGBA 16-bit": (".png", lambda p: raw_png(p, PIXELS.astype(np.uint16) * 256 + 255, 16, 6)),
    "I;16": (".png", save(Image.fromarray(GRAY16))),
    "JPEG L": (".jpg", save(Image.fromarray(PIXELS[..., 0]))),
    "JPEG RGB": (".jpg", save(Image.fromarray(PIXELS[..., :3]))),
    "JPEG CMYK": (".jpg", save(Image.fromarray(PIXELS, "CMYK"))),
}
REFUSED_IMAGES = {"I;16": r"is a 16-bit grayscale image \(mode I;16\); expected an 8-bit image"}


@pytest.mark.parametrize("name", list(IMAGES))
def test_every_image_mode_decodes_as_pil_or_is_refused(tmp_path, name):
    suffix, write = IMAGES[name]
    path = tmp_path / f"image{suffix}"
    write(path)
    if name in REFUSED_IMAGES:
        for read in (image_size, read_image):  # refused by the header check at setup and when read
            with pytest.raises(UserError, match=f"{path}.*{REFUSED_IMAGES[name]}"):
                read(path)
        return
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    image = read_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, H, W) and image_size(path) == (H, W)
    assert torch.equal(image, expected)
    if name == "RGB 16-bit":  # the high byte of each 16-bit sample
        assert torch.equal(image, torch.from_numpy(PIXELS[..., :3]).permute(2, 0, 1))


# name: (suffix, writer, expected class ids or the start of the refusal)
LABELS = {
    "L": (".png", save(Image.fromarray(IDS)), IDS),
    "P": (".png", save(palette_image(IDS, PALETTE)), IDS),  # the indices, whatever the colours
    "P 4-bit": (".png", save(palette_image(IDS, PALETTE[:16]), bits=4), IDS),
    "1-bit": (".png", save(Image.fromarray(IDS % 2 == 1)), IDS % 2),
    "L 2-bit": (".png", lambda p: raw_png(p, IDS[..., None] % 4, 2, 0), IDS % 4),
    "L 4-bit": (".png", lambda p: raw_png(p, IDS[..., None], 4, 0), IDS),
    "16-bit within 0..255": (".png", save(Image.fromarray(IDS.astype(np.uint16) * 20)), IDS * 20),
    "16-bit out of range": (".png", save(Image.fromarray(IDS.astype(np.uint16) * 1000 + 26001)),
                            "is a 16-bit label file whose largest value is 37001"),  # fmt: skip
    "RGB": (".png", save(Image.fromarray(PALETTE[IDS].astype(np.uint8))),
            r"is a colour or multi-channel label file \(mode RGB, 3 channels\); expected a PNG of single-channel"),
    "RGBA": (".png", save(Image.fromarray(PIXELS)), r"multi-channel label file \(mode RGBA, 4 channels\)"),
    "LA": (".png", save(Image.fromarray(np.stack([IDS, IDS], -1), "LA")), r"label file \(mode LA, 2 channels\)"),
    "JPEG": (".jpg", save(Image.fromarray(IDS)), "is a JPEG label file; expected a PNG of single-channel class ids"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LABELS))
def test_every_label_mode_gives_its_class_ids_or_is_refused(tmp_path, name):
    suffix, write, expected = LABELS[name]
    path = tmp_path / f"label{suffix}"
    write(path)
    if isinstance(expected, str):
        readers = [read_label] if "16-bit" in name else [label_size, read_label]  # values need decoding
        for read in readers:
            with pytest.raises(UserError, match=f"{path}.*{expected}"):
                read(path)
        return
    ids = read_label(path)
    assert ids.dtype == np.uint8 and label_size(path) == (H, W)
    assert np.array_equal(ids, expected)


def test_colour_labels_are_refused_at_setup_naming_the_file(cityscapes_root):
    label = sorted((cityscapes_root / "gtFine" / "train").rglob("*_labelIds.png"))[-1]
    ids = np.array(Image.open(label))
    Image.fromarray(np.stack([ids] * 3, -1)).save(label)  # what a colour export looks like to the reader
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0, crop_size=(32, 64))
    with pytest.raises(UserError, match=f"{label}.*colour or multi-channel label file .*Convert colour labels"):
        data.setup("fit")


def test_sixteen_bit_images_are_refused_at_setup(cityscapes_root):
    image = sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[1]
    Image.fromarray(np.full((32, 64), 300, np.uint16)).save(image)
    with pytest.raises(UserError, match=f"{image} is a 16-bit grayscale image"):
        CityscapesDataModule(str(cityscapes_root), num_workers=0).setup("validate")


@pytest.mark.parametrize("damage", ["truncated PNG", "corrupt PNG data", "truncated JPEG", "empty file"])
def test_broken_files_are_refused_naming_the_path(tmp_path, damage):
    path = tmp_path / ("image.jpg" if "JPEG" in damage else "image.png")
    Image.fromarray(RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    if damage.startswith("truncated"):
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt PNG data":
        start = data.index(b"IDAT") + 20
        path.write_bytes(data[:start] + bytes(200) + data[start + 200 :])
    else:
        path.write_bytes(b"")
    expected = "is not a readable PNG or JPEG file" if damage == "empty file" else "could not be decoded as an image"
    with pytest.raises(UserError, match=f"{path} {expected}"):
        read_image(path)


def test_palette_camvid_annotations_give_the_masks_of_the_grayscale_ones(tmp_path):
    gray = write_camvid(tmp_path / "gray", {"train": 3, "val": 2})
    palette = tmp_path / "palette"
    shutil.copytree(gray, palette)
    colors = np.zeros((256, 3), np.uint8)  # CamVid's colours; Unlabelled (11) and the rest black
    colors[: len(CAMVID_CLASSES)] = [color for _, color in CAMVID_CLASSES]
    for annotation in palette.glob("*annot/*.png"):
        palette_image(np.array(Image.open(annotation)), colors).save(annotation)
    assert Image.open(annotation).mode == "P"
    masks = {}
    for root in (gray, palette):
        data = CamVidDataModule(str(root), num_workers=0, crop_size=(32, 48))
        data.setup("fit")
        data.setup("test")
        items = [data.train_set[(i, 7)] for i in range(3)] + [data.test_set[i] for i in range(2)]
        masks[root] = [item["mask"] for item in items]
    for from_gray, from_palette in zip(masks[gray], masks[palette], strict=True):
        assert torch.equal(from_gray, from_palette)
    raw = np.array(Image.open(sorted((gray / "valannot").glob("*.png"))[0]))
    assert np.array_equal(masks[palette][3].numpy(), np.where(raw == 11, 255, raw))  # void 11 -> 255


def test_header_checks_do_not_assume_png(tmp_path):
    root = write_cityscapes(tmp_path / "cs", {"val": 2})
    image = next((root / "leftImg8bit" / "val").rglob("*.png"))
    Image.open(image).save(image, format="JPEG")  # a JPEG behind a .png name is read as what it is
    data = CityscapesDataModule(str(root), num_workers=0)
    data.setup("validate")
    index = [s.image for s in data.val_set.samples].index(image)
    expected = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(read_image(image), expected) and data.val_set[index]["image"].shape == (3, 32, 64)


def test_cityscapes_instance_ids_given_as_label_ids_are_refused(cityscapes_root):
    for label in (cityscapes_root / "gtFine" / "train").rglob("*_labelIds.png"):
        ids = np.array(Image.open(label)).astype(np.uint16)
        ids[ids == 26] = 26 * 1000 + 3  # instanceIds: car instance 3 of label id 26
        Image.fromarray(ids).save(label)
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0, crop_size=(32, 64))
    with pytest.raises(UserError, match="is a 16-bit label file whose largest value is 26003; expected class ids"):
        data.setup("fit")


def test_files_of_other_formats_are_refused_naming_the_format(tmp_path):
    image, label = tmp_path / "image.png", tmp_path / "label.png"
    Image.fromarray(PIXELS[..., :3]).save(image, format="BMP")  # the name does not decide: the content does
    Image.fromarray(IDS).save(label, format="TIFF")
    with pytest.raises(UserError, match=f"{image} is a BMP file; expected a PNG or JPEG image"):
        image_size(image)
    with pytest.raises(UserError, match=f"{label} is a TIFF label file; expected a PNG of single-channel class ids"):
        read_label(label)
