"""engine.augment: batch tensor augmentation from dataset.augment, train only, seeded, shape-preserving."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.types import RunContext
from tuner.engine import TorchLearner, augment
from tuner.families import get_family
from tuner.families.base import DataInfo
from tuner.spaces import AugmentConfig

ALL = AugmentConfig(hflip=True, rotation=15, color_jitter=0.2, translate=0.125, random_resized_crop=True)


def batch(n: int = 6, c: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("aug", [AugmentConfig(hflip=True), AugmentConfig(rotation=30), AugmentConfig(color_jitter=0.4),
                                 AugmentConfig(translate=0.2), AugmentConfig(random_resized_crop=True), ALL])
@pytest.mark.parametrize("channels", [1, 3])
def test_each_augmentation_keeps_shape_and_dtype_and_changes_pixels(aug, channels):
    x = batch(c=channels)
    out = augment(x.clone(), aug, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, x)


def test_no_augmentation_returns_the_batch_untouched():
    x = batch()
    assert augment(x, AugmentConfig(), torch.Generator()) is x
    assert augment(x, None, torch.Generator()) is x


def test_augmentation_is_seeded():
    x = batch()
    a = augment(x.clone(), ALL, torch.Generator().manual_seed(7))
    b = augment(x.clone(), ALL, torch.Generator().manual_seed(7))
    c = augment(x.clone(), ALL, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_hflip_mirrors_some_images_and_leaves_the_others():
    x = batch(n=32)
    out = augment(x.clone(), AugmentConfig(hflip=True), torch.Generator().manual_seed(0))
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x)]
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))  # a pure mirror, no resampling blur
    assert 4 < sum(flipped) < 28


def test_learner_augments_training_batches_only():
    info = DataInfo(num_classes=2, channels=3, height=8, width=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    cfg = get_family("linear").resolve({"optimizer": "sgd", "lr": 0.1})  # a learner takes a resolved config
    learner = TorchLearner(model, cfg, info, RunContext(augment=ALL))
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    plain = learner.pre(torch.from_numpy(x))
    assert torch.equal(learner.inputs(x, train=False), plain)  # evaluation and prediction see the image as is
    assert not torch.allclose(learner.inputs(x, train=True), plain)
