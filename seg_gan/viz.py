"""Pictures of images, masks and scores, for W&B media and the notebooks (matplotlib, numpy)."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from seg_gan.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def denormalize(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] ImageNet-normalised -> [H, W, 3] uint8."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.cpu() * std + mean).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()


def colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8 (viridis)."""
    return (matplotlib.colormaps["viridis"](values)[..., :3] * 255).astype(np.uint8)


def confusion_figure(confmat: torch.Tensor, class_names: list[str]):
    """Row-normalised confusion matrix (rows = ground truth) as a matplotlib figure."""
    counts = confmat.double()
    rates = (counts / counts.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = max(4, 0.35 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(class_names)), class_names, rotation=90)
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    axes.set_title("confusion (row-normalised)")
    figure.tight_layout()
    return figure


def palette(class_colors: list[tuple[int, int, int]]) -> np.ndarray:
    """uint8 [256, 3]: class id -> colour, black for void and unused ids (index it with a mask)."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(class_colors)] = np.asarray(class_colors, np.uint8)
    return table
