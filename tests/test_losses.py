""""""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from seg_gan.losses import (
    box_mask,
    confidence_mask,
    correctness_loss,
    correctness_target,
    cross_entropy,
    discriminator_accuracy,
    discriminator_loss,
    encode_real,
    feature_matching_loss,
    flip_labels,
    generator_adversarial_loss,
    mask_precision,
    masked_cross_entropy,
    precision_at_coverage,
    pseudo_labels,
    squared_error_consistency,
    valid_mask,
)


def test_onehot_encoding_and_void_pixels():
    target = torch.tensor([[[0, 2], [255, 1]]])  # [1, 2, 2], one void pixel
    probs = torch.softmax(torch.randn(1, 3, 2, 2), 1)
    real = encode_real(target, probs, ignore_index=255)
    assert real.shape == (1, 3, 2, 2)
    assert torch.equal(real[0, :, 0, 0], torch.tensor([1.0, 0, 0]))
    assert torch.equal(real[0, :, 0, 1], torch.tensor([0, 0, 1.0]))
    # void pixel: not a class of its own; it copies G's prediction so D cannot use it as a tell
    assert torch.allclose(real[0, :, 1, 0], probs[0, :, 1, 0])
    weight = valid_mask(target, 255, torch.zeros(1, 1, 2, 2))
    assert weight.flatten().tolist() == [1, 1, 0, 1]


def test_scaling_encoding_is_a_distribution_with_true_class_at_least_tau():
    target = torch.randint(0, 5, (2, 4, 4))
    probs = torch.softmax(torch.randn(2, 5, 4, 4), 1)
    real = encode_real(target, probs, 255, encoding="scaling", scaling_tau=0.9)
    assert torch.allclose(real.sum(1), torch.ones(2, 4, 4), atol=1e-5)
    true = real.gather(1, target.unsqueeze(1)).squeeze(1)
    assert (true >= 0.9 - 1e-6).all()
    assert (true >= probs.gather(1, target.unsqueeze(1)).squeeze(1) - 1e-6).all()


@pytest.mark.parametrize("kind", ["bce", "lsgan", "hinge"])
def test_losses_prefer_the_right_side(kind):
    ones = torch.ones(2, 1, 4, 4)
    confident_right = discriminator_loss(3 * ones, -3 * ones, kind, ones, ones)
    confident_wrong = discriminator_loss(-3 * ones, 3 * ones, kind, ones, ones)
    assert confident_right < confident_wrong
    assert generator_adversarial_loss(3 * ones, kind, ones) < generator_adversarial_loss(-3 * ones, kind, ones)


def test_masked_pixels_do_not_count():
    logits = torch.zeros(1, 1, 2, 2)
    logits[0, 0, 0, 0] = 100.0  # a huge value at a masked pixel
    weight = torch.ones(1, 1, 2, 2)
    weight[0, 0, 0, 0] = 0
    masked = generator_adversarial_loss(logits, "lsgan", weight)
    assert masked == pytest.approx(1.0)  # (0 - 1)^2 on the three counted pixels


def test_bce_is_stable_for_extreme_logits():
    ones = torch.ones(1, 1, 2, 2)
    loss = discriminator_loss(1e4 * ones, -1e4 * ones, "bce", ones, ones)
    assert torch.isfinite(loss) and loss < 1e-6


def test_cross_entropy_by_hand_and_zero_with_a_gradient_on_an_all_void_batch():
    logits = torch.zeros(1, 2, 1, 3)  # 2 classes, 3 pixels
    logits[0, 1, 0, 0] = math.log(3)  # pixel 0: p = (1/4, 3/4)
    logits[0, 0, 0, 2] = 50.0  # pixel 2: a confident wrong answer, but void
    target = torch.tensor([[[1, 0, 255]]])
    # labelled pixels: -log(3/4) and -log(1/2), averaged over the two (the void one does not count)
    expected = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    assert cross_entropy(logits, target, 255).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(cross_entropy(logits, target, 255), F.cross_entropy(logits, target, ignore_index=255))
    void = torch.full((1, 1, 3), 255)
    assert torch.isnan(F.cross_entropy(logits, void, ignore_index=255))  # what the step used to get
    weights = torch.randn(1, 2, 1, 3, requires_grad=True)
    loss = cross_entropy(weights * 2, void, 255)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(weights.grad, torch.zeros_like(weights))  # a zero gradient, not NaN


def test_label_flip_swaps_real_and_fake_of_labeled_images_only():
    torch.manual_seed(0)
    real, fake = torch.zeros(2000, 1, 2, 2), torch.ones(2010, 1, 2, 2)  # 10 unlabeled fakes at the end
    new_real, new_fake = flip_labels(real, fake, 0.3)
    flipped = new_real[:, 0, 0, 0] == 1
    labeled_fake = new_fake[:2000]
    assert torch.equal(new_real[flipped], fake[:2000][flipped]) and torch.equal(labeled_fake[flipped], real[flipped])
    assert torch.equal(new_real[~flipped], real[~flipped])
    assert torch.equal(labeled_fake[~flipped], fake[:2000][~flipped])
    assert torch.equal(new_fake[2000:], fake[2000:])
    assert 0.27 < flipped.float().mean() < 0.33
    assert flip_labels(real, fake, 0.0)[0] is real  # off


def test_discriminator_accuracy_by_hand():
    real_logits = torch.tensor([2.0, -1.0, 3.0]).view(3, 1, 1, 1)  # 2 of 3 right (> 0)
    fake_logits = torch.tensor([-2.0, 1.0, 5.0]).view(3, 1, 1, 1)  # 1 of 3 right (< 0), the last masked out
    real_weight, fake_weight = torch.ones(3, 1, 1, 1), torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1, 1)
    health = discriminator_accuracy(real_logits, fake_logits, real_weight, fake_weight)
    assert float(health["d_accuracy"]) == pytest.approx(3 / 5)  # (2 + 1) right of 3 + 2 counted
    assert float(health["d_real"]) == pytest.approx(float(torch.sigmoid(torch.tensor([2.0, -1.0, 3.0])).mean()))
    assert float(health["d_fake"]) == pytest.approx(float(torch.sigmoid(torch.tensor([-2.0, 1.0])).mean()))


def test_confidence_mask_spreads_patch_and_image_scores_over_the_pixels():
    per_pixel = torch.tensor([[[[0.0, 2.0], [-2.0, 0.5]]]])  # sigmoid: 0.5, 0.88, 0.12, 0.62
    assert confidence_mask(per_pixel, 0.6, (2, 2)).tolist() == [[[False, True], [False, True]]]
    image_level = torch.tensor([3.0, -3.0]).view(2, 1, 1, 1)  # s4GAN: one score decides the whole image
    mask = confidence_mask(image_level, 0.5, (3, 4))
    assert mask.shape == (2, 3, 4) and mask[0].all() and not mask[1].any()


def test_pseudo_labels_are_the_argmax_where_trusted_and_void_elsewhere():
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]]])  # [1, 2 classes, 1, 2]: argmax 0, 1
    mask = torch.tensor([[[True, False]]])
    assert pseudo_labels(logits, mask, 255).tolist() == [[[0, 255]]]


def test_feature_matching_compares_batch_means_and_leaves_real_features_alone():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)  # mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 1.0]], requires_grad=True)  # mean (2, 1)
    loss = feature_matching_loss(real, fake)
    assert float(loss) == pytest.approx((0 + 2) / 2)
    loss.backward()
    assert real.grad is None and fake.grad is not None  # real maps only set the target


def test_correctness_target_marks_right_pixels_and_leaves_void_out():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 2.0, 0.0]]]])  # [1, 2 classes, 1, 3]: argmax 0, 1, 0
    target = torch.tensor([[[0, 0, 255]]])  # right, wrong, void
    right, weight = correctness_target(logits, target, 255)
    assert right.flatten().tolist() == [1, 0, 0] and weight.flatten().tolist() == [1, 1, 0]
    d_logits = torch.tensor([[[[0.0, 0.0, 100.0]]]])  # the void pixel's huge logit must not count
    expected = float(F.binary_cross_entropy_with_logits(torch.zeros(2), torch.tensor([1.0, 0.0])))
    assert float(correctness_loss(d_logits, right, weight)) == pytest.approx(expected)


def test_masked_cross_entropy_divides_by_every_pixel():
    logits = torch.zeros(1, 2, 1, 4)  # uniform: cross-entropy log 2 at every pixel
    mask = torch.tensor([[[True, True, False, False]]])
    loss = masked_cross_entropy(logits, torch.tensor([[[0, 1, 255, 255]]]), mask)
    assert float(loss) == pytest.approx(2 * math.log(2) / 4)  # 2 confident pixels of 4


def test_squared_error_consistency_is_frenchs_soft_loss_scaled_by_the_confident_share():
    logits = torch.zeros(1, 2, 1, 4)  # uniform student: softmax 0.5, 0.5 everywhere
    teacher = torch.tensor([1.0, 1.0, 0.5, 0.75]).view(1, 1, 1, 4)
    teacher = torch.cat([teacher, 1 - teacher], 1)  # [1, 2, 1, 4]
    mask = torch.tensor([[[True, True, False, False]]])  # only the first two pixels are confident
    # per pixel: 2 * (p - 0.5)^2 = 0.5, 0.5, 0, 0.125; mean 0.28125; times the confident share 2/4
    assert float(squared_error_consistency(logits, teacher, mask)) == pytest.approx(0.28125 * 0.5)
    assert float(squared_error_consistency(logits, teacher, torch.zeros_like(mask))) == 0.0


def test_box_mask_covers_about_half_of_each_image():
    masks = box_mask(64, (40, 60), 0.5, torch.Generator().manual_seed(0))
    assert masks.shape == (64, 1, 40, 60) and set(masks.unique().tolist()) == {0.0, 1.0}
    areas = masks.mean((1, 2, 3))
    assert (areas > 0.3).all() and (areas <= 0.55).all() and abs(float(areas.mean()) - 0.5) < 0.06
    rows = masks[:, 0].amax(2).sum(1)  # one box: its rows are contiguous
    assert torch.equal(rows * masks[:, 0].amax(1).sum(1), masks[:, 0].sum((1, 2)))


def test_mask_precision_and_precision_at_coverage_by_hand():
    hidden = torch.tensor([[[0, 1, 2, 255], [1, 1, 0, 0]]])  # 7 labelled pixels
    pseudo = torch.tensor([[[0, 0, 2, 3], [1, 0, 0, 1]]])  # right at 0, 2, 4, 6 (of the labelled)
    mask = torch.tensor([[[True, True, False, True], [True, False, False, True]]])  # 4 labelled masked
    precision, coverage = mask_precision(mask, pseudo, hidden, 255)
    assert float(precision) == pytest.approx(2 / 4) and float(coverage) == pytest.approx(4 / 7)
    confidence = torch.tensor([[[0.9, 0.1, 0.8, 1.0], [0.7, 0.2, 0.6, 0.3]]])  # top-4 labelled: 0.9, 0.8, 0.7, 0.6
    assert float(precision_at_coverage(confidence, pseudo, hidden, 4 / 7, 255)) == pytest.approx(4 / 4)
    assert torch.isnan(mask_precision(torch.zeros_like(mask), pseudo, hidden, 255)[0])
    void = torch.full_like(hidden, 255)  # no labelled pixel: nothing to count, not a coverage of 0
    assert all(torch.isnan(figure) for figure in mask_precision(mask, pseudo, void, 255))
    assert torch.isnan(precision_at_coverage(confidence, pseudo, void, float("nan"), 255))
    # ties with the last pixel taken (a saturated softmax): 2 of the 3 pixels at 1.0 taken, 2 of the 3 right
    tied = torch.tensor([[[1.0, 1.0, 1.0, 0.5]]])
    pseudo, hidden = torch.tensor([[[0, 1, 2, 0]]]), torch.tensor([[[0, 1, 0, 0]]])
    assert float(precision_at_coverage(tied, pseudo, hidden, 2 / 4, 255)) == pytest.approx(2 / 3)
    assert float(precision_at_coverage(tied, pseudo, hidden, 4 / 4, 255)) == pytest.approx(3 / 4)
    assert torch.isnan(precision_at_coverage(tied, pseudo, hidden, 0.0, 255))
    assert torch.isnan(precision_at_coverage(tied, pseudo, hidden, 0.125, 255))  # 0.5 pixel rounds to none
    unknown = torch.tensor([[[float("nan"), 1.0, 1.0, 0.5]]])  # a nan confidence has no place in the order
    assert torch.isnan(precision_at_coverage(unknown, pseudo, hidden, 2 / 4, 255))


def test_precision_at_coverage_is_the_precision_of_the_most_confident_labelled_pixels():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):  # distinct confidences: one set of most confident pixels, counted here by sorting
        confidence = torch.rand(2, 5, 6, generator=generator)
        pseudo, hidden = torch.randint(0, 3, (2, 2, 5, 6), generator=generator)
        hidden[torch.rand(2, 5, 6, generator=generator) < 0.3] = 255
        coverage = float(torch.rand((), generator=generator))
        valid = hidden != 255
        count = round(coverage * int(valid.sum()))
        order = confidence[valid].argsort(descending=True)[:count]
        expected = (pseudo[valid][order] == hidden[valid][order]).float().mean()
        found = precision_at_coverage(confidence, pseudo, hidden, torch.tensor(coverage), 255)
        assert torch.isnan(found) if count == 0 else float(found) == pytest.approx(float(expected))


class HostToDevice(TorchDispatchMode):
    """Records the ops that make a non-CPU tensor from host data: `.to(device)` copies (seen by the dispatcher)
    and `torch.tensor` / `torch.as_tensor` with a device (made below it, so watched as torch functions)."""

    def __init__(self):
        super().__init__()
        self.found, self.functions = [], HostTensorFunctions(self)

    def __enter__(self):
        self.functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.functions.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(t.device.type == "cpu" for t in tensors((args, kwargs))) and any(
            t.device.type != "cpu" for t in tensors(out)
        ):
            self.found.append(str(func))
        return out


class HostTensorFunctions(TorchFunctionMode):
    def __init__(self, watch: HostToDevice):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        device = (kwargs or {}).get("device")
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device).type != "cpu":
            self.watch.found.append(func.__name__)
        return func(*args, **(kwargs or {}))


def tensors(tree) -> list[torch.Tensor]:
    return [leaf for leaf in torch.utils._pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def semi_step_figures(device: str):
    """The semi-supervised step's own figures and CutMix pieces on tensors of `device`."""
    from seg_gan.semi import colour_jitter, diagnostics

    make = lambda dtype=torch.float32: torch.zeros(2, 6, 8, dtype=dtype, device=device)  # noqa: E731
    figures = diagnostics(make(torch.bool), make(torch.long), make(), make(torch.long), 255)
    boxes = box_mask(4, (6, 8), 0.5, torch.Generator().manual_seed(0), device=device)
    jittered = colour_jitter(torch.zeros(4, 3, 6, 8, device=device), 0.4)
    return figures, boxes, jittered


def test_the_semi_supervised_figures_read_nothing_back_from_the_device():
    # Every batch makes them; a value read on the host (float(), .item(), a boolean mask's nonzero) or a copy
    # from the host waits for the GPU's queued work. Meta tensors hold no values: any read fails.
    with HostToDevice() as watch:
        figures, boxes, jittered = semi_step_figures("meta")
    assert watch.found == [], f"host-to-device copies: {watch.found}"
    assert len(figures) == 3 and all(value.device.type == "meta" for value in figures.values())
    assert boxes.shape == (4, 1, 6, 8) and jittered.shape == (4, 3, 6, 8)
    with HostToDevice() as watch:  # the watch itself sees both kinds of copy
        torch.zeros(3).to("meta"), torch.tensor([0.5, 0.2], device="meta")
    assert watch.found == ["aten._to_copy.default", "tensor"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the real synchronisation check)")
def test_the_semi_supervised_figures_do_not_synchronise_on_a_gpu():
    semi_step_figures("cuda")  # first use: CUDA's own set-up may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        semi_step_figures("cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_mask_diagnostics_log_every_figure_every_batch():
    # a figure missing from one batch's log would repeat an earlier batch's value in the logger's row
    from seg_gan.semi import diagnostics

    hidden = torch.tensor([[[0, 1, 2, 255]]])
    pseudo, confidence = torch.tensor([[[0, 0, 2, 1]]]), torch.tensor([[[0.9, 0.8, 0.7, 0.6]]])
    keys = {"train/semi_mask_precision", "train/semi_mask_coverage", "train/softmax_mask_precision_same_coverage"}
    everywhere, nowhere = torch.ones_like(hidden, dtype=torch.bool), torch.zeros_like(hidden, dtype=torch.bool)
    full = diagnostics(everywhere, pseudo, confidence, hidden, 255)
    assert set(full) == keys and float(full["train/semi_mask_precision"]) == pytest.approx(2 / 3)
    assert float(full["train/semi_mask_coverage"]) == 1.0
    empty = diagnostics(nowhere, pseudo, confidence, hidden, 255)
    assert set(empty) == keys and float(empty["train/semi_mask_coverage"]) == 0.0
    assert torch.isnan(empty["train/semi_mask_precision"])
    assert torch.isnan(empty["train/softmax_mask_precision_same_coverage"])
    assert diagnostics(everywhere, pseudo, confidence, None, 255) == {}  # no labels on disk: nothing logged
