"""`python -m seg_gan export`: one self-contained ONNX file, checked with onnxruntime before it is named."""

import re
import shutil
import typing
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import learning_args
from onnx.external_data_helper import uses_external_data

from seg_gan import SegGAN
from seg_gan.cli import main
from seg_gan.errors import UserError
from seg_gan.export import NOT_EXPORTABLE, export_onnx
from seg_gan.models import build_generator
from seg_gan.models.generator import Arch


def fit_two_steps(root, out, *extra) -> Path:
    main(["fit", *learning_args(root, out, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", *extra)])
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
    for path, expected in [(tmp_path / "missing.ckpt", "is not a file"), (broken, "could not be read as a checkpoint")]:
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
