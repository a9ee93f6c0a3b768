"""Label tables beyond one id per class: colour masks, class ids outside the class list, colour maps,
and predictions written back in a dataset's own label format (VOC palette PNGs, a folder dataset's masks).

Files are decoded in `seg_gan.data.io`; this module turns what they hold into class ids and back.
"""

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from seg_gan.data.io import read_color_label
from seg_gan.errors import UserError


def bit_colormap(count: int = 256) -> np.ndarray:
    """uint8 [count, 3]: the PASCAL VOC colour map (VOCdevkit's `VOClabelcolormap.m`): the bits of index
    i spread from the top down over R, G and B, three at a time. 0 black, 1 (128, 0, 0), 2 (0, 128, 0),
    15 (192, 128, 128) (VOC's person), 255 (224, 224, 192) (VOC's void); distinct for every index.
    """
    colors = np.zeros((count, 3), np.uint8)
    for index in range(count):
        value, rgb = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colors[index] = rgb
    return colors


def palette_png(ids: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A palette PNG image (mode P) whose indices are `ids` (uint8 [H, W]) and whose palette is `palette`
    (uint8 [N, 3], N <= 256): the format of VOC's SegmentationClass files."""
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids, np.uint8).tobytes())
    image.putpalette(np.asarray(palette, np.uint8).ravel().tolist())
    return image


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> int32 [...] (R << 16 | G << 8 | B), one number per colour."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class ColorLabels:
    """Reads colour masks: each pixel's RGB colour becomes its class id through a table (class i has
    colour `colors[i]`; `void_colors` become `void`). A callable object, so loader workers can pickle it.

    Args:
        colors: the class colours, (R, G, B) 0..255 each, one per class, all different.
        void_colors: colours read as void (e.g. the unlabelled colour), none of them a class colour.
        void: the id void pixels get (255).

    Raises:
        UserError: (when built) a colour given twice; (when called) a mask holding a colour that is in
            neither list, naming the file, the colours and their pixel counts, or a file `read_color_label`
            refuses.
    """

    def __init__(self, colors: Sequence[Sequence[int]], void_colors: Sequence[Sequence[int]] = (), void: int = 255):
        table = [tuple(int(v) for v in color) for color in [*colors, *void_colors]]
        repeated = sorted({color for color in table if table.count(color) > 1})
        if repeated:
            raise UserError(f"data.colors: colour {list(repeated[0])} is given to more than one class (or to a class "
                            "and void); expected one colour per class.")  # fmt: skip
        keys = _pack(np.array(table, np.uint8).reshape(-1, 3))
        values = np.array([*range(len(colors)), *[void] * len(void_colors)], np.uint8)
        order = np.argsort(keys)
        self.keys, self.values = keys[order], values[order]

    def __call__(self, path: Path) -> np.ndarray:
        """uint8 [H, W] class ids (or `void`) of the colour mask at `path`."""
        packed = _pack(read_color_label(path))
        index = np.searchsorted(self.keys, packed).clip(max=len(self.keys) - 1)
        found = self.keys[index] == packed
        if not found.all():
            colors, counts = np.unique(packed[~found], return_counts=True)
            shown = ", ".join(f"({c >> 16}, {c >> 8 & 255}, {c & 255}) in {n} pixels" for c, n in
                              zip(colors[:5].tolist(), counts[:5].tolist(), strict=True))  # fmt: skip
            more = f" and {len(colors) - 5} more colours" if len(colors) > 5 else ""
            raise UserError(
                f"{path} holds colours that are not in the class colour table: {shown}{more}. Expected only the "
                "colours of data.colors (one per class) and data.void_colors; add the missing class or void "
                "colour, or check that the masks were saved losslessly at their own size."
            )
        return self.values[index]


def unknown_ids(ids: np.ndarray, known: np.ndarray) -> dict[int, int]:
    """{label id: pixel count} of the ids in `ids` (uint8 [H, W]) that `known` (bool [256]) does not mark."""
    if not np.take(~known, ids).any():  # the common case, 3x faster than counting every id
        return {}
    counts = np.bincount(ids.ravel(), minlength=256)
    return {int(i): int(counts[i]) for i in np.flatnonzero((counts > 0) & ~known)}


def describe_ids(counts: dict[int, int], most: int = 8) -> str:
    """'7 (120 pixels), 9 (4 pixels)' for {7: 120, 9: 4}: unknown ids in messages."""
    more = f" and {len(counts) - most} more ids" if len(counts) > most else ""
    return ", ".join(f"{i} ({n} pixels)" for i, n in list(counts.items())[:most]) + more


def check_label_values(
    labels: Sequence[Path], read: Callable[[Path], np.ndarray], known: np.ndarray, where: str, expected: str
) -> None:
    """Decode every label file (in a thread pool) and refuse ids outside the table.

    Costs one decode per file: on the 2-core development machine, with synthetic palette masks of large
    regions, about 0.4 ms per 500x375 mask and 3-4 ms per 1024x2048 one (finer masks decode slower). Meant for
    datasets whose class list the user typed, where a wrong class count would silently train garbage.

    Args:
        labels: the label files.
        read: label file -> uint8 [H, W] ids (`read_label`, or a `ColorLabels`, which refuses unknown colours).
        known: bool [256], the ids the dataset defines (its classes and void).
        where: the split, for the message.
        expected: what the ids should be, for the message.

    Raises:
        UserError: naming the first file holding unknown ids (in the order given), the ids with their
            pixel counts, and how many other files hold some.
    """
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = [(label, bad) for label, bad in zip(labels, pool.map(lambda p: unknown_ids(read(p), known), labels),
                                                     strict=True) if bad]  # fmt: skip
    if found:
        label, bad = found[0]
        others = f"; {len(found) - 1} more of its {len(labels)} label files hold such ids too" if len(found) > 1 else ""
        raise UserError(
            f"{where}: {label} holds class ids beyond the class list: {describe_ids(bad)}{others}. Expected {expected}."
        )
