"""PASCAL VOC 2012 (seg_gan/data/voc.py): the official layout with and without the augmented set, palette
labels decoded to their indices, the shipped split lists, fit and predict from the CLI, and its refusals."""

import re
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO, fails_with, tiny_args, voc_ids, write_voc
from PIL import Image

from seg_gan.cli import main
from seg_gan.data import VOCDataModule
from seg_gan.data.io import read_label
from seg_gan.data.labels import bit_colormap
from seg_gan.data.splits import choose_labeled, read_names
from seg_gan.data.voc import VOC_CLASSES, VOC_PALETTE
from seg_gan.errors import UserError

SPLITS = REPO / "configs" / "splits"


def test_palette_labels_decode_to_their_indices_pixel_for_pixel(tmp_path):
    root = write_voc(tmp_path, train=2, val=2)
    data = VOCDataModule(str(root), num_workers=0)
    data.setup("validate")
    for index, sample in enumerate(data.val_set.samples):
        assert Image.open(sample.label).mode == "P"
        expected = voc_ids(40, 48, offset=2 + index)  # ids 0-20 and 255 (void borders), every one present
        assert set(np.unique(expected)) == {*range(21), 255}
        item = data.val_set[index]
        assert item["mask"].dtype == torch.int64 and np.array_equal(item["mask"].numpy(), expected)
        assert item["image"].shape == (3, 40, 48) and item["name"] == sample.name and item["city"] == ""
    assert data.num_classes == 21 and data.class_names[15] == "person" and data.class_names[-1] == "tvmonitor"
    assert data.class_colors[15] == (192, 128, 128) and data.class_colors[1] == (128, 0, 0)  # VOC's colours
    assert tuple(VOC_PALETTE[255]) == (224, 224, 192) and len({tuple(c) for c in bit_colormap()}) == 256


def test_root_is_vocdevkit_or_voc2012_and_a_wrong_root_shows_the_tree(tmp_path):
    root = write_voc(tmp_path, train=2, val=1)
    assert VOCDataModule(str(root)).root == VOCDataModule(str(root / "VOC2012")).root == root / "VOC2012"
    shutil.rmtree(root / "VOC2012" / "SegmentationClass")
    with pytest.raises(UserError, match=r"has no SegmentationClass folder\. Expected the official VOC 2012 layout"
                       r"(.|\n)*JPEGImages/<name>\.jpg"):  # fmt: skip
        VOCDataModule(str(root))
    with pytest.raises(UserError, match="has no SegmentationClassAug folder"):
        VOCDataModule(str(write_voc(tmp_path / "b", train=2, val=1)), augmented=True)


def test_augmented_training_set_is_train_plus_the_list_with_official_labels_first(tmp_path):
    root = write_voc(tmp_path, train=3, val=2, aug=4)  # SegmentationClassAug holds other ids for the train images too
    data = VOCDataModule(str(root), augmented=True, num_workers=0, crop_size=(32, 32))
    data.setup("fit")
    samples = data.train_set.samples
    assert len(samples) == 7 and len(data.val_set) == 2
    whole = data.dataset(samples, train=False)  # no crop: every label pixel for pixel
    for index, sample in enumerate(samples):
        official = sample.name in data.names("train")
        assert sample.label.parent.name == ("SegmentationClass" if official else "SegmentationClassAug")
        aug = np.array(Image.open(root / "VOC2012" / "SegmentationClassAug" / f"{sample.name}.png"))
        expected = voc_ids(40, 48, offset=index) if official else aug
        assert np.array_equal(whole[index]["mask"].numpy(), expected)
        assert official == (not np.array_equal(expected, aug))  # the official labels won over the Aug file


@pytest.mark.parametrize("style", ["stems", "deeplab-resnet", "unimatch", "mmseg aug.txt"])
def test_train_aug_lists_of_every_common_format_give_the_same_set(tmp_path, style):
    root = write_voc(tmp_path, train=3, val=2, aug=4)
    lists = root / "VOC2012" / "ImageSets" / "Segmentation"
    names = read_names(lists / "train_aug.txt")
    lines = {
        "stems": names,
        "deeplab-resnet": [f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" for n in names],
        "unimatch": [f"JPEGImages/{n}.jpg SegmentationClass/{n}.png" for n in names],
        "mmseg aug.txt": [n for n in names if n.startswith("2009")],  # the list without the official train
    }[style]
    given = tmp_path / "list.txt"
    given.write_text("\n".join(lines) + "\n")
    (lists / "train_aug.txt").unlink()
    data = VOCDataModule(str(root), augmented=True, train_aug_list=str(given), num_workers=0)
    assert sorted(s.name for s in data.samples("train")) == sorted(names)


def test_missing_or_leaking_train_aug_list_is_refused(tmp_path):
    root = write_voc(tmp_path, train=3, val=2, aug=2)
    lists = root / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").rename(tmp_path / "elsewhere.txt")
    with pytest.raises(UserError, match=r"no .*train_aug\.txt\. Expected the list of the 10,582 .*voc_train_aug\.txt"):
        VOCDataModule(str(root), augmented=True)
    (lists / "trainaug.txt").write_text("2007_000000\n2008_000001\n")  # mmsegmentation's name, found too
    data = VOCDataModule(str(root), augmented=True, num_workers=0)
    with pytest.raises(UserError, match=r"names 1 images of the val split \(e\.g\. \['2008_000001'\]\)"):
        data.setup("fit")


def test_missing_list_file_names_it(tmp_path):
    root = write_voc(tmp_path, train=2, val=1)
    with pytest.raises(UserError, match=r"split 'test' .* no list file .*test\.txt \(the test images"):
        VOCDataModule(str(root), num_workers=0).names("test")


# ---- the shipped lists: names only, each inside the list it was drawn from ---------------------------------
def names_of(file: str) -> list[str]:
    names = (SPLITS / file).read_text().split()
    assert len(names) == len(set(names)), file
    assert all(re.fullmatch(r"20(07|08|09|10|11)_\d{6}", n) for n in names), file
    return names


def test_shipped_voc_train_val_and_train_aug_lists():
    train, val, aug = names_of("voc_train.txt"), names_of("voc_val.txt"), names_of("voc_train_aug.txt")
    assert (len(train), len(val), len(aug)) == (1464, 1449, 10582)
    assert set(train) <= set(aug) and not set(aug) & set(val)


@pytest.mark.parametrize("file, count, source", [
    ("voc_unimatch_92.txt", 92, "voc_train.txt"), ("voc_unimatch_183.txt", 183, "voc_train.txt"),
    ("voc_unimatch_366.txt", 366, "voc_train.txt"), ("voc_unimatch_732.txt", 732, "voc_train.txt"),
    ("voc_unimatch_1-16.txt", 662, "voc_train_aug.txt"), ("voc_unimatch_1-8.txt", 1323, "voc_train_aug.txt"),
    ("voc_unimatch_1-4.txt", 2646, "voc_train_aug.txt"), ("voc_cps_1-2.txt", 5291, "voc_train_aug.txt"),
])  # fmt: skip
def test_shipped_published_voc_splits_lie_in_their_training_list(file, count, source):
    listed = names_of(file)
    assert len(listed) == count and set(listed) <= set(names_of(source))


@pytest.mark.parametrize("fraction, tag", [(1 / 16, "1-16"), (1 / 8, "1-8"), (1 / 4, "1-4"), (1 / 2, "1-2")])
def test_shipped_seeded_voc_splits_are_choose_labeled_draws(fraction, tag):
    train, aug = names_of("voc_train.txt"), names_of("voc_train_aug.txt")
    from_aug = names_of(f"voc_seed0_{tag}.txt")
    assert from_aug == choose_labeled(aug, fraction, seed=0) and len(from_aug) == round(fraction * 10582)
    from_train = choose_labeled(train, fraction, seed=0)
    assert names_of(f"voc_seed0_{len(from_train)}.txt") == from_train and len(from_train) == round(fraction * 1464)


def test_published_list_files_are_read_as_published(tmp_path):
    unimatch = tmp_path / "labeled.txt"  # UniMatch's splits/pascal/92/labeled.txt format
    unimatch.write_text("JPEGImages/2007_000733.jpg SegmentationClass/2007_000733.png\n\n")
    assert read_names(unimatch) == ["2007_000733"]
    assert set(names_of("voc_unimatch_92.txt")) <= set(names_of("voc_train.txt"))


# ---- fit and predict through the CLI -------------------------------------------------------------------------
def voc_args(root, out, *extra):
    return tiny_args(root, out, "--data.class_path", "seg_gan.data.VOCDataModule", "--data.crop_size", "[32, 32]",
                     "--model.g_optimizer", "adam", "--model.g_lr", "0.001", *extra)  # fmt: skip


def test_semi_supervised_fit_and_predict_write_voc_palette_pngs(tmp_path):
    root = write_voc(tmp_path / "data", train=4, val=2, aug=4)
    listed = tmp_path / "labeled.txt"
    listed.write_text("JPEGImages/2007_000000.jpg SegmentationClass/2007_000000.png\n2007_000001\n")
    semi = ["--data.augmented", "true", "--data.labeled_list", str(listed), "--data.unlabeled_stream", "true",
            "--data.batch_size", "2", "--model.semi_start", "0", "--trainer.max_steps", "4",
            "--trainer.num_sanity_val_steps", "0"]  # fmt: skip
    main(["fit", *voc_args(root, tmp_path / "fit", *semi)])
    assert (next((tmp_path / "fit").rglob("labeled_split.txt")).read_text().split()) == ["2007_000000", "2007_000001"]
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    out = tmp_path / "predictions"
    main(["predict", *voc_args(root, tmp_path / "p"), "--ckpt_path", str(checkpoint), "--writer.output_dir", str(out)])
    for name in ["2008_000000", "2008_000001"]:
        palette = Image.open(out / "SegmentationClass" / "val" / f"{name}.png")
        train_ids = np.array(Image.open(out / "trainIds" / "val" / f"{name}_trainIds.png"))
        assert palette.mode == "P" and palette.size == (48, 40)
        assert (out / "color" / "val" / f"{name}_color.png").is_file()
        assert np.array_equal(read_label(out / "SegmentationClass" / "val" / f"{name}.png"), train_ids)
        colors = np.array(palette.getpalette()).reshape(-1, 3)
        assert np.array_equal(colors[:256], VOC_PALETTE)  # VOC's own palette: the evaluation server's format
        assert np.array_equal(np.array(palette.convert("RGB")), VOC_PALETTE[train_ids])


def test_voc_config_names_the_classes(capsys):
    assert len(VOC_CLASSES) == 21
    args = ["fit", "--config", str(REPO / "configs" / "voc.yaml"), "--data.root", "/nonexistent/VOC"]
    fails_with(capsys, args, r"data\.root: '/nonexistent/VOC' does not exist or is not a folder\. Expected the")
