"""Checkpoints: the one place that writes, reads, exports and rebuilds models from them.

A checkpoint is a dict of tensors and plain values (no classes), written atomically. It is read
with `torch.load(weights_only=True)`: a file from elsewhere is data, never code, so a crafted
pickle that would run something on load is refused with a one-line CheckpointError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path
from .config import CLASS_NAMES
from .errors import CheckpointError
from .models import create_model, model_entry

REQUIRED_FIELDS = ("model_name", "class_names", "model_state")
# what an inference-only copy keeps: no optimizer, scheduler or RNG state
EXPORT_FIELDS = ("model_name", "class_names", "config", "epoch", "best_val_acc", "history", "temperature", "conformal")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write to a temp file in the same folder, fsync, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    """The checkpoint's dict, loaded as data only (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling refused (not plain data), truncated or not a torch file
        first = _one_line(err).split(" Check the documentation")[0]
        raise CheckpointError(f"checkpoint {path} could not be read as data: {type(err).__name__}: {first}") from None
    if not isinstance(state, dict) or set(REQUIRED_FIELDS) - set(state):
        raise CheckpointError(f"checkpoint {path} lacks {sorted(set(REQUIRED_FIELDS) - set(state or {}))}: not a brainlib checkpoint")
    return state


def model_from_state(state: dict, device: str = "cpu") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode (fp16 exports are upcast to fp32)."""
    if tuple(state["class_names"]) != CLASS_NAMES:
        raise CheckpointError(f"checkpoint classes {state['class_names']} differ from this code's {list(CLASS_NAMES)}")
    try:
        model = create_model(state["model_name"])
    except KeyError as err:
        raise CheckpointError(str(err).strip("\"'")) from None
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model_state"].items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint weights do not fit model {state['model_name']!r}: {_one_line(err)}") from None
    return model.to(device).eval()


@dataclass
class InferenceModel:
    """Everything scoring needs from a checkpoint."""

    model: nn.Module
    model_name: str
    image_size: int  # the side the weights were trained at
    cache_size: int  # the side images are decoded to before resizing
    temperature: float | None  # fitted on the run's validation split; None: not calibrated
    conformal: dict | None  # split-conformal thresholds per alpha (infer.conformal_state); None: no sets
    state: dict  # the rest (config, epoch, history)

    def replace(self, **changes) -> InferenceModel:
        return dataclasses.replace(self, **changes)

    @property
    def cam_layer(self) -> nn.Module:
        return model_entry(self.model_name).cam_layer(self.model)


def load_for_inference(path: str | Path, device: str = "cpu") -> InferenceModel:
    state = load_checkpoint(path)
    model = model_from_state(state, device).to(memory_format=torch.channels_last)  # refuses unknown models
    trained = state.get("config") or {}
    temperature = state.get("temperature")
    return InferenceModel(
        model=model,
        model_name=state["model_name"],
        image_size=int(trained.get("image_size", model_entry(state["model_name"]).input_size)),
        cache_size=int(trained.get("cache_size", 256)),
        temperature=None if temperature is None else float(temperature),
        conformal=state.get("conformal"),
        state=state,
    )


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = False) -> Path:
    """A small, inference-only copy: weights (fp16 with half=True, which halves the file; scoring
    upcasts them to fp32), class names, config, temperature, epoch and history."""
    state = load_checkpoint(src)
    keep = {k: state[k] for k in EXPORT_FIELDS if k in state}
    keep["model_state"] = {k: v.half() if half and v.is_floating_point() else v for k, v in state["model_state"].items()}
    keep["exported_from"] = str(src)
    return save_checkpoint(keep, dst)
