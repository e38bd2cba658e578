"""What the embedding families (knn, features) share: the backbone that turns images into vectors, its
parameters and preflight check, and the learner base that embeds once (cached) and stores the training
vectors. Its features are computed once per data set and image size by `tuner.embeddings.cached`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from tuner import backbones, embeddings
from tuner.bundle import data_info, read_bundle
from tuner.engine import Preprocess
from tuner.errors import UserError
from tuner.families.base import DataInfo, Learner, Param, RunContext, get_family

PIXELS = "pixels"


# --------------------------------------------------------------------------- backbone -> embeddings
def backbone_params() -> dict[str, Param]:
    """What knn and features share: where the vectors come from and how they are normalised."""
    return {
        "backbone": Param(PIXELS, "str", help="pixels | a torchvision arch (resnet50, vgg19, ...) | timm/NAME | "
                                              "path to a bundle exported by `tuner best --export`"),
        "backbone_weights": Param("imagenet", "str", help="the arch's weights: imagenet | none | a .pt bundle path"),
        "normalize": Param("none", "str", ("none", "l2"), help="l2: scale each embedding to length 1"),
    }


def check_backbone(constants: dict, searched: dict, file: str) -> None:
    """Before Ray starts (not at `validate`, so a space can be checked before its bundle exists): pixels
    needs nothing; every arch's weights file and every bundle path the search may use must be here.
    constants: resolved (`Family.resolve`: the backbone keys at their defaults when the file leaves them out)."""
    names = list(searched["backbone"].args) if "backbone" in searched else [constants["backbone"]]
    weights = (list(searched["backbone_weights"].args) if "backbone_weights" in searched
               else [constants["backbone_weights"]])
    for b in names:
        for w in weights:
            _check_one_backbone(str(b), str(w), file)


def _check_one_backbone(b: str, weights: str, file: str) -> None:
    if b == PIXELS:
        return
    if backbones.is_arch(b):
        backbones.check_weights(b, weights, f"{file}: backbone_weights", fetch=True)
        return
    p = backbones.resolve_path(str(b))
    if not p.exists():
        raise UserError(f"{file}: backbone {b!r} is neither `pixels`, a torchvision arch (resnet50, vgg19, ...) "
                        f"nor an existing bundle; export one with `tuner best --export DIR` and give DIR")
    read_bundle(p)  # a readable tuner bundle, or a UserError that says so


def extractor(backbone: str, weights: str, info: DataInfo) -> tuple[nn.Module, int, str]:
    """A frozen feature extractor for the knn / features families.

    backbone: a torchvision arch (with `weights`: imagenet | none | a state-dict path; see
    `backbones.extractor`) or the path of a bundle exported by `tuner best --export` (then `weights` is
    ignored): the bundle's model minus its head, as its family's `features` hook cuts it.

    Returns (module, channels_wanted, key) as `backbones.extractor` does; a bundle's module first undoes the
    data's normalisation and applies the one the bundle was trained with.
    """
    if backbones.is_arch(backbone):
        return backbones.extractor(backbone, weights, info)
    key = extractor_key(backbone, weights, info)
    p = backbones.resolve_path(str(backbone))
    b = read_bundle(p)
    binfo = data_info(b)
    fam = get_family(b["family"], where=f"backbone: {p}: family")
    learner = fam.learner(b["config"], binfo)
    learner.load_weights(b["weights"])
    feats = fam.features(learner)
    if feats is None:
        raise UserError(f"backbone: {p} is a {b['family']!r} bundle, which has no network to take features from")
    wanted = fam.input_channels(binfo)
    if info.channels > wanted:
        raise UserError(f"backbone: {p} was trained on {wanted}-channel images but the data has {info.channels}; "
                        f"use a backbone trained on colour images")
    pc = backbones.per_channel
    module = nn.Sequential(backbones.Renormalize(pc(info.mean, wanted), pc(info.std, wanted),
                                                 pc(binfo.mean, wanted), pc(binfo.std, wanted)),
                           feats, nn.Flatten())
    return backbones.frozen(module.cpu()), wanted, key


def extractor_key(backbone: str, weights: str, info: DataInfo) -> str:
    """`extractor`'s key without building the network: the arch's or the bundle file's identity (a stat)."""
    if backbones.is_arch(backbone):  # a torchvision arch or timm/<name>, as `extractor` reads it
        return backbones.extractor_key(backbone, weights, info)
    p = backbones.resolve_path(str(backbone))
    if not p.exists():
        raise UserError(f"backbone: {backbone!r} is neither a supported torchvision arch nor an existing bundle "
                        f"path; use e.g. resnet50, mobilenet_v2, vgg19 or a folder exported by `tuner best --export`")
    return f"bundle:{backbones.weights_key(str(p))}:{backbones.norm_key(info)}"


# networks built in this process, by their key and device: Ray reuses a trial's actor for the next trial,
# which then finds its backbone here. Building one from a bundle was most of a KNN trial (2-5 s of a 2.1-5.8 s
# trial on the shared 2-core machine, with the embeddings and tables already cached). Frozen: safe to share.
_BUILT: "OrderedDict[tuple[str, str], tuple[nn.Module, int]]" = OrderedDict()
BUILT_KEPT = 2


def built(backbone: str, weights: str, info: DataInfo, device: torch.device) -> tuple[nn.Module, int, str]:
    """`extractor`'s (module on `device`, channels, key), built once per process."""
    key = extractor_key(backbone, weights, info)
    hit = _BUILT.get((key, str(device)))
    if hit is None:
        module, channels, _ = extractor(backbone, weights, info)
        hit = (module.to(device).eval(), channels)
        _BUILT[(key, str(device))] = hit
        while len(_BUILT) > BUILT_KEPT:
            _BUILT.popitem(last=False)
    _BUILT.move_to_end((key, str(device)))
    return hit[0], hit[1], key


class Backbone:
    """uint8 NHWC images -> float32 (N, D) vectors: flattened normalised pixels, or a frozen network's features.

    With `state` (the module's weights from an exported bundle) a torchvision arch is built without its
    ImageNet file, so a knn / features bundle loads on a machine that has only the bundle.
    """

    def __init__(self, name: str, weights: str, info: DataInfo, device: torch.device | str = "cpu",
                 state: dict | None = None):
        self.name, self.weights, self.info = name, weights, info
        self.device = torch.device(device)
        module: nn.Module
        if name == PIXELS:
            module, channels, key = nn.Flatten(), info.channels, PIXELS
        elif state is not None:  # a bundle's own weights: this learner's alone
            module, channels, key = extractor(name, "none" if backbones.is_arch(name) else weights, info)
            module.load_state_dict(state)
        else:
            module, channels, key = built(name, weights, info, self.device)
        self.module = module.to(self.device).eval()
        self.pre = Preprocess(info.mean, info.std, info.channels, channels).to(self.device)
        # the data key says which images; this says what was done to them (the normalisation is not in data.key)
        self.key = f"{key}|mean={tuple(info.mean)}|std={tuple(info.std)}|{info.height}x{info.width}"
        self.num_params = sum(p.numel() for p in self.module.parameters())

    def splits(self, data, cache_dir: str | None, progress: bool = False) -> dict[str, np.ndarray]:
        """Features of train/val/test, embedded at most once per data set, backbone and image size."""
        return embeddings.cached(data, self.key, self.module, self.pre, self.device, cache_dir, progress=progress)

    def __call__(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        return embeddings.compute(self.module, self.pre, images, self.device,
                                  progress="embedding" if progress else None)


class EmbeddingLearner(Learner):
    """What knn and features share: the backbone (built on first use), the training embeddings, and the
    test split's cached features for the retrain's one test pass."""

    checkpoint_every_epoch = False  # one report per trial: nothing to resume part-way

    def __init__(self, cfg: dict, info: DataInfo, ctx: RunContext | None = None):
        ctx = ctx or RunContext()
        self.cfg, self.info, self.cache_dir = cfg, info, ctx.cache_dir
        self.device = torch.device(ctx.device)
        self.progress = ctx.progress
        self._backbone: Backbone | None = None
        self._backbone_state: dict | None = None   # from a bundle, before the backbone is built
        self.x_train: np.ndarray | None = None
        self.y_train: np.ndarray | None = None
        self._test: tuple[np.ndarray, np.ndarray] | None = None  # (the test images, their cached features)
        self.data_key = ""

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = Backbone(self.cfg["backbone"], self.cfg["backbone_weights"], self.info, self.device,
                                      state=self._backbone_state)
        return self._backbone

    def embed(self, data) -> dict[str, np.ndarray]:
        feats = self.backbone.splits(data, self.cache_dir, self.progress)
        self.x_train, self.y_train = feats["train"], np.asarray(data.y_train, dtype=np.int64)
        self._test = (data.x_test, feats["test"])
        self.data_key = f"{data.key}|{self.backbone.key}"
        return feats

    def references(self) -> tuple[np.ndarray, np.ndarray]:
        """The training embeddings and their labels, which `embed` (or a bundle's weights) set."""
        if self.x_train is None or self.y_train is None:
            raise RuntimeError("fit the learner (or load_weights) before predicting")
        return self.x_train, self.y_train

    def adopt(self, other: EmbeddingLearner) -> None:
        """Share what `other.embed` took (same backbone and data) instead of embedding again: the backbone,
        the training vectors and the test split's features (`tuner.fused.lookup`)."""
        self._backbone, self._backbone_state = other.backbone, None
        self.x_train, self.y_train = other.x_train, other.y_train
        self._test, self.data_key = other._test, other.data_key

    def query(self, images: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Features of images to predict, and the cache key of their split when they are the test split."""
        if self._test is not None and images is self._test[0]:
            return self._test[1], f"{self.data_key}|test"
        return self.backbone(images, self.progress), None

    def weights(self) -> dict:
        """The bundle: the training embeddings and labels (plus the backbone's own weights)."""
        out: dict[str, Any] = {"x_train": torch.from_numpy(np.array(self.x_train, dtype=np.float32)),
               "y_train": torch.from_numpy(np.asarray(self.y_train, dtype=np.int64))}
        if self.cfg["backbone"] != PIXELS:
            out["backbone"] = self.backbone.module.state_dict()
        return out

    def load_weights(self, w: dict) -> None:
        self.x_train = w["x_train"].numpy()
        self.y_train = w["y_train"].numpy()
        if "backbone" in w:
            self._backbone_state, self._backbone = dict(w["backbone"]), None

    # nothing to resume in a one-step fit: the state is what the bundle holds
    def state_dict(self) -> dict:
        return self.weights()

    def load_state_dict(self, state: dict) -> None:
        self.load_weights(state)


def warm_embeddings(family, constants: dict, searched: dict, data, ctx: RunContext) -> None:
    """Embed the images with every backbone the space can draw (`Family.warm_up` of the features family)."""
    from tuner.families.base import values

    backbone = values("backbone", constants, searched, PIXELS) or []
    weights = values("backbone_weights", constants, searched, "imagenet") or []
    for b in backbone:
        for w in weights:
            family.learner({**constants, "backbone": b, "backbone_weights": w}, data.info, ctx).embed(data)
