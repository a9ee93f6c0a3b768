"""Whole-image and sliding-window inference, flip averaging, any image size."""

import torch

from seg_gan import SegGAN
from seg_gan.inference import predict_logits, sliding


def test_sliding_window_covers_every_pixel_and_matches_whole_for_a_pointwise_model():
    pointwise = torch.nn.Conv2d(3, 4, 1)  # no context: windows must reproduce the whole-image output
    image = torch.randn(1, 3, 50, 70)
    whole = predict_logits(pointwise, image)
    windowed = sliding(pointwise, image, window=(32, 32), stride=(20, 25))
    assert torch.allclose(whole, windowed, atol=1e-6)
    flipped = predict_logits(pointwise, image, flip=True)
    assert torch.allclose(flipped, whole, atol=1e-6)  # a pointwise model is flip-equivariant


def test_predict_logits_handles_any_image_size():
    model = SegGAN(num_classes=4, lambda_adv=0.0).eval()
    with torch.no_grad():
        assert model.predict_logits(torch.randn(1, 3, 45, 70)).shape == (1, 4, 45, 70)
        assert model.predict_logits(torch.randn(1, 3, 45, 70), (90, 140)).shape == (1, 4, 90, 140)
