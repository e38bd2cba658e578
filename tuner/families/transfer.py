"""Transfer learning: a torchvision backbone (see `tuner.backbones`) with a new head.

    image -> body (torchvision, classifier cut off) -> pool (gap | flatten) -> head (MLP) -> classes

`trainable_layers` decides what trains: 0 freezes the whole body, n trains its last n stages, `all`
fine-tunes everything. Frozen modules stay in eval mode, so their batch-norm statistics keep what
they learned on ImageNet. `backbone_lr_mult` gives the trainable part of the body a smaller lr.

With `trainable_layers: 0` the body is a fixed function, so running it every epoch for every trial
is wasted work: its pooled features are computed once per image (plus `cached_views` augmented views
per training image, when the data set asks for augmentation) and cached on disk by
`tuner.embeddings`, shared by every trial of the search; the head then trains on the cache, which is
what makes a frozen search cheap (see benchmarks/bench_frozen.py).

Pretrained weights are loaded when training starts, not when the model is built: a loaded bundle
carries all its weights, so `tuner.load` never needs the ImageNet file or the source bundle.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from tuner import backbones, embeddings, settings
from tuner.engine import TorchLearner, augment, precision, to_device
from tuner.errors import UserError
from tuner.families.base import DataInfo, Param, RunContext, check_param, register_family
from tuner.families.trained import ACTIVATIONS, TorchFamily, head_layers, pool_layers

HEAD_DEFAULTS = {"pool": "gap", "hidden": [], "dropout": 0.0, "batchnorm": False, "activation": "relu"}


class TransferNet(nn.Module):
    """body -> pool -> head. `units` (the body's stages, see backbones.Body) is kept for freezing."""

    def __init__(self, arch: str, body: nn.Module, units: list, pool: nn.Module, head: nn.Sequential):
        super().__init__()
        self.arch = arch
        self.body, self.pool, self.head = body, pool, head
        self.units = units  # a plain list: the same modules are registered under `body`

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def head_config(cfg: dict) -> dict:
    """Built-in defaults < the `head:` block < top-level keys (which is what a search varies)."""
    h = dict(HEAD_DEFAULTS)
    h.update(cfg["head"] or {})
    h.update({k: cfg[k] for k in HEAD_DEFAULTS if cfg[k] is not None})
    return h


def is_frozen(cfg: dict) -> bool:
    return cfg["trainable_layers"] == 0 and not isinstance(cfg["trainable_layers"], bool)


# --------------------------------------------------------------------------- learners
class TransferLearner(TorchLearner):
    """Fine-tunes (part of) the body and the head on images; the shared TorchLearner loop."""

    model: TransferNet

    def __init__(self, model: TransferNet, cfg: dict, info: DataInfo, ctx: RunContext):
        body = backbones.Body(arch=model.arch, module=model.body, units=model.units)
        self.frozen_modules = backbones.freeze(body, cfg["trainable_layers"])  # before the optimizer sees params
        self.cache_dir = ctx.cache_dir or str(settings.cache_dir())
        super().__init__(model, cfg, info, ctx, in_channels_wanted=3)
        self._pretrained_pending = cfg["weights"] != "none"

    def param_groups(self):
        # the head first: its lr is the one reported as `lr`
        groups = [{"params": list(self.model.head.parameters())}]
        back = [p for p in self.model.body.parameters() if p.requires_grad]
        if back:
            groups.append({"params": back, "lr": float(self.cfg["lr"]) * float(self.cfg["backbone_lr_mult"])})
        return groups

    def train_mode(self) -> None:
        self.model.train()
        for m in self.frozen_modules:  # frozen batch norm keeps its running statistics
            m.eval()

    def _ensure_pretrained(self) -> None:
        if self._pretrained_pending:
            body = backbones.Body(arch=self.model.arch, module=self.model.body, units=self.model.units)
            backbones.load_weights(body, self.cfg["weights"])
            self._pretrained_pending = False

    def fit(self, data, max_epochs: int, via=None):
        self._ensure_pretrained()
        yield from super().fit(data, max_epochs, via)

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray, batch_size: int | None = 512) -> np.ndarray:
        self._ensure_pretrained()
        return super().predict_proba(images, batch_size)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._pretrained_pending = False

    def load_weights(self, w: dict) -> None:
        super().load_weights(w)
        self._pretrained_pending = False


class HeadOnFeatures:
    """A frozen learner's head as the thing its training loop runs (`TorchLearner.train_epoch`'s `via`): float
    rows of cached body features in, logits out; no body, no image augmentation (the cache holds the views)."""

    def __init__(self, learner: FrozenLearner):
        self.learner = learner

    def inputs(self, x, train: bool) -> torch.Tensor:
        return to_device(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x,
                         self.learner.device).float()

    def logits(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        with precision(self.learner.device, exact):
            return self.learner.model.head(x)


class FrozenLearner(TransferLearner):
    """trainable_layers: 0 -- the head trains on cached body features (`HeadOnFeatures`); images go through the
    body once. Its other methods (`predict_proba`, `evaluate`) take images through the whole model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_features = HeadOnFeatures(self)
        self.feature_set = None  # the cached body features this trial trains its head on (public: tests read it)

    def feature_key(self) -> str:
        """Changes whenever the cached features would: arch, weights, pooling, normalisation, size."""
        i, h = self.info, head_config(self.cfg)
        norm = ",".join(f"{v:.4f}" for v in (*i.mean, *i.std))
        weights = backbones.weights_key(self.cfg["weights"], int(self.cfg["seed"]), self.model.arch)
        return (f"transfer:{self.model.arch}:drop{self.cfg['drop_stages']}:{weights}:{h['pool']}:"
                f"{i.channels}x{i.height}x{i.width}:{norm}")

    def _features(self, data) -> SimpleNamespace:
        cache_dir = self.cache_dir
        key = self.feature_key()
        extract = self.model.features
        plain = embeddings.cached(data, key, extract, self.pre, self.device, cache_dir, splits=("train", "val"))
        x_train, y_train = plain["train"], np.asarray(data.y_train)
        aug = self.augment_cfg
        views = int(self.cfg["cached_views"]) if aug is not None and aug.any else 0
        if views:
            xs, ys = [x_train], [y_train]
            for v in range(views):
                gen = torch.Generator().manual_seed(1000 + v)  # the same views for every trial sharing the cache

                def pre(x, gen=gen):
                    return augment(self.pre(x), aug, gen)

                xs.append(embeddings.cached(data, f"{key}:view{v}:{aug!r}", extract, pre, self.device, cache_dir,
                                            splits=("train",))["train"])
                ys.append(y_train)
            x_train, y_train = np.concatenate(xs), np.concatenate(ys)
        return SimpleNamespace(x_train=x_train, y_train=y_train, x_val=plain["val"], y_val=np.asarray(data.y_val))

    def train_data(self, data) -> SimpleNamespace:
        """What the head trains on: the cached body features of `data` (read once per trial)."""
        self._ensure_pretrained()
        if self.feature_set is None:
            self.model.eval()
            self.feature_set = self._features(data)
        return self.feature_set

    def drop_body(self) -> None:
        """Let go of the body: a fused group (`tuner.fused`) trains many heads on one body's features, so the
        other members keep their heads only (they still checkpoint as this learner does: heads only)."""
        self.model.body, self.model.units, self.frozen_modules = nn.Sequential(), [], []
        self._pretrained_pending = False

    def fit(self, data, max_epochs: int, via=None):
        # TorchLearner.fit places the features (small: N x D floats) on the GPU once for the whole trial
        yield from super().fit(self.train_data(data), max_epochs, via or self.on_features)

    def state_dict(self) -> dict:
        # the body is frozen and comes from `weights`: checkpoints hold the head only
        state = super().state_dict()
        state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("body.")}
        return state

    def load_state_dict(self, state: dict) -> None:
        self._ensure_pretrained()
        full = self.model.state_dict()
        full.update(state["model"])
        super().load_state_dict({**state, "model": full})


# --------------------------------------------------------------------------- the family
@register_family
class Transfer(TorchFamily):
    """A torchvision network (`arch`: resnet18/50, vgg16/19, mobilenet_v2, efficientnet_b0,
    convnext_tiny, ...) or a timm one (`timm/convnext_tiny`, `timm/efficientnetv2_s`, any convolutional
    `timm/<name>`) with its classifier replaced by a new head: pool, `hidden` layers, output.
    For a timm model, `weights: imagenet` is timm's default pretrained weights of that name (a tag picks
    others: `timm/convnext_tiny.fb_in1k`), read from the Hugging Face hub cache, or from a file put at
    `~/.cache/torch/hub/checkpoints/timm/<name>.safetensors` (or `.pth`) on a machine that cannot reach the hub.

    `trainable_layers` picks what trains: 0 freezes the body (its features are computed once and
    cached, so a frozen search is cheap), n trains its last n stages, `all` fine-tunes everything;
    `backbone_lr_mult` gives the body a smaller lr. With `weights: imagenet` this is the usual best
    choice for real photographs; with `weights: none` it trains the same architecture from scratch.
    The head can be written as a `head:` block or as top-level keys (`pool`, `hidden`, `dropout`,
    `batchnorm`, `activation`); a top-level key wins, and is what a search varies. Only frozen heads
    (`trainable_layers: 0` on pretrained weights) train fused.
    """
    name = "transfer"
    own_params = {
        "arch": Param("resnet50", "str", help="a torchvision classification model, or timm/NAME (a timm model)"),
        "weights": Param("imagenet", "str", help="imagenet | none | path to a state dict or exported bundle"),
        "trainable_layers": Param(0, "any", help="0 = frozen feature extractor, n = the last n stages, all"),
        "backbone_lr_mult": Param(1.0, "float", low=0.0, help="the body's lr is lr times this"),
        "drop_stages": Param(0, "int", low=0, help="cut the last n stages off the body (e.g. VGG19 after block 4)"),
        "head": Param({}, "dict", help="pool, hidden, dropout, batchnorm, activation"),
        "pool": Param(None, "str", ("gap", "flatten"),
                      help="head: gap or flatten the body's output (unset: head.pool, else gap)"),
        "hidden": Param(None, "list", help="head: hidden widths (unset: head.hidden, else none)"),
        "dropout": Param(None, "float", low=0.0, high=0.95, pbt=True, fusable=True,
                         help="head: after each hidden layer (unset: head.dropout, else 0)"),
        "batchnorm": Param(None, "bool", help="head: batch norm in hidden layers (unset: head.batchnorm, else false)"),
        "activation": Param(None, "str", tuple(ACTIVATIONS),
                            help="head: activation (unset: head.activation, else relu)"),
        "cached_views": Param(0, "int", low=0, high=64,
                              help="frozen: augmented views of each training image cached besides the plain one"),
    }

    def validate(self, constants: dict, searched: dict, file: str) -> None:
        super().validate(constants, searched, file)
        cfg = self.resolve(constants)
        archs = [cfg["arch"]]
        if "arch" in searched:
            archs = list(searched["arch"].args) if searched["arch"].is_categorical else [None]
            if archs == [None]:
                raise UserError(f"{file}: space.arch takes names; use choice: [...]")
            for a in archs:
                backbones.check_arch(a, f"{file}: space.arch")
        if cfg["drop_stages"] and any(backbones.timm_backbones.is_timm(a) for a in archs):
            raise UserError(f"{file}: drop_stages cuts torchvision bodies only; a timm model keeps its stages "
                            f"(set drop_stages: 0, or pick a smaller timm model)")
        if "trainable_layers" in searched:
            d = searched["trainable_layers"]
            values = list(d.args)
            for v in values:
                _check_trainable(v, f"{file}: space.trainable_layers")
        weights = [cfg["weights"]] if "weights" not in searched else list(searched["weights"].args)
        for w in weights:
            for a in archs:
                backbones.check_weights(a, w, f"{file}: weights", imagenet_file_needed=False)

    def preflight(self, constants: dict, searched: dict, file: str) -> None:
        """Before Ray starts a search: are the ImageNet files of every arch it may build on this machine?
        (fetched into the hub cache when missing; `validate` checks the file alone, so a space can be checked on a
        laptop and run on a cluster.)"""
        cfg = self.resolve(constants)
        archs = list(searched["arch"].args) if "arch" in searched else [cfg["arch"]]
        weights = list(searched["weights"].args) if "weights" in searched else [cfg["weights"]]
        for w in weights:
            for a in archs:
                backbones.check_weights(a, w, f"{file}: weights", fetch=True)

    def check_config(self, constants: dict, file: str) -> None:
        cfg = self.resolve(constants)
        backbones.check_arch(cfg["arch"], f"{file}: arch")
        _check_trainable(cfg["trainable_layers"], f"{file}: trainable_layers")
        for k, v in cfg["head"].items():
            if k not in HEAD_DEFAULTS:
                raise UserError(f"{file}: head.{k} is not a head setting; use {', '.join(HEAD_DEFAULTS)}")
            check_param(self.params[k], v, f"{file}: head.{k}")

    def build(self, cfg: dict, info: DataInfo) -> TransferNet:
        body = backbones.drop_last(backbones.make_body(cfg["arch"]), cfg["drop_stages"])
        c, h, w = backbones.feature_shape(body.module, 3, info.height, info.width, cfg["arch"])
        hc = head_config(cfg)
        pool, features = pool_layers(hc["pool"], c, h, w)
        head = head_layers(features, hc["hidden"], hc["dropout"], hc["batchnorm"], hc["activation"], info.num_classes)
        return TransferNet(cfg["arch"], body.module, body.units, nn.Sequential(*pool), nn.Sequential(*head))

    def learner(self, config: dict, info: DataInfo, ctx: RunContext | None = None) -> TransferLearner:
        cfg = self.resolve(config)
        torch.manual_seed(int(cfg["seed"]))  # the same config builds the same initial weights
        cls = FrozenLearner if is_frozen(cfg) else TransferLearner
        return cls(self.build(cfg, info), cfg, info, ctx or RunContext())

    def fusable(self, config: dict) -> bool:
        # heads on one frozen body's cached features; a random body (weights: none) is another body per seed
        return is_frozen(config) and config["weights"] != "none"

    def features(self, learner: TransferLearner) -> nn.Module:  # type: ignore[override]  # only its own learners
        """The body and its pooling: the head is the classifier."""
        return nn.Sequential(learner.model.body, learner.model.pool)

    def input_channels(self, info: DataInfo) -> int:
        return 3  # torchvision bodies take RGB; grey data is repeated


def _check_trainable(v, where: str) -> None:
    if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return
    raise UserError(f"{where}: expected 0 (frozen), a number of stages >= 0, or all; got {v!r}")
