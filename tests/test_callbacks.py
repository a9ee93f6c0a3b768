"""Prediction files (and their agreement with the official Cityscapes evaluation, cityscapesscripts, not
mocked), the prediction folder's refusals."""

import csv

import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
from cityscapesscripts.helpers.labels import id2label
from conftest import fails_with, learning_args, tiny_args, write_cityscapes
from PIL import Image

from seg_gan.cli import main


@pytest.mark.slow
def test_val_miou_agrees_with_the_official_cityscapes_evaluation(tmp_path):
    # every label id occurs (void ones included), 5 val images of 64x128
    root = write_cityscapes(tmp_path / "cs", {"train": 8, "val": 5}, size=(64, 128), scene="striped")
    for label in (root / "gtFine" / "val").rglob("*_labelIds.png"):  # add void ids 0-6 and rare classes
        ids = np.array(Image.open(label))
        ids[:4, :34] = np.arange(34)
        Image.fromarray(ids).save(label)
    main(
        ["fit", *learning_args(root, tmp_path / "fit", "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "0")]
    )
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    main(["validate", *learning_args(root, tmp_path / "val"), "--ckpt_path", str(checkpoint)])
    (path,) = (tmp_path / "val").rglob("metrics.csv")
    (ours,) = [float(row["val/mIoU"]) for row in csv.DictReader(path.open()) if row.get("val/mIoU")]
    out = tmp_path / "predictions"
    main(
        [
            "predict",
            *learning_args(root, tmp_path / "pred"),
            "--ckpt_path",
            str(checkpoint),
            "--writer.output_dir",
            str(out),
        ]
    )

    ground_truth = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    predictions = [
        out / "labelIds" / "val" / p.parent.name / p.name.replace("_gtFine_labelIds", "_labelIds") for p in ground_truth
    ]
    assert all(p.is_file() for p in predictions)
    assert {np.array(Image.open(p)).shape for p in predictions} == {(64, 128)}  # full resolution
    assert all((out / kind / "val").rglob("*.png") for kind in ["trainIds", "color"])
    official.args.evalInstLevelScore = False
    official.args.JSONOutput = False
    official.args.quiet = True
    official.args.exportFile = str(tmp_path / "official.json")
    result = official.evaluateImgLists([str(p) for p in predictions], [str(p) for p in ground_truth], official.args)
    theirs = result["averageScoreClasses"]
    assert abs(ours - theirs) < 1e-4, (ours, theirs)
    assert 0 < ours < 1
    label_ids = {int(v) for p in predictions for v in np.unique(np.array(Image.open(p)))}
    assert all(id2label[i].trainId not in (255, -1) for i in label_ids)  # only real class label ids written


def test_predict_refuses_to_overwrite_and_reports_unwritable_folders(cityscapes_root, tmp_path, capsys):
    main(
        [
            "fit",
            *learning_args(
                cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"
            ),
        ]
    )
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "keep.png").write_bytes(b"x")
    with pytest.raises(SystemExit):
        main(
            [
                "predict",
                *learning_args(cityscapes_root, tmp_path / "p"),
                "--ckpt_path",
                str(checkpoint),
                "--writer.output_dir",
                str(out),
            ]
        )
    assert "already holds files" in capsys.readouterr().err and (out / "keep.png").read_bytes() == b"x"
    main(
        [
            "predict",
            *learning_args(cityscapes_root, tmp_path / "p"),
            "--ckpt_path",
            str(checkpoint),
            "--writer.output_dir",
            str(out),
            "--writer.overwrite",
            "true",
        ]
    )
    assert len(list((out / "trainIds").rglob("*.png"))) == 3


def test_unwritable_prediction_folder(cityscapes_root, tmp_path, capsys, trained):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["--ckpt_path", str(trained), "--writer.output_dir", str(blocker / "predictions")]
    fails_with(capsys, ["predict", *tiny_args(cityscapes_root, tmp_path / "p"), *args], "output_dir: cannot write")
    assert blocker.read_text() == "not a folder"


def test_predict_on_a_folder_of_images_of_any_size(cityscapes_root, tmp_path):
    main(
        [
            "fit",
            *learning_args(
                cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"
            ),
        ]
    )
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    photos = tmp_path / "photos"
    (photos / "street").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(photos / "street" / "a.png")
    Image.fromarray(np.full((50, 60, 3), 128, np.uint8)).save(photos / "b.jpg")
    out = tmp_path / "out"
    main(
        [
            "predict",
            *learning_args(cityscapes_root, tmp_path / "p"),
            "--ckpt_path",
            str(checkpoint),
            "--data.predict_dir",
            str(photos),
            "--writer.output_dir",
            str(out),
        ]
    )
    assert np.array(Image.open(out / "trainIds" / "photos" / "street" / "a_trainIds.png")).shape == (40, 70)
    assert np.array(Image.open(out / "labelIds" / "photos" / "b_labelIds.png")).shape == (50, 60)
    assert np.array(Image.open(out / "color" / "photos" / "b_color.png")).shape == (50, 60, 3)
