"""Validation, test and predict batch whole images by size: eval_batch_size > 1 works on images of mixed
sizes, every image is seen exactly once, and the metrics do not depend on the batch size. Training epochs of
several passes give exactly the batches of as many one-pass epochs."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import SEMI, SIZES, fit_one_batch, mixed_cityscapes, snapshot, tiny_args
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import SequentialSampler

from seg_gan import SegGAN
from seg_gan.cli import main
from seg_gan.data import CityscapesDataModule, samplers
from seg_gan.data.samplers import SeededSampler, SizeGroupedBatchSampler


def test_size_grouped_batches_hold_one_size_and_every_index_once():
    sizes = [(64, 128), (90, 120), (64, 128), (50, 70), (64, 128), (90, 120), (64, 128)]
    batches = list(SizeGroupedBatchSampler(SequentialSampler(sizes), 2, sizes=sizes))
    assert batches == [[0, 2], [1, 5], [4, 6], [3]]  # full buckets as they fill, then the rest
    assert len(SizeGroupedBatchSampler(SequentialSampler(sizes), 2, sizes=sizes)) == 4
    assert list(SizeGroupedBatchSampler(SequentialSampler(sizes), 3, sizes=sizes)) == [[0, 2, 4], [1, 5], [3], [6]]
    # under DDP each process groups its own shard; together they cover every index exactly once
    seen = []
    for rank in range(2):
        shard = UnrepeatedDistributedSampler(sizes, num_replicas=2, rank=rank, shuffle=False)
        grouped = SizeGroupedBatchSampler(shard, 2, sizes=sizes)
        shard_batches = list(grouped)
        assert len(grouped) == len(shard_batches)
        assert all(len({sizes[i] for i in batch}) == 1 for batch in shard_batches)
        seen += [i for batch in shard_batches for i in batch]
    assert sorted(seen) == list(range(len(sizes)))


@pytest.mark.parametrize("eval_size", [None, (64, 96)], ids=["full-size", "eval_size"])
def test_validate_in_batches_of_two_on_mixed_sizes_equals_one_at_a_time(tmp_path, eval_size):
    root = mixed_cityscapes(tmp_path / "cs")
    torch.manual_seed(0)
    model = SegGAN(num_classes=19, lambda_adv=0.0)
    results = {}
    for batch_size in (1, 2):
        data = CityscapesDataModule(str(root), num_workers=0, eval_batch_size=batch_size, eval_size=eval_size)
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        (results[batch_size],) = trainer.validate(model, data, verbose=False)
        if batch_size == 2:  # two batches of sizes 64x128, then one each of 90x120 and 50x70
            assert len(trainer.val_dataloaders) == 3
    assert 0 < results[1]["val/mIoU"] < 1
    assert results[2]["val/mIoU"] == pytest.approx(results[1]["val/mIoU"], rel=1e-6)
    assert results[2]["val/pixel_acc"] == pytest.approx(results[1]["val/pixel_acc"], rel=1e-6)


def test_predict_a_folder_of_mixed_sizes_in_batches_of_two(cityscapes_root, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index, size in enumerate(SIZES):
        image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        image.save(photos / (f"{index}.jpg" if index == 1 else f"{index}.png"))  # JPEG among them
    out = tmp_path / "out"
    main(["predict", *tiny_args(cityscapes_root, tmp_path / "p"), "--data.predict_dir", str(photos),
          "--data.eval_batch_size", "2", "--writer.output_dir", str(out)])  # fmt: skip
    written = sorted((out / "trainIds").rglob("*.png"))
    assert [p.name for p in written] == [f"{index}_trainIds.png" for index in range(4)]
    for index, size in enumerate(SIZES):
        assert np.array(Image.open(out / "trainIds" / "photos" / f"{index}_trainIds.png")).shape == size
        assert np.array(Image.open(out / "color" / "photos" / f"{index}_color.png")).shape == (*size, 3)


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("size, num_samples", [(23, None), (7, 42), (5, 13)],
                         ids=["labeled", "unlabeled-stream", "odd-share"])  # fmt: skip
def test_an_epoch_of_passes_chains_one_pass_epochs_cut_to_whole_batches(monkeypatch, world_size, size, num_samples):
    for rank in range(world_size):
        monkeypatch.setattr(samplers, "world", lambda rank=rank: (rank, world_size))
        chained = SeededSampler(size, num_samples, seed=5, stream=1, passes=3, batch_size=4)
        chained.set_epoch(2)  # passes 6, 7, 8 of a one-pass sampler
        passes = []
        for epoch in (6, 7, 8):
            one = SeededSampler(size, num_samples, seed=5, stream=1)
            one.set_epoch(epoch)
            items = list(one)
            assert len(items) == len(one) == (num_samples or size) // world_size
            passes.append(items[: len(items) // 4 * 4])  # what a loader's drop_last keeps of a one-pass epoch
        assert list(chained) == passes[0] + passes[1] + passes[2]
        assert len(chained) == 3 * len(passes[0]) < 3 * len(items)  # each pass was cut (23, 42, 13 items)
        assert passes[0] != passes[1] and passes[1] != passes[2] and passes[0] != passes[2]  # fresh draws per pass
        if num_samples is None and world_size == 1:  # each labeled pass: distinct images, 20 of 23
            assert all(len({index for index, _ in one_pass}) == 20 for one_pass in passes)


def test_training_with_three_passes_per_epoch_ends_with_the_weights_of_one_pass_epochs(cityscapes_root):
    # 4 labeled images at batch 3: one batch per pass, one image dropped; the unlabeled stream and the
    # adversarial terms (instance noise draws from torch's generator) ride along; 4 batches cross an epoch end.
    # Persistent workers, as the study runs: a loader without them draws its workers' seed from torch's
    # generator at every epoch's start, so fewer epochs would shift the noise (the batches stay the same)
    weights = {}
    for passes in (1, 3):
        torch.manual_seed(0)
        model = SegGAN(num_classes=19, semi_start=0, instance_noise=0.3)
        fit_one_batch(model, cityscapes_root, max_steps=8, batch_size=3, passes_per_epoch=passes, num_workers=1,
                      persistent_workers=True, **SEMI)  # fmt: skip
        assert model.trainer.fit_loop.epoch_loop.total_batch_idx + 1 == 4
        assert model.trainer.current_epoch == {1: 4, 3: 2}[passes]  # epochs begun: 4, or one of 3 and a second
        weights[passes] = snapshot(model)
    assert all(torch.equal(weights[1][name], weights[3][name]) for name in weights[1])
