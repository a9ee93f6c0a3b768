"""Cityscapes in its official layout, read from `*_gtFine_labelIds.png` through the official table.

root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
"""

from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from seg_gan.data.base import IGNORE_INDEX, Sample, SegmentationDataModule, check_root

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
LAYOUT = (
    "the official Cityscapes layout: leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "gtFine/<split>/<city>/*_gtFine_labelIds.png"
)


def cityscapes_tables() -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[int, int, int]], np.ndarray]:
    """(lookup, known, class names, colours, label_ids) from cityscapesscripts' table: 34 ids -> 19
    train ids; label_ids maps train ids back to label ids (void -> 0, 'unlabeled') for submissions."""
    lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    train_classes = {}
    for label in CITYSCAPES_LABELS:
        if label.id < 0:  # 'license plate' has id -1: never stored in labelIds PNGs
            continue
        known[label.id] = True
        if 0 <= label.trainId < IGNORE_INDEX:
            lookup[label.id] = label.trainId
            train_classes[label.trainId] = (label.name, label.color)
    ordered = [train_classes[i] for i in range(len(train_classes))]
    label_ids = np.zeros(256, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        if 0 <= label.trainId < IGNORE_INDEX and label.id >= 0:
            label_ids[label.trainId] = label.id
    return lookup, known, [name for name, _ in ordered], [color for _, color in ordered], label_ids


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes (19 train classes, void = 255) from the official downloads unpacked into `root`.

    Args:
        root: folder holding `leftImg8bit/` and `gtFine/` (from leftImg8bit_trainvaltest.zip and
            gtFine_trainvaltest.zip).
        test_split: split used by `test`; Cityscapes' public `test` labels are placeholders, so `val`.
        predict_split: split used by `predict` (labels not read): `val`, or `test` for submissions.
        **kwargs: loader, augmentation and split settings of `SegmentationDataModule`.
    """

    def __init__(self, root: str, test_split: str = "val", predict_split: str = "val", **kwargs):
        self.root = self.locate(root)
        super().__init__(**kwargs)
        self.test_split, self.predict_split = test_split, predict_split
        self.lookup, self.known, self.class_names, self.class_colors, self.label_ids = cityscapes_tables()

    def locate(self, root: str) -> Path:
        """The dataset root, checked now (before anything runs): UserError naming what is missing."""
        return check_root(root, ["leftImg8bit", "gtFine"], LAYOUT)

    def find_samples(self, split: str) -> list[Sample]:
        folder = self.root / "leftImg8bit" / split
        samples = []
        for image in sorted(folder.glob(f"*/*{IMAGE_SUFFIX}")):
            name = image.name.removesuffix(IMAGE_SUFFIX)
            city = image.parent.name
            label = self.root / "gtFine" / split / city / f"{name}{LABEL_SUFFIX}"
            samples.append(Sample(image, label, name, city))
        return samples


def cityscapes_paths(root: Path, split: str, city: str, name: str) -> tuple[Path, Path]:
    """Where an image and its labelIds file live in the official layout."""
    image = root / "leftImg8bit" / split / city / f"{name}{IMAGE_SUFFIX}"
    label = root / "gtFine" / split / city / f"{name}{LABEL_SUFFIX}"
    return image, label
