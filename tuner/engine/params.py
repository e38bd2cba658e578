"""The parameters every gradient-trained family takes (optimiser, schedule, loss, batches, seed), with
their one default each: `TorchFamily.resolve` fills them into a trial's config, so the engine indexes it."""
from __future__ import annotations

from tuner.types import Param

COMMON_PARAMS: dict[str, Param] = {
    "optimizer": Param("adam", "str", ("sgd", "adam", "adamw", "rmsprop"),
                       fusable=True, help="adamw decouples weight decay from the lr"),
    "lr": Param(1e-3, "float", low=0.0, pbt=True, fusable=True, help="learning rate (of the head, for transfer)"),
    "momentum": Param(0.9, "float", low=0.0, high=1.0, pbt=True, fusable=True, help="sgd and rmsprop"),
    "weight_decay": Param(0.0, "float", low=0.0, pbt=True, fusable=True, help="L2 penalty (decoupled for adamw)"),
    "eps": Param(1e-8, "float", low=0.0, fusable=True,
                 help="adam/adamw/rmsprop epsilon (the Flowers seed used 0.1)"),
    "nesterov": Param(False, "bool", fusable=True, help="sgd: Nesterov momentum (needs momentum > 0)"),
    "batch_size": Param(64, "int", low=1, help="training images per step"),
    "lr_schedule": Param("none", "str", ("none", "step", "plateau", "cosine"), fusable=True,
                         help="step: times lr_gamma every lr_step epochs; plateau: when val_loss stalls; "
                              "cosine: down to 0 at max_epochs"),
    "lr_step": Param(0, "int", low=0, fusable=True, help="step: epochs between drops (0 = a third of max_epochs)"),
    "lr_gamma": Param(0.1, "float", low=0.0, high=1.0, fusable=True,
                      help="step and plateau: factor the lr is multiplied by"),
    "lr_patience": Param(2, "int", low=0, fusable=True, help="plateau: epochs without improvement before a drop"),
    "lr_threshold": Param(1e-4, "float", low=0.0, fusable=True, help="plateau: relative improvement that counts"),
    "label_smoothing": Param(0.0, "float", low=0.0, high=1.0, pbt=True, fusable=True,
                             help="weight moved from the true class to all classes"),
    "loss": Param("ce", "str", ("ce", "focal"), fusable=True,
                  help="ce: cross-entropy; focal: down-weights easy examples"),
    "focal_gamma": Param(2.0, "float", low=0.0, fusable=True,
                         help="focal: how strongly easy examples are down-weighted"),
    "early_stopping": Param(0, "int", low=0, fusable=True, help="patience in epochs on val_accuracy; 0 = off"),
    "seed": Param(0, "int", fusable=True, help="initial weights and batch order"),
    "compile": Param(False, "bool", help="torch.compile the model for training (opt-in: its compile time does not "
                                          "pay back on short trials)"),
}
