"""Folder datasets (seg_gan/data/folder.py): every mask format decoded pixel for pixel, class lists from
the config or a file, split folders, list files and a seeded val hold-out, fit and predict from the CLI
with masks written back in their own format, and the refusals of bad input at setup."""

import pickle
import shutil

import numpy as np
import pytest
import yaml
from conftest import REPO, read_metrics, tiny_args, write_folder
from PIL import Image

from seg_gan.cli import main
from seg_gan.data import FolderDataModule
from seg_gan.data.io import read_label
from seg_gan.data.labels import bit_colormap
from seg_gan.data.splits import choose_labeled
from seg_gan.errors import UserError

CLASSES = ["background", "crack", "rust"]
COLORS = [(10, 20, 30), (200, 0, 0), (0, 200, 0)]
VOID_COLOR = (0, 0, 0)  # write_folder paints void (255) black in colour masks


def raw_ids(path):
    """The class ids a mask of write_folder holds (for colour masks: through COLORS, black = 255)."""
    image = Image.open(path)
    if image.mode != "RGB":
        return read_label(path)
    pixels = np.array(image)
    ids = np.full(pixels.shape[:2], 255, np.uint8)
    for index, color in enumerate(COLORS):
        ids[(pixels == color).all(-1)] = index
    return ids


@pytest.mark.parametrize("fmt", ["L", "P", "color"])
def test_every_mask_format_decodes_pixel_for_pixel(tmp_path, fmt):
    root = write_folder(tmp_path, {"train": 3, "val": 2}, fmt=fmt, colors=COLORS)
    extra = {"mask_format": "color", "colors": COLORS, "void_colors": [VOID_COLOR]} if fmt == "color" else {}
    data = FolderDataModule(str(root), classes=CLASSES, num_workers=0, crop_size=(32, 32), **extra)
    data.setup("fit")
    for index, sample in enumerate(data.val_set.samples):
        expected = raw_ids(sample.label)
        assert set(np.unique(expected)) == {0, 1, 2, 255}
        item = data.val_set[index]
        assert np.array_equal(item["mask"].numpy(), expected) and item["image"].shape == (3, 32, 40)
        assert item["name"] == sample.image.stem and item["city"] == ""
    assert data.num_classes == 3 and data.class_names == CLASSES and len(data.train_set) == 3
    assert data.class_colors == (COLORS if fmt == "color" else [tuple(c) for c in bit_colormap(3).tolist()])


def test_reduce_zero_label_and_another_void_index(tmp_path):
    root = write_folder(tmp_path, {"train": 2, "val": 2}, classes=4, void=9)  # ids 0..3, 9 void
    data = FolderDataModule(str(root), classes=["a", "b", "c"], reduce_zero_label=True, void_index=9, num_workers=0)
    data.setup("validate")
    raw = read_label(data.val_set.samples[0].label)
    mask = data.val_set[0]["mask"].numpy()
    assert (mask[raw == 0] == 255).all() and (mask[raw == 9] == 255).all()  # 0 unlabelled, 9 void
    assert np.array_equal(mask[(raw >= 1) & (raw <= 3)], raw[(raw >= 1) & (raw <= 3)] - 1)  # 1..3 -> classes 0..2


def test_classes_from_a_yaml_file_as_a_list_or_with_colours(tmp_path):
    root = write_folder(tmp_path / "data", {"train": 2, "val": 1}, fmt="color", colors=COLORS)
    names = tmp_path / "names.yaml"
    names.write_text(yaml.safe_dump(CLASSES))
    assert FolderDataModule(str(root), classes=str(names)).class_names == CLASSES
    table = tmp_path / "classes.yaml"
    table.write_text("".join(f"{n}: {list(c)}\n" for n, c in zip(CLASSES, COLORS, strict=True)))
    data = FolderDataModule(str(root), classes=str(table), mask_format="color", void_colors=[VOID_COLOR],
                            num_workers=0)  # fmt: skip
    data.setup("validate")
    assert data.class_colors == COLORS and np.array_equal(
        data.val_set[0]["mask"].numpy(), raw_ids(data.val_set.samples[0].label)
    )
    copy = pickle.loads(pickle.dumps(data.val_set))  # what loader workers get under the spawn start method
    assert np.array_equal(copy[0]["mask"].numpy(), data.val_set[0]["mask"].numpy())


def test_list_files_nested_folders_suffixes_and_masks_beside_images(tmp_path):
    root = tmp_path / "data"
    (root / "pics" / "site_a").mkdir(parents=True)
    for index in range(4):
        Image.fromarray(np.full((32, 32, 3), index * 40, np.uint8)).save(root / "pics" / "site_a" / f"p{index}.png")
        Image.fromarray(np.full((32, 32), index % 2, np.uint8)).save(root / "pics" / "site_a" / f"p{index}_mask.png")
    (root / "train.txt").write_text("site_a/p0\nsite_a/p1.png\nsite_a/p2\n")
    (root / "val.txt").write_text("site_a/p3\n")
    data = FolderDataModule(str(root), classes=["a", "b"], images="pics", masks="pics", train="train.txt",
                            val="val.txt", mask_suffix="_mask.png", num_workers=0, crop_size=(32, 32))  # fmt: skip
    data.setup("fit")
    assert [s.name for s in data.train_set.samples] == ["p0", "p1", "p2"] and data.val_set.samples[0].city == "site_a"
    folders = FolderDataModule(str(root), classes=["a", "b"], images="pics", masks="pics", train=".", val=None,
                               val_fraction=0.25, mask_suffix="_mask.png")  # fmt: skip
    assert sorted(s.name for s in folders.listed("train")) == ["p0", "p1", "p2", "p3"]  # masks are not images


def test_val_held_out_of_train_is_seeded_and_saved_in_the_run_folder(tmp_path):
    root = write_folder(tmp_path / "data", {"train": 10})
    data = FolderDataModule(str(root), classes=CLASSES, val=None, val_fraction=0.3, val_seed=1, num_workers=0,
                            crop_size=(32, 32))  # fmt: skip
    data.setup("fit")
    held = choose_labeled([f"img{i:03d}" for i in range(10)], 0.3, seed=1)
    assert data.val_names == held and [s.name for s in data.val_set.samples] == held
    assert len(data.train_set) == 7 and not {s.name for s in data.train_set.samples} & set(held)
    out = tmp_path / "run"
    main(["fit", *folder_args(root, out, "--data.val", "null", "--data.val_fraction", "0.3", "--data.val_seed", "1",
                              "--data.labeled_fraction", "0.5", "--data.unlabeled_stream", "true",
                              "--model.semi_start", "0", "--trainer.max_steps", "4")])  # fmt: skip
    assert next(out.rglob("val_split.txt")).read_text().split() == held
    labeled = next(out.rglob("labeled_split.txt")).read_text().split()
    assert len(labeled) == 4 and not set(labeled) & set(held)  # half of the 7 left for training
    rows = read_metrics(out)
    assert any(r.get("train/loss_semi") for r in rows) and any(r.get("train/semi_mask_ratio") for r in rows)


# ---- fit and predict through the CLI -------------------------------------------------------------------------
def folder_args(root, out, *extra):
    return tiny_args(root, out, "--data.class_path", "seg_gan.data.FolderDataModule", "--data.classes",
                     str(CLASSES), "--data.crop_size", "[32, 32]", "--data.batch_size", "2",
                     "--trainer.num_sanity_val_steps", "0", *extra)  # fmt: skip


@pytest.mark.parametrize("fmt", ["P", "color"])
def test_fit_and_predict_write_masks_in_the_datasets_own_format(tmp_path, fmt):
    root = write_folder(tmp_path / "data", {"train": 4, "val": 2}, fmt=fmt, colors=COLORS, mask_suffix="_m.png")
    extra = ["--data.mask_suffix", "_m.png"]
    if fmt == "color":
        extra += ["--data.mask_format", "color", "--data.colors", str([list(c) for c in COLORS]),
                  "--data.void_colors", str([list(VOID_COLOR)])]  # fmt: skip
    main(["fit", *folder_args(root, tmp_path / "fit", *extra, "--trainer.max_steps", "2")])
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    out = tmp_path / "predictions"
    main(["predict", *folder_args(root, tmp_path / "p", *extra), "--ckpt_path", str(checkpoint),
          "--writer.output_dir", str(out)])  # fmt: skip
    source = Image.open(root / "masks" / "train" / "img000_m.png")
    for index in range(2):
        train_ids = np.array(Image.open(out / "trainIds" / "val" / f"img{index:03d}_trainIds.png"))
        written = Image.open(out / "masks" / "val" / f"img{index:03d}_m.png")
        assert written.mode == source.mode and written.size == (40, 32)
        if fmt == "P":  # the input's palette, the class ids as indices
            assert written.getpalette() == source.getpalette()
            assert np.array_equal(read_label(out / "masks" / "val" / f"img{index:03d}_m.png"), train_ids)
        else:
            assert np.array_equal(np.array(written), np.array(COLORS, np.uint8)[train_ids])


def test_ade20k_config_is_a_folder_dataset_with_150_classes(tmp_path, capsys):
    config = yaml.safe_load((REPO / "configs" / "ade20k.yaml").read_text())["data"]
    names = config["init_args"]["classes"]
    assert config["class_path"] == "seg_gan.data.FolderDataModule" and config["init_args"]["reduce_zero_label"]
    assert len(names) == len(set(names)) == 150 and names[:3] == ["wall", "building", "sky"] and names[-1] == "flag"
    root = tmp_path / "ADEChallengeData2016"  # the official layout, two tiny images
    for split, prefix in [("training", "ADE_train"), ("validation", "ADE_val")]:
        for folder in ("images", "annotations"):
            (root / folder / split).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / split / f"{prefix}_00000001.jpg")
        Image.fromarray(np.arange(1600, dtype=np.uint16).reshape(40, 40).astype(np.uint8) % 151).save(
            root / "annotations" / split / f"{prefix}_00000001.png"
        )
    data = FolderDataModule(str(root), **{k: v for k, v in config["init_args"].items() if k != "root"})
    data.num_workers, data.persistent_workers = 0, False
    data.setup("validate")
    assert data.num_classes == 150 and set(data.val_set[0]["mask"].unique().tolist()) == {*range(150), 255}


# ---- bad input: each a UserError at setup, naming the file and what was expected -----------------------------
def test_folder_root_without_the_layout_names_the_folder_and_shows_the_tree(tmp_path):
    root = write_folder(tmp_path, {"train": 2})
    with pytest.raises(UserError, match=r"data\.val: .* has no images/val folder\. Expected this layout(.|\n)*"
                       r"images/train/<stem>\.jpg\|\.png +masks/train/<stem>\.png"):  # fmt: skip
        FolderDataModule(str(root), classes=CLASSES)
    with pytest.raises(UserError, match=r"data\.train: list file .*missing\.txt' does not exist"):
        FolderDataModule(str(root), classes=CLASSES, train="missing.txt", val=None)


def test_folder_mask_of_another_size(tmp_path):
    root = write_folder(tmp_path, {"train": 2, "val": 2})
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "val" / "img001.png")
    with pytest.raises(UserError, match=r"img001\.jpg is 32x40 but its label .*img001\.png is 10x12"):
        FolderDataModule(str(root), classes=CLASSES, num_workers=0).setup("validate")


def test_folder_class_ids_beyond_the_class_list_are_refused_at_setup(tmp_path):
    root = write_folder(tmp_path, {"train": 3, "val": 2}, classes=5)  # ids 0..4 in the masks
    with pytest.raises(UserError, match=r"split 'val' of .*: .*img000\.png holds class ids beyond the class list: "
                       r"3 \(\d+ pixels\), 4 \(\d+ pixels\); 1 more of its 2 label files hold such ids too\. "
                       r"Expected ids 0-2 for the 3 classes of data\.classes and 255 void"):  # fmt: skip
        FolderDataModule(str(root), classes=CLASSES, num_workers=0).setup("validate")
    data = FolderDataModule(str(root), classes=CLASSES, num_workers=0, check_masks=False)
    data.setup("validate")  # not decoded at setup: refused when an item meets it
    with pytest.raises(UserError, match=r"img000\.png holds class ids beyond the class list: 3 \(\d+ pixels\)"):
        data.val_set[0]


def test_folder_colour_not_in_the_table(tmp_path):
    root = write_folder(tmp_path, {"train": 2, "val": 1}, fmt="color", colors=COLORS)
    pixels = np.array(Image.open(root / "masks" / "val" / "img000.png"))
    pixels[:2, :3] = (1, 2, 3)
    Image.fromarray(pixels).save(root / "masks" / "val" / "img000.png")
    data = FolderDataModule(str(root), classes=CLASSES, colors=COLORS, void_colors=[VOID_COLOR],
                            mask_format="color", num_workers=0)  # fmt: skip
    with pytest.raises(UserError, match=r"img000\.png holds colours that are not in the class colour table: "
                       r"\(1, 2, 3\) in 6 pixels\. Expected only the colours of data\.colors"):  # fmt: skip
        data.setup("validate")


def test_folder_empty_split(tmp_path):
    root = write_folder(tmp_path, {"train": 2})
    (root / "images" / "val").mkdir()
    (root / "masks" / "val").mkdir()
    with pytest.raises(UserError, match=r"split 'val' of .* holds no images"):
        FolderDataModule(str(root), classes=CLASSES, num_workers=0).setup("validate")


def test_folder_stem_without_a_mask(tmp_path):
    root = write_folder(tmp_path, {"train": 2, "val": 2})
    (root / "masks" / "val" / "img001.png").unlink()
    with pytest.raises(UserError, match=r"img001\.jpg has no label file: expected .*masks/val/img001\.png"):
        FolderDataModule(str(root), classes=CLASSES, num_workers=0).setup("validate")


@pytest.mark.parametrize("arguments, expected", [
    ({"classes": ["a", "a"]}, r"data\.classes: 'a' is listed twice"),
    ({"classes": CLASSES, "colors": COLORS[:2]}, r"data\.colors: 2 colours for 3 classes"),
    ({"classes": CLASSES, "void_index": 1}, r"data\.void_index: 1 with 3 classes \(ids 0-2\)"),
    ({"classes": CLASSES, "mask_format": "color"}, r"data\.mask_format: color needs data\.colors"),
    ({"classes": CLASSES, "colors": [COLORS[0]] * 3, "mask_format": "color"}, r"colour \[10, 20, 30\] is given to"),
    ({"classes": CLASSES, "val": None, "val_fraction": 1.0}, r"data\.val_fraction: 1\.0 is outside \(0, 1\)"),
    ({"classes": str(REPO / "missing.yaml")}, r"data\.classes: .*missing\.yaml' is not a file"),
])  # fmt: skip
def test_folder_bad_class_tables_name_the_option(tmp_path, arguments, expected):
    root = write_folder(tmp_path, {"train": 2, "val": 1})
    with pytest.raises(UserError, match=expected):
        FolderDataModule(str(root), **arguments)


def test_folder_two_images_of_one_name_and_list_names_without_images(tmp_path):
    root = write_folder(tmp_path, {"train": 2, "val": 1})
    (root / "images" / "train" / "sub").mkdir()
    shutil.copy(root / "images" / "train" / "img000.jpg", root / "images" / "train" / "sub" / "img000.jpg")
    with pytest.raises(UserError, match=r"img000\.jpg and .*img000\.jpg have the same name 'img000'"):
        FolderDataModule(str(root), classes=CLASSES).listed("train")
    (root / "val.txt").write_text("val/img000\nnope\n")  # names relative to images/
    with pytest.raises(UserError, match=r"data\.val: 1 names of val\.txt have no image in .*\['nope'\]"):
        FolderDataModule(str(root), classes=CLASSES, val="val.txt").listed("val")
