"""`TorchLearner`: an `nn.Module` trained one epoch per `fit` step, checkpointable; every gradient-trained
family's learner (and what a fused group's members are, `tuner.fused`)."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tuner.engine.augmentation import augment
from tuner.engine.batches import Preprocess, eval_batch_size, eval_batches, take, train_batches
from tuner.engine.device import amp_dtype, place, precision, resident, to_device
from tuner.engine.optim import make_loss, make_optimizer, make_schedule, shadowed_biases, zero_grads
from tuner.errors import TrialFailed
from tuner.progress import bar
from tuner.types import Learner, RunContext


def check_finite(train_loss: float, epoch: int, lr: float) -> None:
    """A trial whose training loss is NaN or infinite cannot go on: `TrialFailed`, saying what to change."""
    if not math.isfinite(train_loss):
        raise TrialFailed(f"train_loss is {train_loss} at epoch {epoch + 1}: the lr "
                          f"({lr:.3g}) is probably too high for this config")


# --------------------------------------------------------------------------- the learner for torch models
# what a running trial's optimiser state carries of the config: scaled on a PBT exploit (`adapt_state`)
OPTIMIZER_HPARAMS = ("lr", "momentum", "weight_decay")


class TorchLearner(Learner):
    """Trains an `nn.Module` on uint8 image arrays, one epoch per `fit` step; checkpointable.

    cfg: the trial's resolved config (`Family.resolve`: every `COMMON_PARAMS` key is there, and is read as is).
    ctx: device, GPU share, augmentation and keep-best (`RunContext`).
    """

    def __init__(self, model: nn.Module, cfg: dict, info, ctx: RunContext | None = None,
                 in_channels_wanted: int | None = None):
        ctx = ctx or RunContext()
        augment_cfg, keep_best = ctx.augment, ctx.keep_best
        self.progress = ctx.progress
        self.cfg = cfg
        self.device = torch.device(ctx.device)
        self.gpu_share = ctx.gpu_share
        self.info = info
        self.model = model.to(self.device)
        self.pre = Preprocess(info.mean, info.std, info.channels, in_channels_wanted).to(self.device)
        self.augment_cfg = augment_cfg
        self.cuda = self.device.type == "cuda"
        # channels-last for convolutional models on every device: on CUDA it is what the tensor cores want; on
        # the CPU, oneDNN's convolutions are faster in it too (2-core machine, one thread, a training step:
        # digits CNN 5.3 ms against 6.3 ms, MobileNetV3-S and EfficientNet-B0 at 64 px 1.6x; ResNet18 the same
        # within 10%). A model without convolutions (mlp) keeps its inputs as they are: no copy per batch.
        conv = any(p.dim() == 4 for p in self.model.parameters())
        self.memory_format = torch.channels_last if conv else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        if self.cuda:
            # cudnn.benchmark stays off. Measured on an H100 (issue 13): with it on, a trial's first training
            # step took 9.2 s (ResNet18, 64 px) / 13.4 s (ResNet50, 224 px) and each new batch shape another
            # 3.3 s / 10.8 s (0.6 s / 1.3 s in evaluation); off, 0.7 s / 0.9 s and 0.13 s / 0.36 s, and the
            # steady step time was the same either way (0.065 s, ResNet50 at batch 256). A trial never runs
            # long enough to win that back, so there is no switch for it.
            torch.backends.cudnn.benchmark = False
        self.amp_dtype = amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # opt-in: compiling takes longer than a short trial saves; used for training and validation steps
        # only (exact predictions run the plain module, so their float32 graph is never compiled too)
        self.train_model = torch.compile(self.model, dynamic=False) if cfg["compile"] else self.model
        self.loss_fn = make_loss(cfg)
        self.optimizer = make_optimizer(self.param_groups(), cfg)
        self.shadowed = shadowed_biases(self.model)  # gradients set to 0 after each backward pass (see there)
        self.schedule = None
        self.loaded_schedule: dict | None = None  # a checkpoint's schedule state, until `start` makes the schedule
        self.gen = torch.Generator().manual_seed(int(cfg["seed"]))
        self.epoch = 0
        self.best = -math.inf
        self.bad_epochs = 0
        self.keep_best = keep_best
        self.best_state: dict | None = None
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.resident: tuple | None = None  # (data, its splits as `place` left them)

    # hooks a family may override --------------------------------------------------------------
    def param_groups(self):
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def train_mode(self) -> None:
        self.model.train()

    # what a batch goes through: this learner on images, or another `via` (a frozen head on features) --------
    def inputs(self, x: np.ndarray | torch.Tensor, train: bool) -> torch.Tensor:
        """A raw uint8 NHWC batch (host array or on the device) -> the model's input on the device."""
        t = self.pre(to_device(x, self.device))
        if train:
            t = augment(t, self.augment_cfg, self.gen)
        return t.contiguous(memory_format=self.memory_format) if t.dim() == 4 else t

    def logits(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """The model on a batch of `inputs`, in the precision `exact` asks for (`precision`)."""
        with precision(self.device, exact):
            return (self.model if exact else self.train_model)(x)

    def train_epoch(self, x, y, batch_size: int, via=None) -> tuple[float, float]:
        """One pass over (x, y), host arrays or resident tensors, through `via` (an object with this learner's
        `inputs` and `logits`; None: this learner). Loss and hits add up on the device and are read once at
        the end: a `.item()` per batch would make the CPU wait for the GPU at every step."""
        via = via or self
        self.train_mode()
        order = train_batches(len(x), batch_size, self.gen)
        if isinstance(x, torch.Tensor):
            order = to_device(order, x.device)  # one copy per epoch; batches are then gathered on the device
        total = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        # `with`: a bar closed (its line cleared) also when Ctrl-C lands mid-epoch, so that tuner's last line
        # ("interrupted; ...") starts a line of its own
        with bar(len(order), f"epoch {self.epoch + 1}", self.progress, unit="batch", leave=False) as shown:
            for idx in order:
                xb = via.inputs(take(x, idx, self.device), train=True)
                yb = take(y, idx, self.device).long()
                logits = via.logits(xb)
                loss = self.loss_fn(logits, yb)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                zero_grads(self.shadowed)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total += loss.detach().float() * len(idx)
                correct += (logits.argmax(1) == yb).sum()
                shown.update(1)
        seen = max(order.numel(), 1)
        return total.item() / seen, correct.item() / seen

    @torch.no_grad()
    def _proba(self, x, exact: bool, batch_size: int | None = None, via=None) -> torch.Tensor:
        """Class probabilities on the device, in fixed-shape batches (the padding rows dropped)."""
        via = via or self
        self.model.eval()
        n = len(x)
        i = self.info
        bs = batch_size or eval_batch_size(int(self.cfg["batch_size"]), i.height * i.width * i.channels)
        out = torch.empty((n, self.info.num_classes), device=self.device)
        where = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        with bar(n, "testing" if exact else "validating", self.progress, leave=False) as shown:
            for start, idx, real in eval_batches(n, bs, where):
                logits = via.logits(via.inputs(take(x, idx, self.device), train=False), exact=exact)
                out[start:start + real] = torch.softmax(logits.float(), 1)[:real]
                shown.update(real)
        return out

    @torch.no_grad()
    def evaluate(self, x, y, via=None) -> tuple[float, float, np.ndarray]:
        """The validation pass of a trial, through `via` as `train_epoch`: in the training precision (it steers
        the search, and is timed)."""
        if not len(y):
            return float("nan"), float("nan"), np.zeros((0, self.info.num_classes), dtype=np.float32)
        proba = self._proba(x, exact=False, via=via)
        # labels from the object store are read-only arrays: a copy (small) keeps torch from warning about it
        yt = y.long() if isinstance(y, torch.Tensor) else torch.from_numpy(np.array(y, dtype=np.int64))
        yt = yt.to(self.device)
        loss = F.nll_loss(proba.clamp_min(1e-12).log(), yt)
        acc = (proba.argmax(1) == yt).float().mean()
        return loss.item(), acc.item(), proba.cpu().numpy()

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Probabilities in float32 on any device (`precision(exact=True)`): test metrics and loaded bundles
        agree between a CPU and a GPU."""
        return self._proba(images, exact=True, batch_size=batch_size).cpu().numpy()

    def _placed(self, data) -> list:
        if self.resident is None or self.resident[0] is not data:
            def upload():
                return place([data.x_train, data.y_train, data.x_val, data.y_val], self.device, self.gpu_share)

            key = getattr(data, "key", "")  # an ImageData's content hash; features (frozen transfer) have none
            placed = resident((key, str(self.device)), upload) if key and self.cuda else upload()
            self.resident = (data, placed)
        return self.resident[1]

    def start(self, max_epochs: int) -> None:
        """Before a `fit`'s first epoch (and the fused trainer's, `tuner.fused`): the lr schedule for max_epochs,
        at the point a loaded checkpoint left it."""
        if self.schedule is None:
            self.schedule = make_schedule(self.optimizer, self.cfg, max_epochs)
            if self.schedule is not None and self.loaded_schedule:
                self.schedule.load_state_dict(self.loaded_schedule)

    def end_epoch(self, val_loss: float, val_acc: float) -> bool:
        """After an epoch's validation (here and in the fused trainer, so both keep the same books): step the
        schedule, count the epoch, remember the best; True when early stopping ends the training."""
        if isinstance(self.schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.schedule.step(val_loss)
        elif self.schedule is not None:
            self.schedule.step()
        self.epoch += 1
        if val_acc > self.best:
            self.best, self.bad_epochs = val_acc, 0
            if self.keep_best:
                # clones, not deepcopy: a fused member's tensors are views into its group's storage, and a
                # deepcopy of a view copies the whole storage
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        patience = int(self.cfg["early_stopping"])
        return bool(patience) and self.bad_epochs >= patience

    def fit(self, data, max_epochs: int, via=None) -> Iterator[dict]:
        """`Learner.fit`; `via` as `train_epoch` (a frozen transfer learner trains its head on features)."""
        self.start(max_epochs)
        batch_size = int(self.cfg["batch_size"])
        x_train, y_train, x_val, y_val = self._placed(data)
        while self.epoch < max_epochs:
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_acc = self.train_epoch(x_train, y_train, batch_size, via=via)
            check_finite(train_loss, self.epoch, lr)
            val_loss, val_acc, _ = self.evaluate(x_val, y_val, via=via)
            stop = self.end_epoch(val_loss, val_acc)
            yield {"epoch": self.epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                   "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr,
                   "epoch_time_s": time.perf_counter() - t0}
            if stop:
                return

    def restore_best(self) -> None:
        """Go back to the weights of the best validation epoch (the retrain keeps those)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None,
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "best": self.best,
                "bad_epochs": self.bad_epochs, "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                # dropout on a GPU draws from the GPU's generator
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.cuda else None}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loaded_schedule = state.get("schedule")
        if self.schedule is not None and self.loaded_schedule:  # loaded between two epochs (a fused member)
            self.schedule.load_state_dict(self.loaded_schedule)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if self.cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def weights(self) -> dict:
        """What an exported bundle needs to rebuild the model."""
        return {"model": self.model.state_dict()}

    def load_weights(self, w: dict) -> None:
        self.model.load_state_dict(w["model"])

    def hparams(self) -> dict[str, float]:
        return {k: float(self.cfg[k]) for k in OPTIMIZER_HPARAMS}

    def adapt_state(self, state: dict, old: dict[str, float]) -> dict:
        """A checkpoint made under `old` hyperparameters, continued under `new` ones (PBT's exploit step).

        The optimiser's state dict carries its own lr, momentum and weight decay, which would silently
        undo the perturbation; scale each group (and a schedule's base lrs) by new/old, so per-group
        multipliers (backbone_lr_mult) and the schedule's progress are kept.
        """
        new = self.hparams()
        if not old or all(old.get(k) == new.get(k) for k in OPTIMIZER_HPARAMS):
            return state
        ratios = {k: (new[k] / old[k]) if old.get(k) else None for k in OPTIMIZER_HPARAMS if k in new and k in old}
        for group in state["optimizer"]["param_groups"]:
            for k in OPTIMIZER_HPARAMS:
                if k not in group or k not in ratios:
                    continue
                group[k] = group[k] * ratios[k] if ratios[k] is not None else new[k]
                if k == "lr" and "initial_lr" in group and ratios[k] is not None:
                    group["initial_lr"] *= ratios[k]
        schedule, r = state.get("schedule"), ratios.get("lr")
        if schedule and r is not None:
            for key in ("base_lrs", "_last_lr"):
                if key in schedule:
                    schedule[key] = [v * r for v in schedule[key]]
        return state
