"""Training and evaluation in plain PyTorch, device-aware, with no Ray in it; one module per concern:

    params.py        COMMON_PARAMS: what every gradient-trained family takes, with its default
    device.py        the device, a trial's GPU share and placement, the precision policy, CPU threads
    batches.py       epoch and evaluation batches, uint8 NHWC -> normalised float NCHW on the device
    augmentation.py  augmentation on the device, seeded
    optim.py         losses, optimisers, learning-rate schedules
    learner.py       TorchLearner, the loop every gradient-trained family trains with

The names other modules use are importable from `tuner.engine` itself.
"""
from tuner.engine.augmentation import augment
from tuner.engine.batches import EVAL_BATCH_BYTES, Preprocess, eval_batch_size, eval_batches, take, train_batches
from tuner.engine.device import (amp_dtype, gpu_share, pick_device, place, precision, resident, resident_budget,
                                 set_threads, to_device)
from tuner.engine.learner import OPTIMIZER_HPARAMS, TorchLearner, check_finite
from tuner.engine.optim import make_loss, make_optimizer, make_schedule
from tuner.engine.params import COMMON_PARAMS

__all__ = ["COMMON_PARAMS", "EVAL_BATCH_BYTES", "OPTIMIZER_HPARAMS", "Preprocess", "TorchLearner", "amp_dtype",
           "augment",
           "check_finite", "eval_batch_size", "eval_batches", "gpu_share", "make_loss", "make_optimizer",
           "make_schedule", "pick_device", "place", "precision", "resident", "resident_budget", "set_threads", "take",
           "to_device", "train_batches"]
