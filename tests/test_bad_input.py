"""Bad-input rows of the README's table not covered in test_data.py / test_cli.py: checkpoints,
config files and output folders. Each: a clear message, exit status 2, existing files untouched."""

import re
from pathlib import Path

import pytest
from conftest import write_camvid
from test_cli import tiny_args

from seg_gan.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def trained(cityscapes_root, tmp_path) -> Path:
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "2")])
    return next((tmp_path / "fit").rglob("last.ckpt"))


def fails_with(capsys, args: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert re.search(expected, capsys.readouterr().err), expected


def test_corrupted_checkpoint(cityscapes_root, tmp_path, capsys, trained):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(trained.read_bytes()[:1000])  # a save cut short
    before = trained.read_bytes()
    fails_with(capsys, ["validate", *tiny_args(cityscapes_root, tmp_path / "v"), "--ckpt_path", str(broken)],
               r"ckpt_path: '.*broken.ckpt' could not be read as a checkpoint")  # fmt: skip
    fails_with(capsys, ["validate", *tiny_args(cityscapes_root, tmp_path / "v"), "--ckpt_path", str(tmp_path / "no")],
               r"ckpt_path: '.*no' is not a file")  # fmt: skip
    assert trained.read_bytes() == before


def test_checkpoint_of_another_number_of_classes(tmp_path, capsys, trained):
    camvid = write_camvid(tmp_path / "camvid", {"train": 4, "val": 2}, size=(32, 64))
    args = tiny_args(camvid, tmp_path / "v")
    args[args.index("seg_gan.data.CityscapesDataModule")] = "seg_gan.data.CamVidDataModule"
    fails_with(capsys, ["validate", *args, "--ckpt_path", str(trained)],
               "the checkpoint was trained for 19 classes, but the data has 11")  # fmt: skip


def test_config_naming_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2 and "missing.yaml" in capsys.readouterr().err


def test_unwritable_prediction_folder(cityscapes_root, tmp_path, capsys, trained):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["--ckpt_path", str(trained), "--writer.output_dir", str(blocker / "predictions")]
    fails_with(capsys, ["predict", *tiny_args(cityscapes_root, tmp_path / "p"), *args], "output_dir: cannot write")
    assert blocker.read_text() == "not a folder"


RUN_FOLDERS = ["--trainer.default_root_dir", "--trainer.logger.save_dir", "--checkpoint.dirpath"]


@pytest.mark.parametrize("argument", RUN_FOLDERS)
def test_unwritable_run_folder(cityscapes_root, tmp_path, capsys, argument):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [*tiny_args(cityscapes_root, tmp_path / "run"), argument, str(blocker / "runs")]
    fails_with(capsys, ["fit", *args], f"{argument[2:]}: cannot write into")
    assert blocker.read_text() == "not a folder" and not (tmp_path / "run").exists()


def test_readme_bad_input_table_points_at_real_tests():
    table = (REPO / "README.md").read_text().split("### Bad input", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`(test_\w+)`", table)
    assert len(names) >= 15
    source = "".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    for name in names:
        assert f"def {name}(" in source, name
