"""timm models as backbones: `timm/<name>` (e.g. timm/convnext_tiny, timm/efficientnetv2_s, or with a
weights tag, timm/convnext_tiny.fb_in1k) wherever a torchvision arch name is taken.

The body is timm's model built with `num_classes=0, global_pool=''`: it maps an image to its last feature
map (N, C, H, W), with timm's own module names, so timm's checkpoints load into it as they are. Its stages
(`units`, input side first, for `trainable_layers`) are timm's own coarse parameter groups (stem, then
each stage), the same grouping timm uses for layer-wise lr decay.

`weights: imagenet` means timm's default pretrained weights of that name. They are read from, in order:
  1. a local file: <torch hub dir>/checkpoints/timm/<name>.safetensors (or .pth, a torch state dict),
     for machines that cannot reach the Hugging Face hub;
  2. the Hugging Face hub cache (~/.cache/huggingface/hub, or $HF_HOME), where timm itself puts them;
  3. `search`'s preflight on the driver fetches a missing file into that cache (never a trial, never
     `validate`); offline, that is a UserError naming the local file and where it goes.
Every file is read as tensors only (safetensors, or torch.load(weights_only=True)).
The hooks into tuner.backbones are there: this module knows timm, that one when to ask it.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tuner.errors import UserError

PREFIX = "timm/"
HF_FILE = "model.safetensors"  # what every timm/* repository on the hub holds
HEAD_MODULES = ("head", "norm", "fc_norm")  # what timm models keep after the last stage, with global_pool=''



def is_timm(arch) -> bool:
    return isinstance(arch, str) and arch.startswith(PREFIX)


def model_name(arch: str) -> str:
    return arch[len(PREFIX):]


def require_timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm/<name> backbones need timm: "
                        "pip install 'tuner-hpo[timm]' (or pip install timm)") from None
    return timm


def _create(arch: str) -> Any:  # a timm model: nn.Module plus group_matcher, forward_features, ...
    return require_timm().create_model(model_name(arch), pretrained=False, num_classes=0, global_pool="")


@functools.lru_cache(maxsize=None)
def _feature_rank(arch: str) -> int:
    """How many dimensions the body's output has for one 224 px image, found on the meta device (no memory,
    no weights): 4 for a feature map, 3 for a transformer's tokens."""
    with torch.device("meta"):
        return _create(arch)(torch.zeros(1, 3, 224, 224)).dim()


def check_arch(arch: str, where: str = "arch") -> None:
    timm = require_timm()
    name = model_name(arch)
    if not timm.is_model(name):
        raise UserError(f"{where}: {arch!r} is not a timm model; give timm/<name> with a name from "
                        f"timm.list_models(), e.g. timm/convnext_tiny, timm/efficientnetv2_s, timm/resnet50")
    try:
        rank = _feature_rank(arch)
    except Exception:  # noqa: BLE001 - a model that needs a fixed input size or ops the meta device lacks
        rank = 4       # is checked again on real tensors when its body is built (feature_shape)
    if rank != 4:
        raise UserError(f"{where}: {arch} outputs tokens, not a feature map (a vision transformer); "
                        f"use a convolutional timm model such as timm/convnext_tiny or timm/efficientnetv2_s")


def body_parts(arch: str) -> tuple[nn.Module, list[list[nn.Module]]]:
    """A randomly initialised timm body and its stages, input side first (tuner.backbones makes them a Body)."""
    from timm.models import group_modules

    check_arch(arch)
    model = _create(arch)
    groups = [names for _, names in sorted(group_modules(model, model.group_matcher(coarse=True)).items())]
    if len(groups) > 1 and all(n.split(".")[0] in HEAD_MODULES for n in groups[-1]):
        # the final norm (ConvNeXt's head.norm) is its own group in timm; it belongs with the last stage, so
        # that trainable_layers: 1 trains that stage, not a norm layer alone
        groups[-2:] = [groups[-2] + groups[-1]]
    return model, [[model.get_submodule(n) for n in names] for names in groups]


# --------------------------------------------------------------------------- weights
def local_files(arch: str) -> list[Path]:
    """Where a user puts the weights by hand: the first one present is used."""
    folder = Path(torch.hub.get_dir()) / "checkpoints" / "timm"
    return [folder / f"{model_name(arch)}.safetensors", folder / f"{model_name(arch)}.pth"]


def hub_source(arch: str) -> tuple[str | None, str]:
    """(Hugging Face repository, file) of timm's default pretrained weights; repository None when timm has none."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name(arch))
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return repo or None, (getattr(cfg, "hf_hub_filename", None) or HF_FILE)


def hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment at each call (huggingface_hub reads it once, at
    import): $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def pretrained_file(arch: str) -> Path | None:
    """The weights file on this machine (a local file, else the hub cache), or None."""
    for f in local_files(arch):
        if f.is_file():
            return f
    repo, filename = hub_source(arch)
    if repo is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def missing(arch: str, where: str, why: str = "") -> UserError:
    repo, filename = hub_source(arch)
    local = local_files(arch)[0]
    source = (f"{filename} from https://huggingface.co/{repo}" if repo else
              f"a state dict of {model_name(arch)} (timm has no pretrained weights of that name)")
    return UserError(f"{where}: pretrained weights for {arch} are not here{why}: put {source} at {local} "
                     f"(or a torch state dict at {local.with_suffix('.pth')}), or set weights: none")


def fetch(arch: str, where: str = "weights") -> Path:
    """The weights file, fetched into the Hugging Face hub cache when missing (`search`'s preflight only)."""
    found = pretrained_file(arch)
    if found is not None:
        return found
    repo, filename = hub_source(arch)
    if repo is None:
        raise missing(arch, where)
    from huggingface_hub import hf_hub_download

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    try:
        _probe(f"{endpoint}/{repo}/resolve/main/{filename}")
        print(f"fetching pretrained weights for {arch}: {repo} -> {hub_cache()}", file=sys.stderr, flush=True)
        return Path(hf_hub_download(repo, filename, cache_dir=hub_cache(), etag_timeout=30, endpoint=endpoint))
    except Exception as exc:  # noqa: BLE001 - offline, refused, not found: all mean "not here"
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise missing(arch, where, f" and could not be fetched ({type(exc).__name__}: {reason})") from None


def _probe(url: str, timeout_s: float = 30.0) -> None:
    """Ask once whether the hub answers, so that offline is one error line at once rather than the hub
    client's five retries over half a minute, each logged."""
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    try:
        urlopen(Request(url, method="HEAD"), timeout=timeout_s).close()
    except HTTPError as exc:
        if exc.code in (401, 404):  # a gated or missing file; the hub's redirects to its CDN count as answers
            raise


def read_safetensors(path: Path, where: str) -> dict:
    """A .safetensors file (the hub's format): tensors only, nothing in it runs as code."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a broken file is the user's to replace
        raise UserError(f"{where}: {path} is not a readable safetensors file ({type(exc).__name__}: "
                        f"{str(exc)[:200]})") from None
