import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from PIL import Image
from torchvision import tv_tensors

from seg_gan.data import CamVidDataModule, CityscapesDataModule, SyntheticCityscapesDataModule
from seg_gan.data.splits import choose_labeled
from seg_gan.data.transforms import train_transform
from seg_gan.errors import UserError


def test_masks_follow_the_official_table_pixel_for_pixel(every_id_root):
    data = CityscapesDataModule(str(every_id_root), num_workers=0)
    data.setup("validate")
    for index, sample in enumerate(data.val_set.samples):
        ids = np.array(Image.open(sample.label))
        assert set(np.unique(ids)) == set(range(34))
        expected = np.vectorize(lambda i: id2label[i].trainId if 0 <= id2label[i].trainId < 255 else 255)(ids)
        item = data.val_set[index]
        assert item["mask"].dtype == torch.int64
        assert np.array_equal(item["mask"].numpy(), expected)
        assert item["image"].shape == (3, *ids.shape) and item["image"].dtype == torch.float32
        assert item["name"] == sample.name and item["name"].startswith(item["city"] + "_")
    assert data.num_classes == 19 and data.class_names[0] == "road" and data.class_names[-1] == "bicycle"


def test_camvid_maps_unlabelled_to_void(camvid_root):
    data = CamVidDataModule(str(camvid_root), num_workers=0)
    data.setup("validate")
    sample = data.val_set.samples[0]
    raw = np.array(Image.open(sample.label))
    mask = data.val_set[0]["mask"].numpy()
    assert np.array_equal(mask[raw < 11], raw[raw < 11]) and (mask[raw == 11] == 255).all()
    assert data.num_classes == 11 and data.val_set[0]["city"] == "0016E5"


def test_augmentation_keeps_image_and_mask_aligned():
    # class = column band; the image encodes the same band in its red channel
    height, width = 64, 96
    bands = (torch.arange(width) * 8 // width).expand(height, width)  # [H, W] values 0..7
    image = tv_tensors.Image((bands * 30).to(torch.uint8).expand(3, height, width).clone())
    mask = tv_tensors.Mask(bands.to(torch.uint8))
    transform = train_transform((48, 80), (0.5, 2.0), hflip=True, color_jitter=0.0, ignore_index=255)
    torch.manual_seed(0)
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        red = out_image[0] * 0.229 + 0.485  # undo the normalisation of the red channel
        valid = out_mask != 255
        assert valid.any()
        band_from_image = torch.round(red * 255 / 30)
        # away from band edges (where resizing blends colours) the image tells the mask's class
        interior = (
            valid & (band_from_image == band_from_image.roll(1, 1)) & (band_from_image == band_from_image.roll(-1, 1))
        )
        agree = (band_from_image[interior] == out_mask[interior].float()).float().mean()
        assert agree > 0.97


def test_padding_uses_void_when_the_scaled_image_is_small():
    image = tv_tensors.Image(torch.full((3, 20, 30), 200, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(20, 30, dtype=torch.uint8))
    out_image, out_mask = train_transform((40, 60), (1, 1), False, 0.0, 255)(image, mask)
    assert out_mask.shape == (40, 60) and (out_mask == 255).sum() == 40 * 60 - 20 * 30
    assert torch.allclose(out_image[0][out_mask == 255], torch.tensor(-0.485 / 0.229))  # padded with 0


def test_labeled_split_is_reproducible_and_disjoint(cityscapes_root, tmp_path):
    names = [f"img{i}" for i in range(40)]
    first, second = choose_labeled(names, 0.25, seed=3), choose_labeled(list(reversed(names)), 0.25, seed=3)
    assert first == second and len(first) == 10
    assert choose_labeled(names, 0.25, seed=4) != first
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0, crop_size=(32, 64), labeled_fraction=0.5)
    data.setup("fit")
    labeled = {s.name for s in data.train_set.samples}
    unlabeled = {s.name for s in data.unlabeled_samples}
    assert len(labeled) == 4 and len(unlabeled) == 4 and not labeled & unlabeled
    assert all(s.label is None for s in data.unlabeled_samples)
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(sorted(labeled)[:2]) + "\n")
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0, crop_size=(32, 64), labeled_list=str(listed))
    data.setup("fit")
    assert {s.name for s in data.train_set.samples} == set(sorted(labeled)[:2])


def test_synthetic_scenes_are_cityscapes_and_deterministic(tmp_path):
    one = SyntheticCityscapesDataModule(str(tmp_path / "a"), image_size=(64, 128), num_train=3, num_val=2)
    two = SyntheticCityscapesDataModule(str(tmp_path / "b"), image_size=(64, 128), num_train=3, num_val=2)
    assert not (tmp_path / "a").exists()  # drawn in prepare_data (once per node under DDP), not when built
    one.prepare_data()
    two.setup("validate")  # outside a Trainer, setup draws what prepare_data did not
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 10 and str(files[0]).startswith("gtFine/train/synthtown/synthtown_000000_000019")
    for path in files:
        assert np.array_equal(np.array(Image.open(tmp_path / "a" / path)), np.array(Image.open(tmp_path / "b" / path)))
    one.setup("fit")
    present = torch.unique(torch.cat([one.val_set[i]["mask"].flatten() for i in range(2)]))
    assert len(set(present.tolist()) - {255}) >= 6  # at least six classes drawn
    assert two.num_classes == 19


# ---- bad input: each names the path or value ------------------------------------------------------
def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="nowhere.*does not exist"):
        CityscapesDataModule(str(tmp_path / "nowhere"))


def test_root_without_layout(tmp_path):
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(UserError, match="has no gtFine folder"):
        CityscapesDataModule(str(tmp_path))


def test_empty_split(cityscapes_root):
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0)
    with pytest.raises(UserError, match="split 'test'.*holds no images"):
        data.samples("test")


def test_image_without_label(cityscapes_root):
    label = next((cityscapes_root / "gtFine" / "val").rglob("*_labelIds.png"))
    label.unlink()
    with pytest.raises(UserError, match=f"has no label file: expected .*{label.name}"):
        CityscapesDataModule(str(cityscapes_root), num_workers=0).setup("validate")


def test_size_mismatch(cityscapes_root):
    label = next((cityscapes_root / "gtFine" / "val").rglob("*_labelIds.png"))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(label)
    with pytest.raises(UserError, match="is 32x64 but its label .* is 10x10"):
        CityscapesDataModule(str(cityscapes_root), num_workers=0).setup("validate")


def test_truncated_png(cityscapes_root):
    image = next((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))
    image.write_bytes(image.read_bytes()[:60])
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0)
    data.setup("validate")
    index = [s.image for s in data.val_set.samples].index(image)
    with pytest.raises(UserError, match=f"{image.name} could not be decoded as an image"):
        data.val_set[index]


def test_not_a_png(cityscapes_root):
    image = next((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))
    image.write_bytes(b"hello")
    with pytest.raises(UserError, match=f"{image.name} is not a readable PNG"):
        CityscapesDataModule(str(cityscapes_root), num_workers=0).setup("validate")


def test_unknown_label_ids_become_void_with_a_warning(cityscapes_root):
    label = next((cityscapes_root / "gtFine" / "val").rglob("*_labelIds.png"))
    ids = np.array(Image.open(label))
    ids[:2] = 200
    Image.fromarray(ids).save(label)
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0)
    data.setup("validate")
    index = [s.label for s in data.val_set.samples].index(label)
    with pytest.warns(UserWarning, match="128 pixels have label ids outside"):
        mask = data.val_set[index]["mask"]
    assert (mask[:2] == 255).all()


def test_crop_larger_than_the_scaled_image(cityscapes_root):
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0, crop_size=(512, 1024), scale_range=(0.5, 2))
    with pytest.raises(UserError, match=r"crop_size: \[512, 1024\] is larger than the training images"):
        data.setup("fit")


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_labeled_fraction_outside_range(cityscapes_root, fraction):
    with pytest.raises(UserError, match=f"labeled_fraction: {fraction} is outside"):
        CityscapesDataModule(str(cityscapes_root), labeled_fraction=fraction)


def test_labeled_list_with_unknown_names(cityscapes_root, tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text("aachen_000000_000019\nmunich_999999_000019\n")
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0, crop_size=(32, 64), labeled_list=str(listed))
    with pytest.raises(UserError, match="names 1 images that are not in the training split.*munich_999999"):
        data.setup("fit")


@pytest.mark.parametrize("name, count", [("camvid_1-8", 46), ("camvid_1-4", 92), ("camvid_1-2", 184)])
def test_shipped_camvid_split_lists(name, count):
    path = Path(__file__).resolve().parents[1] / "configs" / "splits" / f"{name}.txt"
    names = path.read_text().split()
    assert len(names) == len(set(names)) == count  # round(fraction x 367) distinct images
    assert all(re.fullmatch(r"(0001TP|0006R0|0016E5|Seq05VD)_f?\d+", n) for n in names)


SPLITS = Path(__file__).resolve().parents[1] / "configs" / "splits"


@pytest.mark.parametrize("name, fraction, count", [("1-8", 0.125, 372), ("1-4", 0.25, 744), ("1-2", 0.5, 1488)])
def test_shipped_cityscapes_split_lists(name, fraction, count):
    train = (SPLITS / "cityscapes_train.txt").read_text().split()
    cities = {n.split("_")[0] for n in train}
    assert len(train) == len(set(train)) == 2975 and len(cities) == 18
    assert not cities & {"frankfurt", "lindau", "munster"}  # the val cities
    listed = (SPLITS / f"cityscapes_{name}.txt").read_text().split()
    assert len(listed) == count and set(listed) <= set(train)
    assert listed == choose_labeled(train, fraction, seed=0)  # = --data.labeled_fraction F --data.split_seed 0


def test_all_void_training_labels_are_refused_at_setup(cityscapes_root):
    labels = sorted((cityscapes_root / "gtFine" / "train").rglob("*_labelIds.png"))
    for label in labels:  # label id 0 ('unlabeled') everywhere: every pixel is void
        Image.fromarray(np.zeros((32, 64), np.uint8)).save(label)
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0, crop_size=(32, 64))
    with pytest.raises(UserError, match=r"split 'train' of .* \(its labeled images\): all 8 label files checked \(.*"
                       rf"{labels[0].name}.* and 5 more\) hold only void pixels"):  # fmt: skip
        data.setup("fit")


def test_all_void_validation_labels_are_refused_and_a_normal_split_reads_one_label(cityscapes_root):
    labels = sorted((cityscapes_root / "gtFine" / "val").rglob("*_labelIds.png"))
    for label in labels[1:]:  # only the first file is decoded: the others could not be
        label.write_bytes(label.read_bytes()[:60])  # (their headers are intact)
    CityscapesDataModule(str(cityscapes_root), num_workers=0).setup("validate")
    for label in labels:
        Image.fromarray(np.full((32, 64), 3, np.uint8)).save(label)  # 'out of roi': void
    with pytest.raises(UserError, match=r"split 'val' of .*: all 3 label files checked .* hold only void pixels"):
        CityscapesDataModule(str(cityscapes_root), num_workers=0).setup("validate")
