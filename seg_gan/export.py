"""`python -m seg_gan export --ckpt_path CKPT [--format onnx] [--output FILE]`: the generator as ONNX.

Height and width are dynamic (multiples of 32, as smp encoders need), so is the batch. The file is
checked against PyTorch with onnxruntime on a random image and the max abs logit difference printed.
Needs the `export` extra (`pip install -e ".[export]"`; included in `dev`).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from seg_gan.errors import UserError


def load_model(ckpt_path: Path):
    from seg_gan.module import SegGAN

    if not ckpt_path.is_file():
        raise UserError(f"--ckpt_path: {str(ckpt_path)!r} is not a file. Expected a checkpoint saved by `fit`.")
    try:
        return SegGAN.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=False).eval()
    except Exception as error:  # truncated zip, wrong format, foreign checkpoint, ...
        raise UserError(
            f"--ckpt_path: {str(ckpt_path)!r} could not be loaded as a seg_gan checkpoint ({error})."
        ) from None


def export_onnx(model, output: Path, height: int = 256, width: int = 512) -> float:
    """Write `output` atomically and return the max abs logit difference to PyTorch (onnxruntime)."""
    import onnxruntime

    example = torch.randn(1, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows, cols = torch.export.Dim("rows", min=1, max=256), torch.export.Dim("cols", min=1, max=256)
    partial = output.with_name(output.name + ".partial")
    with torch.no_grad():
        torch.onnx.export(model.generator, (example,), str(partial), input_names=["image"], output_names=["logits"],
                          dynamic_shapes=({0: batch, 2: 32 * rows, 3: 32 * cols},), dynamo=True)  # fmt: skip
    partial.replace(output)
    check = torch.randn(2, 3, height // 2, width)  # another batch and size than the example
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": check.numpy()})
    with torch.no_grad():
        torch_logits = model.generator(check).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m seg_gan export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint saved by fit")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--output", type=Path, help="output file (default: the checkpoint path with .onnx)")
    options = parser.parse_args(args)
    output = options.output or options.ckpt_path.with_suffix(".onnx")
    model = load_model(options.ckpt_path)
    try:
        difference = export_onnx(model, output)
    except ImportError as error:
        raise UserError(f'ONNX export needs the export extra: pip install -e ".[export]" ({error}).') from None
    print(f"wrote {output}; max abs logit difference to PyTorch (onnxruntime): {difference:.2e}", file=sys.stdout)
