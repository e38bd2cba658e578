"""The space file's `tracking:` block: where a search also logs its trials and its retrained model.

    tracking:
      mlflow: {uri: http://127.0.0.1:5000, experiment: cars, register: cars_classifier}
      wandb: {project: cars, mode: offline}

MLflow: one parent run for the search, each trial a run under it (its parameters, its metrics every
epoch, its end status), and the retrained best logged on the parent run as an MLflow model (a pyfunc that
takes uint8 images, with its signature) beside the test metrics; `register: NAME` also registers it in
the model registry. W&B: the same as runs of one group (job types `trial` and `search`), the model as an
artifact; `mode: offline` writes the runs to disk only (`wandb sync` uploads them later).

This module only reads and checks the block (standard library only); the logging is
tuner/search/tracking.py. The packages are an extra: `pip install 'tuner-hpo[tracking]'`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tuner.errors import UserError

WANDB_MODES = ("online", "offline", "disabled")
INSTALL = "pip install 'tuner-hpo[tracking]'"


@dataclass
class MlflowConfig:
    # tracking server or store; unset: MLflow's own default ($MLFLOW_TRACKING_URI, else ./mlflow.db in MLflow 3)
    uri: str | None = None
    experiment: str | None = None  # the MLflow experiment; unset: the tuner experiment's name
    register: str | None = None    # also register the retrained model under this name in the model registry


@dataclass
class WandbConfig:
    project: str | None = None     # unset: the tuner experiment's name
    mode: str = "online"           # online | offline (files only, `wandb sync` later) | disabled
    entity: str | None = None      # a W&B team or user; unset: the logged-in user's default
    dir: str | None = None         # where the run files go; unset: W&B's default (./wandb, or $WANDB_DIR)


@dataclass
class TrackingConfig:
    mlflow: MlflowConfig | None = None
    wandb: WandbConfig | None = None

    @property
    def any(self) -> bool:
        return self.mlflow is not None or self.wandb is not None


BLOCKS = {"mlflow": MlflowConfig, "wandb": WandbConfig}


def _block(cls, raw, where: str):
    """One backend's mapping -> its dataclass: known keys, strings only (a name, a URI, a folder)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        example = ", ".join(f.name + ": ..." for f in dataclasses.fields(cls)[:2])
        raise UserError(f"{where} must be a mapping such as {{{example}}}, "
                        f"got {raw!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in raw.items():
        if key not in names:
            raise UserError(f"{where}: unknown key {key!r}; known keys: {', '.join(names)}")
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise UserError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return cls(**raw)


def parse(raw, file: str) -> TrackingConfig:
    """The `tracking:` block, checked; a UserError naming the file and the dotted key."""
    if raw is None:
        return TrackingConfig()
    if not isinstance(raw, dict):
        raise UserError(f"{file}: tracking must be a mapping such as {{mlflow: {{uri: http://127.0.0.1:5000}}}}, "
                        f"got {raw!r}")
    for key in raw:
        if key not in BLOCKS:
            raise UserError(f"{file}: unknown key tracking.{key}; known keys: {', '.join(BLOCKS)}")
    blocks = {k: _block(BLOCKS[k], v, f"{file}: tracking.{k}") for k, v in raw.items()}
    wandb = blocks.get("wandb")
    if wandb is not None and wandb.mode not in WANDB_MODES:
        raise UserError(f"{file}: tracking.wandb.mode is {wandb.mode!r}; choose one of {', '.join(WANDB_MODES)}")
    return TrackingConfig(**blocks)


def to_yaml(cfg: TrackingConfig) -> dict:
    """The block as space.yaml records it (only the backends given, only the keys set)."""
    return {k: {f: v for f, v in dataclasses.asdict(getattr(cfg, k)).items() if v is not None}
            for k in BLOCKS if getattr(cfg, k) is not None}


def require(cfg: TrackingConfig) -> None:
    """Before Ray starts: the packages the block needs are installed, or exit 2 with the line that installs them."""
    for name, needed in (("mlflow", cfg.mlflow), ("wandb", cfg.wandb)):
        if needed is None:
            continue
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"tracking.{name} needs the {name} package: {INSTALL} (or pip install {name})") from None


def schema() -> dict:
    """The block's JSON Schema, from the dataclasses above (for `tuner schema`)."""
    def block(cls) -> dict:
        props: dict[str, dict] = {f.name: {"type": ["string", "null"]} for f in dataclasses.fields(cls)}
        if cls is WandbConfig:
            props["mode"] = {"enum": list(WANDB_MODES), "default": "online"}
        return {"type": ["object", "null"], "properties": props, "additionalProperties": False}

    return {"type": ["object", "null"], "properties": {k: block(c) for k, c in BLOCKS.items()},
            "additionalProperties": False, "description": "log trials and the retrained model to MLflow / W&B"}

