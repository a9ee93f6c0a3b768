"""Prediction files and agreement with the official Cityscapes evaluation (cityscapesscripts, not mocked)."""

import csv
import re
import shutil
import typing
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
from cityscapesscripts.helpers.labels import id2label
from conftest import write_cityscapes
from onnx.external_data_helper import uses_external_data
from PIL import Image
from test_cli import tiny_args

from seg_gan.cli import main
from seg_gan.errors import UserError
from seg_gan.export import NOT_EXPORTABLE, export_onnx
from seg_gan.inference import predict_logits, sliding
from seg_gan.models import build_generator
from seg_gan.models.generator import Arch
from seg_gan.module import SegGAN


def args(root, out, *extra):
    return tiny_args(root, out, "--model.g_optimizer", "adam", "--model.g_lr", "0.001", *extra)


@pytest.mark.slow
def test_val_miou_agrees_with_the_official_cityscapes_evaluation(tmp_path):
    # every label id occurs (void ones included), 5 val images of 64x128
    root = write_cityscapes(tmp_path / "cs", {"train": 8, "val": 5}, size=(64, 128), scene="striped")
    for label in (root / "gtFine" / "val").rglob("*_labelIds.png"):  # add void ids 0-6 and rare classes
        ids = np.array(Image.open(label))
        ids[:4, :34] = np.arange(34)
        Image.fromarray(ids).save(label)
    main(["fit", *args(root, tmp_path / "fit", "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "0")])
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    main(["validate", *args(root, tmp_path / "val"), "--ckpt_path", str(checkpoint)])
    (path,) = (tmp_path / "val").rglob("metrics.csv")
    (ours,) = [float(row["val/mIoU"]) for row in csv.DictReader(path.open()) if row.get("val/mIoU")]
    out = tmp_path / "predictions"
    main(["predict", *args(root, tmp_path / "pred"), "--ckpt_path", str(checkpoint), "--writer.output_dir", str(out)])

    ground_truth = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    predictions = [out / "labelIds" / "val" / p.parent.name / p.name.replace("_gtFine_labelIds", "_labelIds")
                   for p in ground_truth]  # fmt: skip
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
    main(["fit", *args(cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "2", "--trainer.limit_val_batches",
                        "0")])  # fmt: skip
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    out = tmp_path / "predictions"
    out.mkdir()
    (out / "keep.png").write_bytes(b"x")
    with pytest.raises(SystemExit):
        main(["predict", *args(cityscapes_root, tmp_path / "p"), "--ckpt_path", str(checkpoint),
              "--writer.output_dir", str(out)])  # fmt: skip
    assert "already holds files" in capsys.readouterr().err and (out / "keep.png").read_bytes() == b"x"
    main(["predict", *args(cityscapes_root, tmp_path / "p"), "--ckpt_path", str(checkpoint),
          "--writer.output_dir", str(out), "--writer.overwrite", "true"])  # fmt: skip
    assert len(list((out / "trainIds").rglob("*.png"))) == 3


def test_sliding_window_covers_every_pixel_and_matches_whole_for_a_pointwise_model():
    pointwise = torch.nn.Conv2d(3, 4, 1)  # no context: windows must reproduce the whole-image output
    image = torch.randn(1, 3, 50, 70)
    whole = predict_logits(pointwise, image)
    windowed = sliding(pointwise, image, window=(32, 32), stride=(20, 25))
    assert torch.allclose(whole, windowed, atol=1e-6)
    flipped = predict_logits(pointwise, image, flip=True)
    assert torch.allclose(flipped, whole, atol=1e-6)  # a pointwise model is flip-equivariant


def fit_two_steps(root, out, *extra) -> Path:
    main(["fit", *args(root, out, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", *extra)])
    return next(out.rglob("last.ckpt"))


@pytest.mark.slow
def test_onnx_export_is_one_file_that_runs_alone_and_matches_pytorch(cityscapes_root, tmp_path, capsys):
    checkpoint = fit_two_steps(cityscapes_root, tmp_path / "fit")
    output = tmp_path / "export" / "generator.onnx"  # a folder that does not exist yet
    main(["export", "--ckpt_path", str(checkpoint), "--output", str(output)])
    printed = capsys.readouterr().out
    assert float(printed.rsplit("): ", 1)[1].split()[0]) < 1e-3  # the printed difference to PyTorch
    assert [p.name for p in output.parent.iterdir()] == ["generator.onnx"]  # no .partial, no .data
    graph = onnx.load(str(output), load_external_data=False)
    assert graph.graph.initializer and not any(uses_external_data(t) for t in graph.graph.initializer)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, height, width dynamic

    alone = tmp_path / "elsewhere"  # the .onnx copied on its own, as to another machine
    alone.mkdir()
    shutil.copy(output, alone / "model.onnx")
    output.unlink()
    session = onnxruntime.InferenceSession(str(alone / "model.onnx"), providers=["CPUExecutionProvider"])
    generator = SegGAN.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).generator.eval()
    for shape in [(1, 3, 32, 64), (2, 3, 96, 160)]:  # neither the export example's nor its checks' sizes
        image = torch.randn(*shape)
        (logits,) = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            expected = generator(image).numpy()
        assert logits.shape == (shape[0], 19, *shape[2:]) and np.abs(logits - expected).max() < 1e-3


@pytest.mark.slow
def test_export_of_an_architecture_without_dynamic_sizes(cityscapes_root, tmp_path, capfd):
    checkpoint = fit_two_steps(cityscapes_root, tmp_path / "fit", "--model.arch", "PSPNet")
    out = tmp_path / "export"
    out.mkdir()
    (out / "generator.onnx").write_bytes(b"an earlier export")
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(checkpoint), "--output", str(out / "generator.onnx")])
    err = capfd.readouterr().err  # file-descriptor level: torch's and onnxruntime's own logging too
    assert exit_info.value.code == 2
    assert err.startswith("error: export: model.arch 'PSPNet' (encoder 'resnet18') cannot be exported to ONNX "
                          "with dynamic height and width (onnxruntime fails on batch 1 at 160x288")  # fmt: skip
    assert len(err.strip().splitlines()) == 1 and "PSPNet, UPerNet" in err
    assert [p.name for p in out.iterdir()] == ["generator.onnx"]  # nothing left behind, nothing replaced
    assert (out / "generator.onnx").read_bytes() == b"an earlier export"


@pytest.mark.slow
@pytest.mark.parametrize("arch", typing.get_args(Arch))
def test_every_architecture_exports_or_is_refused_by_name(arch, tmp_path):
    # keeps NOT_EXPORTABLE (named in the error message and the README) equal to what really fails
    torch.manual_seed(0)
    generator = build_generator(arch, "resnet18", None, 19)
    output = tmp_path / "new" / "generator.onnx"
    if arch in NOT_EXPORTABLE:
        with pytest.raises(UserError, match=f"{arch} cannot be exported to ONNX with dynamic height and width"):
            export_onnx(generator, output)
        assert not (tmp_path / "new").exists()  # the folder it created is gone too
    else:
        assert export_onnx(generator, output) < 1e-3 and output.is_file()


def test_export_names_a_bad_checkpoint(tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    for path, expected in [(tmp_path / "missing.ckpt", "is not a file"), (broken, "could not be loaded")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt_path", str(path)])
        assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "broken.onnx").exists()


def test_export_to_a_folder_or_an_unwritable_place(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = [(tmp_path, "--output: '.*' is a folder. Expected a file name"),
             (blocker / "generator.onnx", "--output: cannot write into .* is a file, not a folder")]  # fmt: skip
    for output, expected in cases:  # refused before the checkpoint is even read
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--output", str(output)])
        assert exit_info.value.code == 2 and re.search(expected, capsys.readouterr().err), expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and blocker.read_text() == "not a folder"


def test_predict_on_a_folder_of_images_of_any_size(cityscapes_root, tmp_path):
    main(["fit", *args(cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "2", "--trainer.limit_val_batches",
                        "0")])  # fmt: skip
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))
    photos = tmp_path / "photos"
    (photos / "street").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(photos / "street" / "a.png")
    Image.fromarray(np.full((50, 60, 3), 128, np.uint8)).save(photos / "b.jpg")
    out = tmp_path / "out"
    main(["predict", *args(cityscapes_root, tmp_path / "p"), "--ckpt_path", str(checkpoint),
          "--data.predict_dir", str(photos), "--writer.output_dir", str(out)])  # fmt: skip
    assert np.array(Image.open(out / "trainIds" / "photos" / "street" / "a_trainIds.png")).shape == (40, 70)
    assert np.array(Image.open(out / "labelIds" / "photos" / "b_labelIds.png")).shape == (50, 60)
    assert np.array(Image.open(out / "color" / "photos" / "b_color.png")).shape == (50, 60, 3)


def test_evaluation_options_given_with_a_checkpoint_win(cityscapes_root, tmp_path, capsys):
    """Options that do not change the weights come from the command line, not from the checkpoint;
    options that would not fit the weights are refused, naming the checkpoint's value."""
    from seg_gan import SegGAN
    from seg_gan.data import CityscapesDataModule
    from seg_gan.metrics import scores

    main(["fit", *args(cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "4")])
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))

    def validate(name: str, *extra: str) -> float:
        main(["validate", *args(cityscapes_root, tmp_path / name), "--ckpt_path", str(checkpoint), *extra])
        (path,) = (tmp_path / name).rglob("metrics.csv")
        (miou,) = [float(row["val/mIoU"]) for row in csv.DictReader(path.open()) if row.get("val/mIoU")]
        return miou

    whole = validate("whole")
    slide = validate("slide", "--model.inference", "slide", "--model.window", "[32, 32]", "--model.stride", "[16, 16]")
    # the same sliding-window figure, computed without the CLI
    model = SegGAN.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).eval()
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0)
    data.setup("validate")
    confmat = torch.zeros(19, 19, dtype=torch.long)
    with torch.no_grad():
        for item in data.val_set:
            logits = predict_logits(model.generator, item["image"][None], mode="slide", window=(32, 32),
                                    stride=(16, 16))  # fmt: skip
            valid = item["mask"] != 255
            pairs = item["mask"][valid] * 19 + logits.argmax(1)[0][valid]
            confmat += torch.bincount(pairs, minlength=19 * 19).view(19, 19)
    assert slide != pytest.approx(whole, abs=1e-6)
    assert slide == pytest.approx(float(scores(confmat)["miou"]), abs=1e-6)
    capsys.readouterr()
    for extra, expected in [
        (["--model.window", "[0, 0]", "--model.inference", "slide"], "model.window [0, 0]"),
        (["--model.arch", "FPN"], "model.arch is 'FPN' here but 'Unet' in the checkpoint"),
        (["--model.lambda_adv", "0"], "model.lambda_adv is 0.0 here but 0.01 in the checkpoint"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(["validate", *args(cityscapes_root, tmp_path / "bad"), "--ckpt_path", str(checkpoint), *extra])
        assert stop.value.code == 2 and expected in capsys.readouterr().err, expected
