"""PASCAL VOC 2012 segmentation (Everingham et al.), optionally with the augmented training set of
Hariharan et al. 2011 (SBD), in the layout of the official download:

    VOCdevkit/                          data.root: this folder or its VOC2012/ folder
      VOC2012/
        JPEGImages/<name>.jpg
        SegmentationClass/<name>.png    palette PNGs: the index is the class (0-20), 255 void (object borders)
        ImageSets/Segmentation/train.txt (1,464 names), val.txt (1,449), [test.txt: VOC2012test.tar]
        SegmentationClassAug/<name>.png single-channel class ids (augmented: true only)
        ImageSets/Segmentation/train_aug.txt (10,582 names; augmented: true only, or data.train_aug_list)

The augmented labels and their list are not part of the VOC download; each codebase ships them its own
way (checked in their repositories): AdvSemiSeg (Hung et al. 2018, hfslyc/AdvSemiSeg) keeps stems in
its `dataset/voc_list/train_aug.txt` and reads every training label from `VOC2012/SegmentationClassAug/`;
DeepLab-ResNet (DrSleep/tensorflow-deeplab-resnet) lists `/JPEGImages/<n>.jpg /SegmentationClassAug/<n>.png`
in `dataset/train.txt`; UniMatch (LiheYoung/UniMatch) lists `JPEGImages/<n>.jpg SegmentationClass/<n>.png`
in `splits/pascal/train_aug.txt`, with its own pre-processed masks in place of SegmentationClass/;
mmsegmentation's `tools/dataset_converters/voc_aug.py` converts SBD's .mat files into
`VOC2012/SegmentationClassAug/` and writes `ImageSets/Segmentation/trainaug.txt` (10,582) and `aug.txt`
(the 9,118 outside train.txt). Here the list is looked for next to train.txt as `train_aug.txt` (then
mmsegmentation's `trainaug.txt`), or given by `train_aug_list`; any of the formats above is read
(`seg_gan.data.splits.read_names`), and the training set is train.txt united with the list, so
mmsegmentation's `aug.txt` gives the same 10,582. seg_gan ships the 10,582 names as
`configs/splits/voc_train_aug.txt`. The 1,464 official training images keep their official
SegmentationClass labels (as in mmsegmentation's voc12aug config; AdvSemiSeg reads all 10,582 from
SegmentationClassAug); the other 9,118 take SegmentationClassAug's. Validation is always the official 1,449.
"""

from pathlib import Path
from typing import Literal

import numpy as np

from seg_gan.data.base import IGNORE_INDEX, Sample, SegmentationDataModule
from seg_gan.data.labels import bit_colormap, palette_png
from seg_gan.data.splits import read_names
from seg_gan.errors import UserError

# VOCdevkit's VOCopts.classes, after class 0, background
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
VOC_PALETTE = bit_colormap(256)  # SegmentationClass's palette: class i has colour VOC_PALETTE[i], void 255 cream
AUG_LISTS = ("train_aug.txt", "trainaug.txt")  # where a train_aug list is looked for (seg_gan's, mmsegmentation's)
TREE = """Expected the official VOC 2012 layout (data.root = VOCdevkit or VOCdevkit/VOC2012):
  VOCdevkit/VOC2012/
    JPEGImages/<name>.jpg
    SegmentationClass/<name>.png
    ImageSets/Segmentation/train.txt, val.txt
    SegmentationClassAug/<name>.png and ImageSets/Segmentation/train_aug.txt   (data.augmented: true)"""


def locate_voc(root: str, augmented: bool) -> Path:
    """The VOC2012 folder under `root` (VOCdevkit or VOC2012 itself); UserError naming what is missing."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root: {str(path)!r} does not exist or is not a folder. {TREE}")
    if not (path / "JPEGImages").is_dir() and (path / "VOC2012").is_dir():
        path = path / "VOC2012"
    required = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] + ["SegmentationClassAug"] * augmented
    missing = [name for name in required if not (path / name).is_dir()]
    if missing:
        raise UserError(f"data.root: {str(path)!r} has no {missing[0]} folder. {TREE}")
    return path


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012: 21 classes, 255 void, validated on the official 1,449 val images.

    The classes are background and VOCdevkit's 20 object classes, with their official names and colours;
    255 (object borders) is void. Items as every data module's: `image` float [3, H, W], `mask` int64
    [H, W] (class 0-20, 255 void), `name` (the image id, e.g. 2007_000032), `city` "". Label ids other
    than 0-20 and 255 become void with a warning. `predict` writes `SegmentationClass/<split>/<name>.png`,
    palette PNGs of the class indices with VOC's palette (what the VOC evaluation server takes), beside
    trainIds/ and color/.

    Semi-supervised splits of the field ship in `configs/splits/` (`voc_unimatch_92.txt`, ...,
    `voc_cps_1-2.txt`, and seg_gan's seeded draws); see configs/splits/README.md. Use them with
    `--data.augmented true --data.labeled_list ...`: the unlabeled stream is the rest of the 10,582.

    Args:
        root: the VOCdevkit folder (holding VOC2012/) or VOCdevkit/VOC2012 itself.
        augmented: train on the 10,582 images of the augmented set (official train + SBD, Hariharan et
            al. 2011; labels from SegmentationClassAug/ except the 1,464 official ones) instead of the
            1,464 of ImageSets/Segmentation/train.txt. Validation is the official val either way.
        train_aug_list: list file of the augmented training images (stems or image paths, one per line);
            null = ImageSets/Segmentation/train_aug.txt (or mmsegmentation's trainaug.txt) under VOC2012.
        test_split: split used by `test` (VOC's test labels are withheld: `val`).
        predict_split: split used by `predict` (labels not read): `val`, `train`, or `test` after
            unpacking VOC2012test.tar into the same VOCdevkit.
        **kwargs: loader, augmentation and split settings of `SegmentationDataModule`.

    Raises:
        UserError: a root without the layout (naming the missing folder, with the expected tree), a
            missing list file, a train_aug list naming val images, and every file check of the data layer.
    """

    class_names = VOC_CLASSES
    class_colors = [tuple(color) for color in VOC_PALETTE[: len(VOC_CLASSES)].tolist()]
    default_crop_size = (321, 321)
    label_folder, label_suffix = "SegmentationClass", ".png"

    def __init__(
        self,
        root: str,
        augmented: bool = False,
        train_aug_list: str | None = None,
        test_split: Literal["val", "train"] = "val",
        predict_split: Literal["val", "train", "test"] = "val",
        **kwargs,
    ):
        self.root = locate_voc(root, augmented)
        super().__init__(**kwargs)
        self.augmented, self.test_split, self.predict_split = augmented, test_split, predict_split
        self.train_aug_list = self._aug_list(train_aug_list) if augmented else None
        self.lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        self.lookup[: len(VOC_CLASSES)] = np.arange(len(VOC_CLASSES))
        self.known = np.zeros(256, dtype=bool)
        self.known[[*range(len(VOC_CLASSES)), IGNORE_INDEX]] = True

    def _aug_list(self, given: str | None) -> Path:
        lists = self.root / "ImageSets" / "Segmentation"
        candidates = [Path(given).expanduser()] if given else [lists / name for name in AUG_LISTS]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            where = f"data.train_aug_list: {given!r} is not a file" if given else f"no {candidates[0]}"
            raise UserError(
                f"data.augmented: true, but {where}. Expected the list of the 10,582 augmented training images "
                "(one name or image path per line): seg_gan ships it as configs/splits/voc_train_aug.txt; copy "
                f"it to {candidates[0] if not given else lists / AUG_LISTS[0]} or pass --data.train_aug_list."
            )
        return found

    def names(self, split: str) -> list[str]:
        """The image names of ImageSets/Segmentation/<split>.txt; UserError if it is missing."""
        path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not path.is_file():
            hint = " (the test images and list come in VOC2012test.tar)" if split == "test" else ""
            raise UserError(f"split {split!r} of {self.root}: no list file {path}{hint}. {TREE}")
        return read_names(path)

    def find_samples(self, split: str) -> list[Sample]:
        names = self.names(split)
        official = set(names)
        if split == "train" and self.augmented:
            extra = read_names(self.train_aug_list)
            leaked = sorted(set(extra) & set(self.names("val")))
            if leaked:
                raise UserError(
                    f"data.train_aug_list: {str(self.train_aug_list)!r} names {len(leaked)} images of the val split "
                    f"(e.g. {leaked[:3]}); training on them would inflate val scores. Expected the 10,582-image "
                    "train_aug list, which excludes val."
                )
            names = sorted(official | set(extra))

        def label(name: str) -> Path:
            folder = "SegmentationClass" if name in official else "SegmentationClassAug"
            return self.root / folder / f"{name}.png"

        return [Sample(self.root / "JPEGImages" / f"{name}.jpg", label(name), name, "") for name in names]

    def label_image(self, train_ids: np.ndarray):
        """The class indices with VOC's palette: a SegmentationClass-style palette PNG (mode P)."""
        return palette_png(train_ids, VOC_PALETTE)
