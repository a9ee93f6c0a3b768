"""CamVid as distributed with SegNet: train/, trainannot/, val/, valannot/, [test/, testannot/].

480x360 PNGs; annotations hold 0-10 for the 11 classes below and 11 for Unlabelled (void).
"""

import numpy as np

from seg_gan.data.base import IGNORE_INDEX, Sample, SegmentationDataModule, check_root

CAMVID_CLASSES = [
    ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)), ("Pavement", (60, 40, 222)), ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)), ("Fence", (64, 64, 128)), ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
]  # fmt: skip
UNLABELLED = 11
LAYOUT = "the SegNet CamVid layout: train/, trainannot/, val/, valannot/ (optional test/, testannot/)"


class CamVidDataModule(SegmentationDataModule):
    """CamVid (11 classes, Unlabelled = void) in the SegNet layout under `root`.

    Args:
        root: folder holding train/, trainannot/, val/, valannot/ (optional test/, testannot/).
        test_split: split used by `test` (`val`, or `test` where it exists).
        predict_split: split used by `predict` (labels not read).
        **kwargs: loader, augmentation and split settings of `SegmentationDataModule`.
    """

    class_names = [name for name, _ in CAMVID_CLASSES]
    class_colors = [color for _, color in CAMVID_CLASSES]
    default_crop_size = (352, 480)

    def __init__(self, root: str, test_split: str = "val", predict_split: str = "val", **kwargs):
        self.root = check_root(root, ["train", "trainannot", "val", "valannot"], LAYOUT)
        super().__init__(**kwargs)
        self.test_split, self.predict_split = test_split, predict_split
        self.lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        self.lookup[: len(CAMVID_CLASSES)] = np.arange(len(CAMVID_CLASSES))
        self.known = np.zeros(256, dtype=bool)
        self.known[: UNLABELLED + 1] = True

    def find_samples(self, split: str) -> list[Sample]:
        samples = []
        for image in sorted((self.root / split).glob("*.png")):
            city = image.stem.split("_")[0]  # the video sequence, e.g. 0016E5
            samples.append(Sample(image, self.root / f"{split}annot" / image.name, image.stem, city))
        return samples
