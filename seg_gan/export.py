"""`python -m seg_gan export --ckpt_path CKPT [--format onnx] [--output FILE]`: the generator as ONNX.

One self-contained file (graph and weights together, no side `.data` file), so the `.onnx` alone can
be copied to another machine. Batch, height and width are dynamic (height and width multiples of 32,
as smp encoders need). Before the file takes its name it is run with onnxruntime at two other batch
sizes and image sizes than the export example and compared with PyTorch; an architecture whose graph
does not work at other sizes (PSPNet and UPerNet: their pyramid pooling bins are fixed at export) is
refused with a UserError and nothing is left behind. Needs the `export` extra
(`pip install -e ".[export]"`; included in `dev`).
"""

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seg_gan.checkpoint import load_model
from seg_gan.errors import UserError

EXAMPLE = (2, 3, 256, 512)  # batch 2: with batch 1, torch.export specialises Segformer and UPerNet to 1
CHECKS = ((1, 3, 160, 288), (3, 3, 224, 384))  # other batch, height and width than EXAMPLE; >= 128 for PAN
TOLERANCE = 1e-3  # max abs logit difference, relative to the largest PyTorch logit (seen: below 1e-5)
# protobuf cannot serialise a message over 2 GiB; larger weights would need a side file
MAX_WEIGHT_BYTES = 2**31 - 2**26
# measured with resnet18 (torch 2.14, onnxruntime 1.32); the check below detects them whatever the list says
NOT_EXPORTABLE = ("PSPNet", "UPerNet")


def export_onnx(generator: nn.Module, output: Path, name: str | None = None) -> float:
    """Write `generator` (image (N, 3, H, W) -> logits (N, C, H, W)) to `output` as one ONNX file.

    The graph is written to `<output>.partial`, run with onnxruntime on CHECKS and compared with
    PyTorch, and only then renamed to `output` (replacing an existing file). Returns the max abs
    logit difference over CHECKS.

    Raises:
        UserError: `output` is a folder or cannot be written; the weights exceed what one file holds;
            the architecture (`name`, default the class name) cannot be exported with dynamic sizes
            (export error, onnxruntime error, or a wrong result at a check size). Nothing is left
            behind: no `.partial`, no `.data`, no folder created here.
    """
    import onnx
    import onnxruntime

    name = name or type(generator).__name__
    output = Path(output)
    check_output(output)
    size = sum(t.numel() * t.element_size() for t in [*generator.parameters(), *generator.buffers()])
    if size > MAX_WEIGHT_BYTES:
        raise UserError(f"export: the weights of {name} take {size / 2**30:.1f} GiB, more than one ONNX file can "
                        "hold (2 GiB). Expected a smaller encoder.")  # fmt: skip
    generator = generator.eval()
    partial = output.with_name(output.name + ".partial")
    created = [p for p in [output.parent, *output.parent.parents] if not p.exists()]
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        program = _export(generator, name)
        onnx.save_model(program.model_proto, str(partial), save_as_external_data=False)  # weights inside
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # failures come back as exceptions, reported below in one line
        session = onnxruntime.InferenceSession(str(partial), options, providers=["CPUExecutionProvider"])
        difference = max(_compare(session, generator, shape, name) for shape in CHECKS)
        partial.replace(output)
    except BaseException:  # also KeyboardInterrupt: never leave a half-checked file
        for leftover in (partial, partial.with_name(partial.name + ".data")):
            leftover.unlink(missing_ok=True)
        for folder in created:  # innermost first; only what this call created, and only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return difference


def check_output(output: Path) -> None:
    """UserError when `output` is a folder or its folder cannot be created or written into."""
    from seg_gan.cli import check_writable

    if output.is_dir():
        example = str(output / "generator.onnx")
        raise UserError(f"--output: {str(output)!r} is a folder. Expected a file name, e.g. {example!r}.")
    check_writable("--output", str(output.parent))


def _unsupported(name: str, problem: str) -> UserError:
    return UserError(
        f"export: {name} cannot be exported to ONNX with dynamic height and width ({problem}). "
        f"Architectures known not to export: {', '.join(NOT_EXPORTABLE)}; the others export with resnet18. "
        "Expected a checkpoint of another model.arch, or run the PyTorch checkpoint with `predict`."
    )


def _export(generator: nn.Module, name: str):
    batch = torch.export.Dim("batch", min=1, max=1024)
    rows, cols = torch.export.Dim("rows", min=1, max=256), torch.export.Dim("cols", min=1, max=256)
    # torch.export logs each violated shape constraint at ERROR level before raising; the raise is enough
    quiet = [logging.getLogger(n) for n in ("torch._guards", "torch.fx.experimental.symbolic_shapes")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.CRITICAL)
        with torch.no_grad():
            return torch.onnx.export(generator, (torch.randn(*EXAMPLE),), None, input_names=["image"],
                                     output_names=["logits"], dynamic_shapes=({0: batch, 2: 32 * rows, 3: 32 * cols},),
                                     dynamo=True, verbose=False)  # fmt: skip
    except Exception as error:  # torch.export's errors span many types; all mean "this model cannot"
        summary = str(error).split("## Exception summary", 1)[-1].strip().splitlines() or [type(error).__name__]
        raise _unsupported(name, f"torch.onnx.export failed: {summary[0]}") from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _compare(session, generator: nn.Module, shape: tuple[int, ...], name: str) -> float:
    image = torch.randn(*shape)
    with torch.no_grad():
        expected = generator(image).numpy()
    size = f"batch {shape[0]} at {shape[2]}x{shape[3]}, exported at {EXAMPLE[2]}x{EXAMPLE[3]}"
    try:
        (logits,) = session.run(None, {"image": image.numpy()})
    except Exception as error:
        raise _unsupported(name, f"onnxruntime fails on {size}: {str(error).splitlines()[0]}") from None
    if logits.shape != expected.shape:
        raise _unsupported(name, f"onnxruntime gives logits of shape {logits.shape} for {expected.shape} on {size}")
    difference = float(np.abs(logits - expected).max())
    if not difference <= TOLERANCE * max(1.0, float(np.abs(expected).max())):  # `not <=`: NaN fails too
        raise _unsupported(name, f"logits differ from PyTorch by up to {difference:.2g} on {size}")
    return difference


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m seg_gan export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="checkpoint saved by fit")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--output", type=Path, help="output file (default: the checkpoint path with .onnx)")
    options = parser.parse_args(args)
    output = options.output or options.ckpt_path.with_suffix(".onnx")
    check_output(output)  # before the checkpoint is read: a bad --output fails at once
    model = load_model(options.ckpt_path, name="--ckpt_path")
    name = f"model.arch {model.hparams.arch!r} (encoder {model.hparams.encoder_name!r})"
    try:
        difference = export_onnx(model.generator, output, name)
    except ImportError as error:
        raise UserError(f'ONNX export needs the export extra: pip install -e ".[export]" ({error}).') from None
    checks = ", ".join(f"batch {n} at {h}x{w}" for n, _, h, w in CHECKS)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB, self-contained); max abs logit difference to "
          f"PyTorch (onnxruntime, {checks}): {difference:.2e}", file=sys.stdout)  # fmt: skip
