"""torchvision classification models as backbones: build by arch, load weights, cut the classifier off.

A backbone here is the `body`: the torchvision model's own modules, under their own names, from the
image up to the last feature map (N, C, H, W), without the global pooling and the classifier. Keeping
torchvision's names means a torchvision state dict, an ImageNet checkpoint and the `body.*` part of an
exported `transfer` bundle all load into it the same way.

The body is also cut into `units`, input side first, which cover every module of it; the first unit
is the stem. `trainable_layers: n` trains the last n units (ResNet: stem | layer1..4; VGG: the five
conv blocks; MobileNet / EfficientNet / ConvNeXt: the `features` stages).

Weights (`weights:`): `imagenet` (torchvision's DEFAULT weights, read from the torch hub cache; `search`
fetches a missing file there once, on the driver before Ray starts; trials and `validate` never download),
`none` (random init), or a path to a torchvision state dict or an exported bundle. Every file is read with
`torch.load(weights_only=True)`: nothing in it runs as code.

`extractor()` is what the knn / features families use: a frozen image -> (N, D) feature module.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from tuner import timm_backbones
from tuner.bundle import read_bundle
from tuner.errors import UserError
from tuner.types import DataInfo

# arch prefix -> how its body is cut. Checked in order, so vgg*_bn and regnet_x/y fall to their family.
ARCH_FAMILIES = ("resnet", "resnext", "wide_resnet", "vgg", "alexnet", "mobilenet_v2", "mobilenet_v3",
                 "efficientnet", "convnext", "densenet", "regnet", "mnasnet", "squeezenet", "shufflenet", "swin")
UNSUPPORTED = ("vit", "maxvit", "googlenet", "inception")  # not a plain image -> feature map -> head chain


def arch_family(arch: str) -> str | None:
    for fam in ARCH_FAMILIES:
        if arch.startswith(fam):
            return fam
    return None


def supported_archs() -> list[str]:
    import torchvision.models as tvm

    return [a for a in tvm.list_models(module=tvm) if arch_family(a)]


def is_arch(name) -> bool:
    """A backbone name rather than a path: a torchvision arch, or timm/<name> (checked by check_arch)."""
    return timm_backbones.is_timm(name) or (isinstance(name, str) and name in supported_archs())


def check_arch(arch, where: str = "arch") -> None:
    if timm_backbones.is_timm(arch):
        timm_backbones.check_arch(arch, where)
        return
    if not isinstance(arch, str) or arch not in supported_archs():
        hint = (" (its output is not a feature map; use a CNN arch)" if isinstance(arch, str)
                and arch.startswith(UNSUPPORTED) else "")
        raise UserError(f"{where}: {arch!r} is not a supported torchvision classification model{hint}; "
                        f"choose e.g. resnet18, resnet50, vgg16, vgg19, mobilenet_v2, efficientnet_b0, "
                        f"convnext_tiny, densenet121, or a timm model as timm/<name> "
                        f"(any of: {', '.join(supported_archs())})")


# --------------------------------------------------------------------------- building and cutting
@dataclass
class Body:
    """A torchvision model without its pooling and classifier."""

    arch: str
    module: nn.Module              # image -> feature map (torchvision: an nn.Sequential, children named as there)
    units: list[list[nn.Module]]   # input side first; together they hold every parameter of `module`


def _blocks_at_pools(features: nn.Sequential) -> list[list[nn.Module]]:
    """VGG / AlexNet `features` -> conv blocks, each ending at a max-pool."""
    blocks, cur = [], []
    for m in features:
        cur.append(m)
        if isinstance(m, nn.MaxPool2d):
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def make_body(arch: str) -> Body:
    """A randomly initialised body for `arch` (seed torch first for the same init every time)."""
    import torchvision.models as tvm

    if timm_backbones.is_timm(arch):
        module, units = timm_backbones.body_parts(arch)
        return Body(arch=arch, module=module, units=units)
    check_arch(arch)
    m = tvm.get_model(arch, weights=None)
    fam = arch_family(arch)
    if fam in ("resnet", "resnext", "wide_resnet"):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        body = nn.Sequential(OrderedDict((n, getattr(m, n)) for n in names))
        units = [[m.conv1, m.bn1, m.relu, m.maxpool], [m.layer1], [m.layer2], [m.layer3], [m.layer4]]
    elif fam in ("vgg", "alexnet"):
        body = nn.Sequential(OrderedDict(features=m.features))
        units = _blocks_at_pools(m.features)
    elif fam == "densenet":  # torchvision applies a ReLU after `features`
        body = nn.Sequential(OrderedDict(features=m.features, relu=nn.ReLU(inplace=False)))
        units = [[c] for c in m.features]
    elif fam == "regnet":
        body = nn.Sequential(OrderedDict(stem=m.stem, trunk_output=m.trunk_output))
        units = [[m.stem]] + [[c] for c in m.trunk_output]
    elif fam == "mnasnet":
        body = nn.Sequential(OrderedDict(layers=m.layers))
        units = [[c] for c in m.layers]
    elif fam == "shufflenet":
        names = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
        body = nn.Sequential(OrderedDict((n, getattr(m, n)) for n in names))
        units = [[m.conv1, m.maxpool], [m.stage2], [m.stage3], [m.stage4], [m.conv5]]
    elif fam == "swin":  # features are NHWC; `permute` turns them back to NCHW
        body = nn.Sequential(OrderedDict(features=m.features, norm=m.norm, permute=m.permute))
        units = [[c] for c in m.features]
        units[-1] = units[-1] + [m.norm]
    else:  # mobilenet_v2/v3, efficientnet(_v2), convnext, squeezenet: a `features` Sequential of stages
        body = nn.Sequential(OrderedDict(features=m.features))
        units = [[c] for c in m.features]
    return Body(arch=arch, module=body, units=units)


def drop_last(body: Body, n: int) -> Body:
    """Remove the last n units (replaced by Identity, so the remaining modules keep their names and
    pretrained weights still load): e.g. the CIFAR-10 seed's VGG19 cut after block 4."""
    n = int(n)
    if n <= 0:
        return body
    if timm_backbones.is_timm(body.arch):  # timm's stages feed a head norm sized for the last one
        raise UserError(f"drop_stages: {body.arch} is a timm model, whose stages cannot be cut off; "
                        f"set drop_stages: 0 or pick a smaller timm model")
    if n >= len(body.units):
        raise UserError(f"drop_stages: {body.arch} has {len(body.units)} stages (the stem included); "
                        f"drop at most {len(body.units) - 1}")
    parents = {id(child): (parent, name) for _, parent in body.module.named_modules()
               for name, child in parent.named_children()}
    for unit in body.units[len(body.units) - n:]:
        for m in unit:
            parent, name = parents[id(m)]
            setattr(parent, name, nn.Identity())
    return Body(arch=body.arch, module=body.module, units=body.units[:len(body.units) - n])


def freeze(body: Body, trainable_layers: int | str) -> list[nn.Module]:
    """Train only the last `trainable_layers` units (`all`: every one). Returns the frozen modules,
    which the learner keeps in eval mode so their batch-norm statistics do not drift."""
    n = len(body.units) if trainable_layers == "all" else min(int(trainable_layers), len(body.units))
    frozen = [m for unit in body.units[:len(body.units) - n] for m in unit]
    for m in frozen:
        m.requires_grad_(False)
    return frozen


@torch.no_grad()
def feature_shape(module: nn.Module, channels: int, height: int, width: int, arch: str) -> tuple[int, int, int]:
    """(C, H, W) of the feature map for one image of this size (a dummy forward pass)."""
    was_training = module.training
    module.eval()
    try:
        out = module(torch.zeros(1, channels, height, width))
    except RuntimeError as exc:
        raise UserError(f"dataset.image_size: {arch} cannot take {height}x{width} images ({str(exc).splitlines()[0]}); "
                        "set dataset.image_size to at least 32 "
                        "(224 is what ImageNet weights were trained at)") from None
    finally:
        module.train(was_training)
    return tuple(out.shape[1:])  # type: ignore[return-value]


# --------------------------------------------------------------------------- weights
def imagenet_url(arch: str) -> str:
    """Where `arch`'s DEFAULT ImageNet weights are fetched from: torchvision's URL, or the same file name
    under $TUNER_WEIGHTS_URL (a mirror for machines that cannot reach download.pytorch.org)."""
    import torchvision.models as tvm

    url = tvm.get_model_weights(arch).DEFAULT.url
    base = os.environ.get("TUNER_WEIGHTS_URL")
    return f"{base.rstrip('/')}/{os.path.basename(url)}" if base else url


def imagenet_file(arch: str) -> tuple[Path, str]:
    """Where torchvision keeps `arch`'s DEFAULT ImageNet weights (torch hub cache), and their URL."""
    url = imagenet_url(arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def fetch_imagenet(arch: str, where: str = "weights", timeout_s: float = 60.0) -> Path:
    """Put `arch`'s ImageNet file in the torch hub cache if it is not there yet, with torch's own download
    (progress bar on stderr; written to a .partial file and moved into place only once complete) and
    torchvision's hash check (the file name carries the first hex digits of its SHA-256). Offline, or on a
    wrong hash, a UserError that says which file to put where."""
    f, url = imagenet_file(arch)
    if f.is_file():
        return f
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    m = torch.hub.HASH_REGEX.search(f.name)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # a silent network must not hang `search` forever
    try:
        # offline stays one line (the error): ask whether the host answers before announcing a download
        try:
            urlopen(Request(url, method="HEAD", headers={"User-Agent": "torch.hub"})).close()
        except HTTPError:
            pass  # a host that refuses HEAD may still serve GET; the download says what is wrong
        print(f"fetching imagenet weights for {arch}: {url} -> {f.parent}", file=sys.stderr, flush=True)
        f.parent.mkdir(parents=True, exist_ok=True)
        # what load_state_dict_from_url(check_hash=True) runs, called directly so the driver does not
        # also load a file of up to half a gigabyte that only the trials need
        torch.hub.download_url_to_file(url, str(f), m.group(1) if m else None, progress=True)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, timeout, a bad hash: all mean "not here"
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise UserError(f"{where}: imagenet weights for {arch} are not here and could not be fetched "
                        f"({type(exc).__name__}: {reason}): put {f.name} (from {url}) in {f.parent}, "
                        f"or set weights: none") from None
    finally:
        socket.setdefaulttimeout(old)
    return f


def resolve_path(weights: str) -> Path:
    """A relative weights path is relative to where the user ran `tuner` (Ray runs trials in their own
    folders and records the original one in TUNE_ORIG_WORKING_DIR)."""
    p = Path(weights).expanduser()
    if not p.is_absolute():
        p = Path(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd())) / p
    return p


def _is_bundle_path(p: Path) -> bool:
    return p.is_dir() or p.name == "model.pt"


def check_weights(arch, weights, where: str = "weights", imagenet_file_needed: bool = True,
                  fetch: bool = False) -> None:
    """Everything about `weights:` that can be checked before Ray starts (file present, right kind).

    imagenet_file_needed=False checks the value but not whether this machine has the ImageNet file yet
    (`tuner validate` of a space meant for another machine; `search` checks the file before Ray starts).
    fetch=True downloads a missing ImageNet file (`search`'s preflight on the driver, never a trial)."""
    if not isinstance(weights, str) or not weights:
        raise UserError(f"{where}: expected imagenet, none or a path to a weights file, got {weights!r}")
    if weights == "none":
        return
    if weights == "imagenet" and timm_backbones.is_timm(arch):
        check_arch(arch, where)
        if fetch:
            timm_backbones.fetch(arch, where)
        elif imagenet_file_needed and timm_backbones.pretrained_file(arch) is None:
            raise timm_backbones.missing(arch, where, " (offline)")
        return
    if weights == "imagenet":
        if isinstance(arch, str) and imagenet_file_needed:
            check_arch(arch)
            if fetch:
                fetch_imagenet(arch, where)
                return
            f, url = imagenet_file(arch)
            if not f.is_file():
                raise UserError(f"{where}: imagenet weights for {arch} are not available offline: put {f.name} "
                                f"(from {url}) in {f.parent}, or set weights: none")
        return
    p = resolve_path(weights)
    if not p.exists():
        raise UserError(f"{where}: {p} does not exist; give imagenet, none, a torchvision state-dict file or "
                        f"a folder exported by `tuner best --export`")
    if _is_bundle_path(p):

        b = read_bundle(p)
        if b["family"] != "transfer":
            raise UserError(f"{where}: {p} is a {b['family']!r} bundle; transfer takes weights from a transfer "
                            f"bundle (a {b['family']} bundle can be a knn/features backbone)")
        if isinstance(arch, str) and b["config"].get("arch") != arch:
            raise UserError(f"{where}: {p} holds a {b['config'].get('arch')} but arch is {arch}; "
                            f"set arch: {b['config'].get('arch')}")


def _read_state_dict(p: Path, where: str) -> dict:
    if p.suffix == ".safetensors":
        return timm_backbones.read_safetensors(p, where)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the user's to replace
        raise UserError(f"{where}: {p} is not a readable torch weights file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None
    if isinstance(sd, dict) and sd.get("format", "").startswith("tuner-bundle"):
        return sd
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{where}: {p} is not a state dict (a mapping of names to tensors)")
    return sd


_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                           r"((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _load_into(body: Body, sd: dict, source: str, where: str) -> None:
    """Load the keys of `sd` that belong to the body; every body tensor must be found with its shape."""
    if arch_family(body.arch) == "densenet":  # old checkpoints name layers norm.1 etc.
        sd = {(_DENSENET_OLD.sub(r"\1\2", k)): v for k, v in sd.items()}
    own = body.module.state_dict()
    found = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in found]
    if missing:
        raise UserError(f"{where}: {source} does not fit {body.arch}: {len(missing)} of {len(own)} tensors missing "
                        f"or of another shape (e.g. {missing[0]}); is it a {body.arch} state dict?")
    body.module.load_state_dict(found)


def _imagenet_weights(arch: str, where: str) -> Path:
    """The file `weights: imagenet` reads for `arch`: torchvision's in the torch hub cache, or timm's."""
    if not timm_backbones.is_timm(arch):
        return imagenet_file(arch)[0]
    f = timm_backbones.pretrained_file(arch)
    if f is None:
        raise timm_backbones.missing(arch, where)
    return f


def load_weights(body: Body, weights: str, where: str = "weights") -> None:
    """Put `weights` (imagenet | none | a path) into the body, in place."""
    check_weights(body.arch, weights, where)
    if weights == "none":
        return
    if weights == "imagenet":
        f = _imagenet_weights(body.arch, where)
        _load_into(body, _read_state_dict(f, where), str(f), where)
        return
    p = resolve_path(weights)
    if _is_bundle_path(p):

        model_sd = read_bundle(p)["weights"]["model"]
        sd = {k[len("body."):]: v for k, v in model_sd.items() if k.startswith("body.")}
        _load_into(body, sd, str(p), where)
        return
    _load_into(body, _read_state_dict(p, where), str(p), where)


def weights_key(weights: str, seed: int = 0, arch: str | None = None) -> str:
    """Changes whenever the weights would: the file's path, size, ns mtime, inode and ctime (the ImageNet
    file of `arch` too: one replaced in the torch hub cache is another file); the seed of a random init."""
    if weights == "none":
        return f"none:seed{seed}"
    if weights == "imagenet":
        if arch is None:
            raise ValueError("weights_key: imagenet weights need the arch to find their file")
        f = _imagenet_weights(arch, "weights")
    else:
        p = resolve_path(weights)
        f = p / "model.pt" if p.is_dir() else p
    st = f.stat()
    return f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}"


# --------------------------------------------------------------------------- feature extractors
class Renormalize(nn.Module):
    """Undo the caller's normalisation and apply the one a bundle was trained with."""

    mean_in: torch.Tensor   # buffers, (1, C, 1, 1)
    std_in: torch.Tensor
    mean_out: torch.Tensor
    std_out: torch.Tensor

    def __init__(self, mean_in, std_in, mean_out, std_out):
        super().__init__()
        for name, v in (("mean_in", mean_in), ("std_in", std_in), ("mean_out", mean_out), ("std_out", std_out)):
            self.register_buffer(name, torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std_in + self.mean_in - self.mean_out) / self.std_out


def per_channel(v, channels: int) -> tuple[float, ...]:
    v = tuple(float(a) for a in v)
    return v * channels if len(v) == 1 and channels > 1 else v


def extractor(arch: str, weights: str, info: DataInfo) -> tuple[nn.Module, int, str]:
    """A frozen torchvision feature extractor: `arch` (with `weights`: imagenet | none | a state-dict path)
    minus its classifier, global-average pooled. (A bundle as backbone is `tuner.families.embedding.extractor`.)

    Returns (module, channels_wanted, key): the module maps a batch normalised with info.mean/std, with
    `channels_wanted` channels (grey data repeated to 3 by `engine.Preprocess`), to (N, D) features; it is
    in eval mode with gradients off. `key` identifies the features for `embeddings.cached`.
    """
    torch.manual_seed(0)  # weights: none gives the same random features every time
    body = make_body(arch)
    load_weights(body, weights, "backbone weights")
    module = nn.Sequential(body.module, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return frozen(module), 3, extractor_key(arch, weights, info)


def extractor_key(arch: str, weights: str, info: DataInfo) -> str:
    """`extractor`'s key, without building the network (a file's stat, not its contents)."""
    return f"tv:{arch}:{weights_key(weights, arch=arch)}:gap:{norm_key(info)}"


def norm_key(info: DataInfo) -> str:
    return f"mean={','.join(f'{m:.4f}' for m in info.mean)}:std={','.join(f'{s:.4f}' for s in info.std)}"


def frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module
