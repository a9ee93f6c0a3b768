"""The LightningModule: generator G, discriminator D, the alternating D/G steps, and evaluation.

One training batch (manual optimisation, as in Lightning's GAN example):
  1. G forward, once for both steps: `GOutput` (labeled logits [B, C, H, W], softmax, and with the
     unlabeled stream the same for the unlabeled images).
  2. D step: real = encoded labels, fake = G's softmax maps (detached), one batched D forward, void
     pixels out of the loss; only D's parameters change.
  3. G step: cross-entropy + lambda_adv x adversarial term (+ the semi-supervised terms of
     `seg_gan.semi`), D frozen by `toggled_optimizer`; only G's parameters change.
  4. Poly learning-rate schedules, stepped once per batch.
`lambda_adv: 0` is the supervised baseline: no D is built, so step 2 and the adversarial terms vanish.
The loss maths are pure functions in `seg_gan.losses`; the checks that keep a run sane
(non-finite losses, D collapse) are in `seg_gan.guards`.
With two optimizers Lightning's `global_step` advances twice per batch; schedules count batches.
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from seg_gan import semi
from seg_gan.checkpoint import check_checkpoint_fits
from seg_gan.evaluation import SegmentationModule
from seg_gan.guards import StabilityGuard, check_options, prepare_strategy
from seg_gan.inference import InferenceMode, whole
from seg_gan.losses import (
    AdversarialLoss,
    RealEncoding,
    correctness_loss,
    correctness_target,
    cross_entropy,
    discriminator_accuracy,
    discriminator_loss,
    encode_real,
    flip_labels,
    generator_adversarial_loss,
    valid_mask,
)
from seg_gan.metrics import SegmentationMetrics
from seg_gan.models import build_discriminator, build_generator
from seg_gan.models.discriminators import DiscriminatorName
from seg_gan.models.generator import Arch
from seg_gan.speed import build_optimizer, compile_for_training, warn_if_slow_cpu_precision


@dataclass
class GOutput:
    """What one G forward made, shared by the D step and the G step of a batch."""

    image: torch.Tensor  # [B, 3, H, W] labeled images, normalised
    target: torch.Tensor  # [B, H, W] int64 train ids, ignore_index = void
    logits: torch.Tensor  # [B, C, H, W]
    probs: torch.Tensor  # [B, C, H, W] softmax
    u_image: torch.Tensor | None = None  # [Bu, 3, H, W] unlabeled images (semi-supervised)
    u_logits: torch.Tensor | None = None  # [Bu, C, H, W]
    u_probs: torch.Tensor | None = None  # [Bu, C, H, W]
    u_hidden: torch.Tensor | None = None  # [Bu, H, W] the unlabeled images' labels if on disk: diagnostics only


class SegGAN(SegmentationModule):
    """Adversarial semantic segmentation (Luc et al. 2016; Hung et al. 2018; Mittal et al. 2019).

    Args:
        num_classes: number of classes (linked from the data module).
        ignore_index: void label, ignored by loss, D and metrics (linked from the data module).
        class_names: class names for logs and the IoU table (linked from the data module).
        arch: segmentation-models-pytorch architecture of the generator.
        encoder_name: smp encoder, e.g. resnet18, resnet50, efficientnet-b0.
        encoder_weights: null (random init), 'imagenet' (downloaded by smp) or a local state-dict
            file for the encoder.
        discriminator: 'fcn' (Hung et al., per pixel), 'image' (one score per image, sees the RGB
            image), 'patch' (PatchGAN, sees the RGB image), or your own class via class_path; it is
            built as cls(num_classes, **init_args) and called as D(probs, image).
        spectral_norm: spectral normalisation in the built-in discriminators.
        adversarial_loss: 'bce' (non-saturating), 'lsgan' or 'hinge'.
        real_encoding: D's real samples: 'onehot' ground truth or Luc et al.'s 'scaling'.
        lambda_adv: weight of the adversarial term in G's loss; 0 = supervised baseline, no D built.
        g_optimizer: optimizer of G.
        g_lr: learning rate of G.
        g_momentum: SGD momentum of G (ignored by Adam/AdamW).
        g_weight_decay: weight decay of G.
        d_lr: learning rate of D (Adam).
        d_betas: Adam betas of D.
        lambda_semi_adv: weight of the adversarial loss on unlabeled images (semi-supervised).
        lambda_semi: weight of the self-training loss on unlabeled images (semi-supervised).
        mask_threshold: D confidence above which an unlabeled pixel's own argmax is a target (with an
            image-level D, as in s4GAN, the whole image's).
        semi_method: how unlabeled images train G (seg_gan/semi.py): 'hung' (Hung et al. 2018: adversarial
            term, self-training where D trusts G), 's4gan' (Mittal et al. 2019: feature matching, image-level
            selection; with the 'image' D), 'confidence' (self-training on G's own softmax, no D), 'cutmix'
            (French et al. 2020: CutMix mean teacher, no D; evaluation uses the teacher).
        discriminator_target: what D learns: 'real_fake' (ground truth vs G's maps) or 'correct' (per pixel,
            whether G's argmax is right: an error-predicting D, Ke et al. 2020; it sees the image too).
        d_dropout: Dropout2d after the first three convs of the fcn and image Ds (s4GAN as published: 0.5).
        ema_decay: decay of the mean teacher's exponential moving average (semi_method 'cutmix').
        cutmix_consistency: the cutmix loss: 'squared_error' (French et al. 2020 as published: softmax maps'
            squared error x confident share) or 'cross_entropy' (teacher's argmax on its confident pixels).
        lambda_fm: weight of s4GAN's feature-matching loss (semi_method 's4gan' only).
        semi_start: training batch (not optimizer step) from which the self-training loss is on.
        poly_power: poly schedule lr = base * (1 - batch / total_batches) ** power, for G and D.
        gradient_clip_val: clip G's and D's gradient norm to this value (null = off).
        channels_last: run G and D in the channels_last memory format (faster convolutions on
            recent GPUs and some CPUs).
        compile_models: torch.compile G's and D's training calls, static shapes, all compiled in the first
            batches; evaluation runs eagerly (seg_gan.speed.compile_for_training; checkpoint keys do not change).
        inference: validation/test/predict on the 'whole' image, or a sliding window ('slide') for
            models trained on crops.
        window: sliding window (height, width).
        stride: sliding window stride (height, width); overlapping logits are averaged.
        flip_tta: also run on the horizontally flipped image and average the logits.
        max_consecutive_skips: a non-finite G or D loss skips that optimizer step (counted in
            train/skipped_steps); this many skips in a row of one network stop the run with a message.
        d_every_n_batches: update D on every N-th batch only (1 = every batch).
        g_every_n_batches: update G on every N-th batch only (1 = every batch); with D every batch this
            is the "several D steps per G step" ratio. Other batches run G without gradients.
        label_flip: probability that a labeled image's real and fake maps swap roles in D's loss (noisy
            labels, a stabiliser when D wins too easily; 0 = off).
        instance_noise: std of Gaussian noise added to everything D sees (real and fake maps), a
            common stabiliser when D wins too easily (0 = off).
        collapse_patience: warn when D's accuracy on real vs fake stays above 99% or within 2
            points of 50% for this many batches in a row.
    """

    def __init__(
        self,
        num_classes: int = 19,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        arch: Arch = "Unet",
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        discriminator: DiscriminatorName | Callable[[int], nn.Module] = "fcn",
        spectral_norm: bool = False,
        adversarial_loss: AdversarialLoss = "bce",
        real_encoding: RealEncoding = "onehot",
        lambda_adv: float = 0.01,
        g_optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        g_lr: float = 2.5e-4,
        g_momentum: float = 0.9,
        g_weight_decay: float = 5e-4,
        d_lr: float = 1e-4,
        d_betas: tuple[float, float] = (0.9, 0.99),
        lambda_semi_adv: float = 0.001,
        lambda_semi: float = 0.1,
        mask_threshold: float = 0.2,
        semi_method: semi.Method = "hung",
        discriminator_target: Literal["real_fake", "correct"] = "real_fake",
        d_dropout: float = 0.0,
        ema_decay: float = 0.99,
        cutmix_consistency: Literal["squared_error", "cross_entropy"] = "squared_error",
        lambda_fm: float = 0.1,
        semi_start: int = 5000,
        poly_power: float = 0.9,
        gradient_clip_val: float | None = None,
        channels_last: bool = False,
        compile_models: bool = False,
        inference: InferenceMode = "whole",
        window: tuple[int, int] = (512, 1024),
        stride: tuple[int, int] = (341, 683),
        flip_tta: bool = False,
        max_consecutive_skips: int = 10,
        d_every_n_batches: int = 1,
        g_every_n_batches: int = 1,
        label_flip: float = 0.0,
        instance_noise: float = 0.0,
        collapse_patience: int = 500,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=[] if isinstance(discriminator, str) else ["discriminator"])
        check_options(self.hparams)
        self.automatic_optimization = False
        self.generator = build_generator(arch, encoder_name, encoder_weights, num_classes)
        self.discriminator: nn.Module | None = None  # the supervised baseline has none: nothing built or run
        if lambda_adv > 0 or semi_method == "s4gan":  # s4GAN needs D but has no adversarial term (lambda_adv 0)
            if isinstance(discriminator, str):  # built-in by name; else a class given by class_path
                discriminator = partial(build_discriminator, discriminator, spectral_norm=spectral_norm,
                                        dropout=d_dropout, use_image=discriminator_target == "correct")  # fmt: skip
            self.discriminator = discriminator(num_classes)
        semi.check_options(semi_method, discriminator_target, self.discriminator)
        # the mean teacher: an EMA of G that labels the unlabeled images and is what evaluation runs
        self.teacher = copy.deepcopy(self.generator).requires_grad_(False) if semi_method == "cutmix" else None
        self.evaluated = self.generator if self.teacher is None else self.teacher
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for network in filter(None, [self.generator, self.discriminator, self.teacher]):
            network.to(memory_format=self.memory_format)
            if compile_models:  # replaces the call only: parameters and state_dict keys stay
                compile_for_training(network)
        names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.val_metrics = SegmentationMetrics(names, ignore_index)  # evaluation: confusion matrix -> scores
        self.test_metrics = SegmentationMetrics(names, ignore_index)
        self.guard = StabilityGuard(max_consecutive_skips, collapse_patience)

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        g_opt, d_opt = self.optimizers() if self.discriminator is not None else (self.optimizers(), None)
        g_turn = d_opt is None or batch_idx % self.hparams.g_every_n_batches == 0
        with torch.set_grad_enabled(g_turn):  # no G step on this batch: D's fakes need no graph
            out = self.generator_forward(batch)
        if d_opt is not None and batch_idx % self.hparams.d_every_n_batches == 0:
            self.discriminator_step(d_opt, out)
        if g_turn:
            self.generator_step(g_opt, out)
        for scheduler in self.lr_schedulers() if d_opt is not None else [self.lr_schedulers()]:
            scheduler.step()

    def generator_forward(self, batch: dict) -> GOutput:
        """G on the labeled images and, with the unlabeled stream ({"labeled": ..., "unlabeled": ...}
        batches), on the unlabeled ones (cutmix runs G on their mix later, in seg_gan.semi)."""
        labeled, unlabeled = (batch["labeled"], batch["unlabeled"]) if "labeled" in batch else (batch, None)
        image = labeled["image"].contiguous(memory_format=self.memory_format)
        logits = whole(self.generator, image, self.memory_format)
        out = GOutput(image, labeled["mask"], logits, logits.softmax(1))
        if unlabeled is not None:
            semi.check_unlabeled(self.hparams.semi_method, self.discriminator)
            out.u_image = unlabeled["image"].contiguous(memory_format=self.memory_format)
            out.u_hidden = unlabeled.get("hidden_mask")
            if self.hparams.semi_method != "cutmix":
                out.u_logits = whole(self.generator, out.u_image, self.memory_format)
                out.u_probs = out.u_logits.softmax(1)
        return out

    def discriminator_step(self, d_opt, out: GOutput) -> None:
        """real_fake: real = encoded labels, fake = G's predictions (labeled and unlabeled; s4GAN: unlabeled
        only), all detached, in one D forward. correct: D learns where G's labeled argmax is right."""
        hp, batch = self.hparams, len(out.image)
        with self.toggled_optimizer(d_opt):  # G's parameters need no gradient here
            if hp.discriminator_target == "correct":
                d_logits = self.discriminator(self.noisy(out.probs.detach()), out.image)  # [B, 1, H, W]
                right, weight = correctness_target(out.logits, out.target, hp.ignore_index)
                loss_d = correctness_loss(d_logits, right, weight)
                health = discriminator_accuracy(d_logits, d_logits, right, weight - right)  # right vs wrong pixels
            else:
                fakes = [(out.u_probs.detach(), out.u_image)] if out.u_probs is not None else []
                if not (hp.semi_method == "s4gan" and fakes):  # s4GAN's D sees unlabeled predictions only
                    fakes.insert(0, (out.probs.detach(), out.image))
                real = encode_real(out.target, out.probs, hp.ignore_index, hp.real_encoding)  # [B, C, H, W]
                maps, images = torch.cat([real, *(f[0] for f in fakes)]), torch.cat([out.image, *(f[1] for f in fakes)])
                d_logits = self.discriminator(self.noisy(maps), images)  # one forward: [B + fakes, 1, ...]
                real_logits, fake_logits = d_logits[:batch], d_logits[batch:]
                real_weight = valid_mask(out.target, hp.ignore_index, real_logits)  # void of the labeled images
                fake_weight = torch.ones_like(fake_logits)  # unlabeled predictions: every pixel counts
                if fakes[0][1] is out.image:
                    fake_weight[:batch] = real_weight  # labeled predictions: the labels' void pixels do not
                flipped = flip_labels(real_logits, fake_logits, hp.label_flip)
                loss_d = discriminator_loss(*flipped, hp.adversarial_loss, real_weight, fake_weight)
                health = discriminator_accuracy(real_logits, fake_logits, real_weight, fake_weight)
            self.update(d_opt, loss_d, self.discriminator, "d")
        self.guard.watch_discriminator(health["d_accuracy"])  # on the device: no host-device synchronisation
        # loss_d / 2 = (real + fake) / 2: the scale Hung et al.'s code prints (0.2-0.5 called healthy there)
        self.log_dict({"train/loss_d": loss_d.detach(), "train/loss_d_hung_scale": loss_d.detach() / 2,
                       **{f"train/{k}": v for k, v in health.items()}})  # fmt: skip

    def generator_step(self, g_opt, out: GOutput) -> None:
        with self.toggled_optimizer(g_opt):  # D's parameters are frozen: gradients flow to G only
            # {log name: (weight, unweighted loss)}; cross-entropy is 0, not NaN, on an all-void batch
            terms = {"train/loss_ce": (1.0, cross_entropy(out.logits, out.target, self.hparams.ignore_index))}
            if self.discriminator is not None and self.hparams.lambda_adv > 0:
                fake_logits = self.discriminator(self.noisy(out.probs), out.image)
                weight = valid_mask(out.target, self.hparams.ignore_index, fake_logits)
                loss_adv = generator_adversarial_loss(fake_logits, self.hparams.adversarial_loss, weight)
                terms["train/loss_adv"] = (self.hparams.lambda_adv, loss_adv)
            if out.u_image is not None:
                batches_done = self.trainer.fit_loop.epoch_loop.total_batch_idx  # batches, not optimizer steps
                unlabeled, figures = semi.unlabeled_terms(self, out, batches_done)
                terms |= unlabeled
                self.log_dict(figures)
            loss_g = sum(weight * loss for weight, loss in terms.values())
            self.update(g_opt, loss_g, self.generator, "g")
        if self.teacher is not None:
            semi.ema_update(self.teacher, self.generator, self.hparams.ema_decay)
        self.guard.count_void_batch((out.target == self.hparams.ignore_index).all())
        self.log_dict({name: loss.detach() for name, (_, loss) in terms.items()})
        self.log_dict({"train/loss_g": loss_g.detach(), "train/void_batches": self.guard.void_batches})

    def update(self, optimizer, loss: torch.Tensor, network: nn.Module, which: str) -> None:
        """Backward, clip, step; a non-finite loss skips the step on every process alike (`StabilityGuard.skip`)."""
        batch = self.trainer.fit_loop.epoch_loop.total_batch_idx
        if not self.guard.skip(which, loss, batch, self.trainer.strategy, optimizer.optimizer):
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            grads = [p.grad for p in network.parameters() if p.grad is not None]
            self.log(f"train/grad_norm_{which}", torch.nn.utils.get_total_norm(grads))  # NaN on a device-side skip
            if self.hparams.gradient_clip_val is not None:
                self.clip_gradients(optimizer, self.hparams.gradient_clip_val, gradient_clip_algorithm="norm")
            optimizer.step()
        self.log("train/skipped_steps", self.guard.skipped_steps)

    def on_train_epoch_end(self) -> None:
        self.guard.check()  # the stop rule and the collapse warning, when they are read every N batches

    def noisy(self, maps: torch.Tensor) -> torch.Tensor:
        """Instance noise on D's inputs (training only)."""
        std = self.hparams.instance_noise
        return maps + std * torch.randn_like(maps) if std > 0 and self.training else maps

    def configure_optimizers(self):
        hparams = self.hparams
        g_class = {"sgd": partial(torch.optim.SGD, momentum=hparams.g_momentum), "adam": torch.optim.Adam,
                   "adamw": torch.optim.AdamW}[hparams.g_optimizer]  # fmt: skip
        optimizers = [build_optimizer(g_class, self.generator.parameters(), self.device, lr=hparams.g_lr,
                                      weight_decay=hparams.g_weight_decay)]  # fmt: skip
        if self.discriminator is not None:  # fused where torch has the kernels (seg_gan.speed)
            optimizers.append(build_optimizer(torch.optim.Adam, self.discriminator.parameters(), self.device,
                                              lr=hparams.d_lr, betas=tuple(hparams.d_betas)))  # fmt: skip
        total = self.total_batches()  # poly decay per batch; inf (no end set) keeps the rate constant
        poly = lambda batch: (1 - min(batch, total) / total) ** hparams.poly_power  # noqa: E731
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(optimizer, poly) for optimizer in optimizers]

    def total_batches(self) -> float:
        """Training batches in the whole run (what the poly schedule counts); `trainer.max_steps` counts
        optimizer steps, two per batch for a GAN, so it is halved."""
        total = self.trainer.estimated_stepping_batches
        if self.trainer.max_steps > 0:
            total = min(total, math.ceil(self.trainer.max_steps / (2 if self.discriminator is not None else 1)))
        return max(1, total)

    def setup(self, stage: str) -> None:
        prepare_strategy(self.trainer.strategy)  # DDP however it was chosen; other parallel strategies refused
        warn_if_slow_cpu_precision(self.trainer.strategy)  # bf16 asked of a CPU that emulates it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        try:
            resuming = self.trainer.state.fn == "fit"
        except RuntimeError:  # load_from_checkpoint: no Trainer attached
            resuming = False
        check_checkpoint_fits(checkpoint, self.state_dict(), dict(self.hparams), resuming)
