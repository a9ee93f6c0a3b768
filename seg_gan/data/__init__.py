from seg_gan.data.base import IGNORE_INDEX, SegmentationDataModule, SegmentationDataset
from seg_gan.data.camvid import CamVidDataModule
from seg_gan.data.cityscapes import CityscapesDataModule
from seg_gan.data.folder import FolderDataModule
from seg_gan.data.synthetic import SyntheticCityscapesDataModule
from seg_gan.data.voc import VOCDataModule

__all__ = [
    "IGNORE_INDEX", "SegmentationDataModule", "SegmentationDataset", "CamVidDataModule",
    "CityscapesDataModule", "FolderDataModule", "SyntheticCityscapesDataModule", "VOCDataModule",
]  # fmt: skip
