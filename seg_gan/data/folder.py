"""Your own data: a folder of images and a folder of masks matched by file stem, or list files.

    root/                              (every folder name is an argument; these are the defaults)
      images/train/<stem>.jpg|.png     masks/train/<stem>.png
      images/val/...                   masks/val/...
      [images/test/...                 masks/test/...]

- A split (`train`, `val`, `test`) is a subfolder of `images` and of `masks`, searched recursively (its
  subfolders are mirrored in the outputs; "." is the folder itself), or a list file (a `.txt` path,
  relative to root: one name per line, relative to `images` and `masks`, with or without extension).
- The mask of images/<split>/<sub>/<stem>.<ext> is masks/<split>/<sub>/<stem><mask_suffix>; with
  `image_suffix` only files ending in it are images, and <stem> is the name without it.
- `val: null`: a seeded `val_fraction` of train is held out (`choose_labeled`; the same on every
  machine), written to the run folder as val_split.txt beside labeled_split.txt.
- Masks (`mask_format`): `index`, PNG class ids (8-bit grayscale or palette: the index is the id);
  `color`, PNG colours, class i = `colors[i]`, `void_colors` void. `void_index` is the value of
  unlabelled pixels in index masks; `reduce_zero_label` reads 0 as unlabelled and 1..N as the N
  classes (ADE20K's ADEChallengeData2016: configs/ade20k.yaml).
- Classes: `classes` lists the names, or names a YAML file holding a list of names or a mapping
  name -> [R, G, B]; `colors` (or the file's) colour them, else the PASCAL VOC colour map.
- Class ids beyond the class list, and colours outside the table, are refused (a wrong class count
  would silently train garbage): at setup every mask used is decoded (`check_masks`; measured 0.4 ms per
  500x375 mask, see `check_label_values`), and again whenever an item is read.
- `predict` writes masks/<split>/<sub>/<stem><mask_suffix> in the masks' own format (the input's palette,
  grayscale ids (+1 with reduce_zero_label), or colours) beside trainIds/ and color/.

A five-line config:

    data:
      class_path: seg_gan.data.FolderDataModule
      init_args:
        root: /data/my_dataset
        classes: [background, crack, rust]
"""

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image

from seg_gan.data.base import IGNORE_INDEX, Sample, SegmentationDataModule, SegmentationDataset
from seg_gan.data.io import color_label_size
from seg_gan.data.labels import ColorLabels, bit_colormap, check_label_values, palette_png
from seg_gan.data.splits import IMAGE_EXTENSIONS, choose_labeled
from seg_gan.errors import UserError

Split = Literal["train", "val", "test"]
Color = tuple[int, int, int]


def load_classes(classes: list[str] | str, colors: list[Color] | None) -> tuple[list[str], list[Color] | None]:
    """(names, colours or None) from `data.classes` (a list, or a YAML file: a list of names or a mapping
    name -> [R, G, B]) and `data.colors`; UserError naming what is wrong."""
    if isinstance(classes, str):
        path = Path(classes).expanduser()
        if not path.is_file():
            raise UserError(f"data.classes: {classes!r} is not a file. Expected a list of class names, or a YAML "
                            "file holding one (or a mapping class name -> [R, G, B]).")  # fmt: skip
        content = yaml.safe_load(path.read_text())
        if isinstance(content, dict):
            classes, colors = list(content), colors or (list(content.values()) if all(content.values()) else None)
        else:
            classes = content
    if not isinstance(classes, list) or not classes or not all(isinstance(n, str | int) for n in classes):
        raise UserError(f"data.classes: {classes!r} is not a list of class names; expected e.g. [background, cat].")
    names = [str(name) for name in classes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"data.classes: {repeated[0]!r} is listed twice; expected each class name once.")
    if colors is not None:
        colors = [tuple(int(v) for v in color) for color in colors]
        if len(colors) != len(names) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
            raise UserError(f"data.colors: {len(colors)} colours for {len(names)} classes; expected one [R, G, B] "
                            "(each 0-255) per class, in the order of data.classes.")  # fmt: skip
    return names, colors


class FolderDataModule(SegmentationDataModule):
    """Any dataset of images and masks in folders (layout and rules: the docstring of seg_gan/data/folder.py).

    Args:
        root: the dataset folder; `images`, `masks` and list files are relative to it.
        classes: class names in id order, or a YAML file of them (optionally with colours).
        colors: class colours (R, G, B), one per class; required for `mask_format: color`.
        images: folder of the images, one subfolder per split.
        masks: folder of the masks, one subfolder per split (may be `images` itself, with a mask_suffix).
        train: training split: subfolder of images/ and masks/, or a .txt list file.
        val: validation split (folder or list file); null = hold out `val_fraction` of train.
        test: test split (folder or list file), or null.
        image_suffix: only files ending in it are images (e.g. _leftImg8bit.png); null = any .jpg, .jpeg, .png.
        mask_suffix: a mask's name is the image's stem + this (e.g. .png, _mask.png, _labelIds.png).
        mask_format: `index` (class ids: grayscale or palette PNG) or `color` (RGB PNG, one colour per class).
        void_index: value of unlabelled pixels in index masks (ignored by loss and scores).
        void_colors: colours of unlabelled pixels in colour masks.
        reduce_zero_label: index masks whose 0 means unlabelled and 1..N are the classes (ADE20K).
        val_fraction: share of train held out as val when `val` is null, in (0, 1).
        val_seed: seed of that hold-out.
        check_masks: decode every mask used at setup and refuse class ids (colours) outside the table.
        test_split: split used by `test`.
        predict_split: split used by `predict` (labels not read).
        **kwargs: loader, augmentation and split settings of `SegmentationDataModule`.

    Raises:
        UserError: a missing folder or list file (naming it, with the expected tree), a bad class list,
            colour table or void index, a name listed twice or without an image, a stem without a mask,
            sizes that differ, class ids or colours outside the table, an empty split.
    """

    default_crop_size = (512, 512)
    label_folder = "masks"
    refuse_unknown = True

    def __init__(
        self,
        root: str,
        classes: list[str] | str,
        colors: list[Color] | None = None,
        images: str = "images",
        masks: str = "masks",
        train: str = "train",
        val: str | None = "val",
        test: str | None = None,
        image_suffix: str | None = None,
        mask_suffix: str = ".png",
        mask_format: Literal["index", "color"] = "index",
        void_index: int = 255,
        void_colors: list[Color] | None = None,
        reduce_zero_label: bool = False,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        check_masks: bool = True,
        test_split: Split = "val",
        predict_split: Split = "val",
        **kwargs,
    ):
        self.root = Path(root).expanduser()
        self.images, self.masks = self.root / images, self.root / masks
        self.sources: dict[str, str | None] = {"train": train, "val": val, "test": test}
        self.image_suffix, self.label_suffix, self.mask_format = image_suffix, mask_suffix, mask_format
        self.reduce_zero_label, self.check_masks = reduce_zero_label, check_masks
        self.val_fraction, self.val_seed = val_fraction, val_seed
        self.class_names, colors = load_classes(classes, colors)
        self.class_colors = colors or [tuple(c) for c in bit_colormap(len(self.class_names)).tolist()]
        self.check_layout()
        self.set_tables(colors, void_index, void_colors or [])
        super().__init__(**kwargs)
        self.test_split, self.predict_split = test_split, predict_split
        self.val_names: list[str] = []

    def tree(self) -> str:
        train, val = self.sources["train"], self.sources["val"] or "(none: val_fraction of train)"
        images, masks, suffix = self.images.name, self.masks.name, self.image_suffix or ".jpg|.png"
        return "\n".join([
            "Expected this layout (data.images, data.masks, data.train, data.val, data.mask_suffix):",
            f"  {self.root}/",
            f"    {images}/{train}/<stem>{suffix}    {masks}/{train}/<stem>{self.label_suffix}",
            f"    {images}/{val}/...    {masks}/{val}/...",
            "(or list files, e.g. data.train: train.txt; data.val: null holds out data.val_fraction of train)",
        ])  # fmt: skip

    def check_layout(self) -> None:
        if not self.root.is_dir():
            raise UserError(f"data.root: {str(self.root)!r} does not exist or is not a folder. {self.tree()}")
        for split, source in self.sources.items():
            if source is None:
                continue
            if source.endswith(".txt"):
                if not (self.root / source).is_file():
                    raise UserError(f"data.{split}: list file {str(self.root / source)!r} does not exist. Expected "
                                    "a .txt file (relative to data.root) of image names, one per line.")  # fmt: skip
                folders = [self.images, self.masks]
            else:
                folders = [self.images / source, self.masks / source]
            for folder in folders:
                if not folder.is_dir():
                    raise UserError(f"data.{split}: {str(self.root)!r} has no {folder.relative_to(self.root)} "
                                    f"folder. {self.tree()}")  # fmt: skip
        if self.sources["val"] is None and not 0 < self.val_fraction < 1:
            raise UserError(f"data.val_fraction: {self.val_fraction} is outside (0, 1); expected e.g. 0.1 (data.val "
                            "is null, so this share of train is held out for validation).")  # fmt: skip

    def set_tables(self, colors: list[Color] | None, void_index: int, void_colors: list[Color]) -> None:
        count, offset = len(self.class_names), int(self.reduce_zero_label)
        self.lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        self.known = np.zeros(256, dtype=bool)
        if self.mask_format == "color":
            if colors is None or self.reduce_zero_label:
                raise UserError("data.mask_format: color needs data.colors (one [R, G, B] per class, or a classes "
                                "file mapping names to colours) and no data.reduce_zero_label.")  # fmt: skip
            self.label_reader, self.label_header = ColorLabels(colors, void_colors, IGNORE_INDEX), color_label_size
            self.lookup[:count] = np.arange(count)
            self.known[[*range(count), IGNORE_INDEX]] = True
            self.expected = "only the colours of data.colors and data.void_colors"
            return
        if count + offset > 255 or not 0 <= void_index <= 255 or offset <= void_index < count + offset:
            raise UserError(f"data.void_index: {void_index} with {count} classes (ids {offset}-{count + offset - 1}); "
                            "expected at most 255 ids and a void index 0-255 that is no class id.")  # fmt: skip
        self.lookup[offset : count + offset] = np.arange(count)
        self.known[[*range(count + offset), void_index]] = True
        zero = " (0 unlabelled: reduce_zero_label)" if offset else ""
        ids = f"ids {offset}-{count + offset - 1}"
        self.expected = f"{ids} for the {count} classes of data.classes{zero} and {void_index} void"

    def _stem(self, name: str) -> str:
        return name[: -len(self.image_suffix)] if self.image_suffix else Path(name).stem

    def _is_image(self, path: Path) -> bool:
        name = path.name
        return name.endswith(self.image_suffix) if self.image_suffix else path.suffix.lower() in IMAGE_EXTENSIONS

    def listed(self, split: str) -> list[Sample]:
        """The split's images with their mask paths, from its folder or list file (not checked yet)."""
        source = self.sources.get(split)
        if source is None:
            raise UserError(f"data.{split}: null, so there is no {split} split; expected a folder or list file "
                            "for it, or data.test_split / data.predict_split naming another split.")  # fmt: skip
        if source.endswith(".txt"):
            image_base, mask_base = self.images, self.masks
            images, missing = [], []
            suffixes = [self.image_suffix] if self.image_suffix else IMAGE_EXTENSIONS
            for line in (self.root / source).read_text().splitlines():
                if line.split():
                    entry = line.split()[0]
                    options = [entry] + [entry + suffix for suffix in suffixes]
                    found = next((image_base / o for o in options if (image_base / o).is_file()), None)
                    (images if found else missing).append(found or entry)
            if missing:
                raise UserError(f"data.{split}: {len(missing)} names of {source} have no image in {self.images} "
                                f"(e.g. {missing[:3]}); expected names of files there.")  # fmt: skip
        else:
            image_base, mask_base = self.images / source, self.masks / source
            same = image_base.resolve() == mask_base.resolve()
            images = sorted(p for p in image_base.rglob("*") if p.is_file() and self._is_image(p)
                            and not (same and p.name.endswith(self.label_suffix)))  # fmt: skip
        samples, seen = [], {}
        for image in images:
            stem, sub = self._stem(image.name), image.relative_to(image_base).parent
            if stem in seen:
                raise UserError(f"{image} and {seen[stem]} have the same name {stem!r}; expected one image per name "
                                "(names identify images in split lists).")  # fmt: skip
            seen[stem] = image
            city = "" if sub == Path(".") else sub.as_posix()
            samples.append(Sample(image, mask_base / sub / f"{stem}{self.label_suffix}", stem, city))
        return samples

    def find_samples(self, split: str) -> list[Sample]:
        if split in ("train", "val") and self.sources["val"] is None:
            train = self.listed("train")
            held = set(choose_labeled([s.name for s in train], self.val_fraction, None, self.val_seed))
            self.val_names = sorted(held)
            return [s for s in train if (s.name in held) == (split == "val")]
        return self.listed(split)

    def _labelled_set(self, samples: list[Sample], split: str, train: bool) -> SegmentationDataset:
        if self.check_masks:
            labels = [sample.label for sample in samples if sample.label is not None]
            where = f"split {split!r} of {self.root}"
            check_label_values(labels, self.label_reader, self.known, where, self.expected)
        return super()._labelled_set(samples, split, train)

    def label_image(self, train_ids: np.ndarray):
        """The prediction in the masks' format: colours, or ids (+1 with reduce_zero_label) in a palette PNG
        with the training masks' palette when they have one, else grayscale."""
        if self.mask_format == "color":
            return Image.fromarray(np.asarray(self.class_colors, np.uint8)[train_ids])
        ids = (train_ids + int(self.reduce_zero_label)).astype(np.uint8)
        if not hasattr(self, "mask_palette"):
            self.mask_palette = None
            first = next((s.label for s in self.listed("train") if s.label.is_file()), None)
            if first is not None:
                with Image.open(first) as mask:
                    self.mask_palette = np.array(mask.getpalette()).reshape(-1, 3) if mask.mode == "P" else None
        return Image.fromarray(ids) if self.mask_palette is None else palette_png(ids, self.mask_palette)
