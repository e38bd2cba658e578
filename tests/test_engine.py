"""engine: fixed batch shapes, padded evaluation, one precision policy, host arrays kept on the CPU."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import tuner.engine
from tuner import embeddings, spaces
from tuner.data import prepare
from tuner.engine import (COMMON_PARAMS, amp_dtype, eval_batches, gpu_share, make_optimizer, place, precision,
                          train_batches)
from tuner.engine.optim import _fused
from tuner.families import RunContext, get_family
from tuner.settings import cache_dir


@pytest.fixture(scope="module")
def digits():
    exp = spaces.parse_experiment({"family": "mlp", "dataset": {"name": "digits", "limit": 200}})
    return prepare(exp.dataset, cache_dir=cache_dir())


def _batch_sizes(learner) -> tuple[list[int], list[int]]:
    """Rows of every batch the model saw, in training and in evaluation."""
    train, evaluation = [], []
    learner.model.register_forward_hook(
        lambda m, i, o: (train if m.training else evaluation).append(len(i[0])))
    return train, evaluation


def test_training_never_sees_a_ragged_batch_and_evaluation_sees_one_shape(digits):
    n = len(digits.y_train)
    assert n % 32, "the test needs a remainder"
    learner = get_family("mlp").learner({"hidden": [16], "batch_size": 32}, digits.info)
    train, evaluation = _batch_sizes(learner)
    list(learner.fit(digits, 2))
    assert train == [32] * (2 * (n // 32))  # the remainder is dropped, every epoch
    assert len(set(evaluation)) == 1


def test_a_set_smaller_than_a_batch_is_one_batch_of_all_of_it(digits):
    learner = get_family("mlp").learner({"hidden": [16], "batch_size": 4096}, digits.info)
    train, _ = _batch_sizes(learner)
    list(learner.fit(digits, 1))
    assert train == [len(digits.y_train)]


def test_shuffled_batches_use_each_image_at_most_once_and_every_image_over_epochs():
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(10):
        order = train_batches(103, 16, gen)
        assert order.shape == (6, 16)
        flat = order.flatten().tolist()
        assert len(set(flat)) == len(flat)
        assert all(row.tolist() == sorted(row.tolist()) for row in order)  # memory-mapped reads in order
        seen.update(flat)
    assert seen == set(range(103))


def test_padded_evaluation_returns_exactly_n_rows_equal_to_an_unpadded_one(digits):
    learner = get_family("cnn").learner({"channels": 8, "blocks": 2}, digits.info)
    list(learner.fit(digits, 1))
    x = digits.x_test[:50]
    _, evaluation = _batch_sizes(learner)
    padded = learner.predict_proba(x, batch_size=16)  # 16, 16, 16, 2 padded to 16
    assert evaluation == [16] * 4
    whole = learner.predict_proba(x, batch_size=50)
    assert padded.shape == (50, digits.info.num_classes)
    np.testing.assert_allclose(padded, whole, atol=1e-6)
    assert [(s, len(i), r) for s, i, r in eval_batches(50, 16)][-1] == (48, 16, 2)


def test_validation_metrics_match_the_float32_predictions_on_the_cpu(digits):
    learner = get_family("mlp").learner({"hidden": [16]}, digits.info)
    list(learner.fit(digits, 1))
    loss, acc, proba = learner.evaluate(digits.x_val, digits.y_val)
    exact = learner.predict_proba(digits.x_val)
    np.testing.assert_array_equal(proba, exact)  # no autocast on the CPU: one precision there
    assert acc == pytest.approx(float((exact.argmax(1) == digits.y_val).mean()))
    assert loss == pytest.approx(float(-np.log(exact[np.arange(len(exact)), digits.y_val]).mean()), rel=1e-5)


def test_the_cpu_trains_in_float32_and_keeps_host_arrays_where_they_are(digits):
    assert amp_dtype("cpu") is None
    with precision("cpu", exact=False):
        assert not torch.is_autocast_enabled("cpu")
    arrays = [digits.x_train, digits.y_train]
    assert all(a is b for a, b in zip(place(arrays, torch.device("cpu"), 1.0), arrays))


def test_the_gpu_share_travels_with_the_run_not_in_a_module_global(digits):
    # resources.gpu of a trial -> RunContext.gpu_share -> the learner, which places its data within it
    assert (gpu_share(None), gpu_share(0.25), gpu_share(2), gpu_share(0)) == (1.0, 0.25, 1.0, 0.0)
    learner = get_family("mlp").learner({"hidden": [8]}, digits.info, RunContext(gpu_share=0.25))
    assert learner.gpu_share == 0.25
    engine_dir = Path(tuner.engine.__file__).parent
    held = [f"{p.name}:{n.lineno}" for p in engine_dir.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.Global)]
    assert not held, f"module globals written in tuner/engine: {held}"


def test_extraction_is_float32_and_equals_running_the_extractor_in_one_batch(digits):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.ReLU()).eval()

    def pre(x):
        return x.float().div(255.0)

    feats = embeddings.compute(net, pre, digits.x_train[:70], batch_size=32)
    assert feats.dtype == np.float32 and feats.shape == (70, 12)
    with torch.no_grad():
        direct = net(pre(torch.from_numpy(np.array(digits.x_train[:70])))).numpy()
    np.testing.assert_allclose(feats, direct, atol=1e-6)
    assert embeddings.compute(net, pre, digits.x_train[:0]).shape == (0, 0)


def test_the_engine_reads_the_resolved_config_and_keeps_no_defaults_of_its_own():
    params = [torch.nn.Parameter(torch.zeros(3, 3))]
    cfg = get_family("linear").resolve({"optimizer": "sgd"})  # where a trial's config is completed, once
    assert make_optimizer([{"params": params}], cfg).defaults["momentum"] == COMMON_PARAMS["momentum"].default
    with pytest.raises(KeyError):  # an incomplete config is a bug to see, not one to paper over with a fallback
        make_optimizer([{"params": params}], {"optimizer": "sgd", "lr": 0.1})
    # nor does any learner keep a fallback beside the parameter's default: `cfg.get(key, default)`
    root = Path(tuner.engine.__file__).parents[1]
    fallbacks = [f"{p.relative_to(root)}:{n.lineno}"
                 for folder in ("engine", "families") for p in (root / folder).glob("*.py")
                 for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Call) and len(n.args) == 2
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                 and ast.unparse(n.func.value) in ("cfg", "config", "self.cfg", "constants")]
    assert not fallbacks, f"defaults said twice: {fallbacks}"


def test_adam_adamw_and_sgd_take_their_fused_kernel_and_an_optimiser_without_one_still_builds():
    params = [torch.nn.Parameter(torch.zeros(3, 3))]
    for name in ("adam", "adamw", "sgd"):
        opt = make_optimizer([{"params": params}], get_family("linear").resolve({"optimizer": name, "lr": 0.1}))
        assert opt.defaults.get("fused") is True, name
    # RMSprop has no fused kernel (no `fused` argument): the plain one is built instead of an error
    assert isinstance(_fused(torch.optim.RMSprop, [{"params": params}], lr=0.1), torch.optim.RMSprop)
    rmsprop = get_family("linear").resolve({"optimizer": "rmsprop", "lr": 0.1})
    assert isinstance(make_optimizer([{"params": params}], rmsprop), torch.optim.RMSprop)


def test_a_cnn_trains_channels_last_on_the_cpu_as_the_contiguous_model_predicts_and_an_mlp_does_not(digits):
    import copy

    learner = get_family("cnn").learner({"channels": 8, "blocks": 2, "batch_size": 32}, digits.info)
    convs = [m.weight for m in learner.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert learner.inputs(digits.x_val[:4], train=False).is_contiguous(memory_format=torch.channels_last)
    list(learner.fit(digits, 1))
    plain = copy.deepcopy(learner.model).to(memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        x = learner.pre(torch.from_numpy(np.ascontiguousarray(digits.x_val)))
        expected = torch.softmax(plain(x.contiguous()), 1).numpy()
    np.testing.assert_allclose(learner.predict_proba(digits.x_val), expected, atol=1e-5)
    # a model without convolutions gets its batches as they come (RGB, where the layouts differ): no
    # channels-last copy per batch
    from tuner.families.base import DataInfo

    rgb = DataInfo(num_classes=2, channels=3, height=8, width=8, mean=(0.5,) * 3, std=(0.25,) * 3)
    images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    assert get_family("mlp").learner({"hidden": [16]}, rgb).inputs(images, train=False).is_contiguous()
    assert get_family("cnn").learner({"channels": 8}, rgb).inputs(images, train=False).is_contiguous(
        memory_format=torch.channels_last)


def test_splits_placed_on_a_device_are_kept_for_the_next_trial_on_the_same_data():
    # a reused actor's next trial finds the splits on the GPU instead of uploading them again while the GPU
    # waits; another data set replaces them. (Where the splits go is a GPU matter; the keeping is tested here.)
    from tuner.engine import device as engine

    engine._RESIDENT.clear()
    made = []

    def upload():
        made.append(1)
        return [torch.zeros(2)]

    first = engine.resident(("data-a", "cuda"), upload)
    assert engine.resident(("data-a", "cuda"), upload) is first and len(made) == 1
    engine.resident(("data-b", "cuda"), upload)
    assert len(made) == 2 and list(engine._RESIDENT) == [("data-b", "cuda")]
    engine._RESIDENT.clear()


def test_an_evaluation_batch_of_large_images_is_capped_by_bytes_never_below_the_training_batch():
    from tuner.engine import EVAL_BATCH_BYTES, eval_batch_size

    assert eval_batch_size(64, 28 * 28) == 256 and eval_batch_size(512) == 1024  # 4x, at most 1,024
    big = eval_batch_size(256, 224 * 224 * 3)  # 1,024 would be 616 MB of float input
    assert big * 224 * 224 * 3 * 4 <= EVAL_BATCH_BYTES < (big + 1) * 224 * 224 * 3 * 4
    assert eval_batch_size(600, 224 * 224 * 3) == 600


def test_a_bias_before_a_batch_norm_gets_no_gradient_noise_and_adam_leaves_it_where_it_was(digits):
    # its true gradient is 0 (batch statistics cancel it); Adam made lr-sized steps out of the rounding noise,
    # which moved the batch norm's running mean with it
    fam = get_family("mlp")
    learner = fam.learner(fam.resolve({"hidden": [16], "batchnorm": True, "optimizer": "adam", "lr": 0.05}),
                          digits.info)
    first = learner.model[1]
    assert isinstance(first, torch.nn.Linear) and isinstance(learner.model[2], torch.nn.BatchNorm1d)
    assert learner.shadowed == [first.bias]
    before, weight = first.bias.detach().clone(), first.weight.detach().clone()
    list(learner.fit(digits, 1))
    assert torch.equal(first.bias.detach(), before)
    assert not torch.equal(first.weight.detach(), weight)  # the rest trains
    plain = fam.learner(fam.resolve({"hidden": [16], "batchnorm": False}), digits.info)
    assert plain.shadowed == []
