"""Checkpoints, their whole life: the fields of the dict, writing it (atomic), the training state a
run resumes from, calibrated and inference-only copies, reading it, and the scoring spec
(`InferenceModel`) every scoring path takes from it.

A checkpoint is a dict of tensors and plain values (no classes), written atomically. It is read
with `torch.load(weights_only=True)`: a file from elsewhere is data, never code, so a crafted
pickle that would run something on load is refused with a one-line CheckpointError.

Fields: model_name, class_names, model_state, config (the run's settings), epoch, best_val_acc,
history; the training state optimizer_state, scheduler_state, rng_state (last.pt only); the
calibration temperature and conformal (best.pt and exports); ood, the out-of-distribution detector's
statistics and threshold (brainlib.ood; best.pt after training, and exports); exported_from (exports).
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_path
from .config import CLASS_NAMES, DEFAULT_CHECKPOINT, LOCATION_FIELDS, REPO_ROOT, Config, build_config
from .errors import CheckpointError
from .models import create_model, fold_for_inference, model_entry

REQUIRED_FIELDS = ("model_name", "class_names", "model_state")
# what an inference-only copy keeps: no optimizer, scheduler or RNG state
EXPORT_FIELDS = (
    "model_name", "class_names", "config", "epoch", "best_val_acc", "history", "temperature", "conformal", "ood"
)  # fmt: skip


BEST, LAST = "best.pt", "last.pt"
# what a run's settings keep from the command that scores a checkpoint, not from its trainer
HERE_FIELDS = (*LOCATION_FIELDS, "device", "fast", "fast_per_class", "precision", "num_threads")


def best_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a run selected on validation: what evaluate, 05 and the label audit score."""
    return Path(run_dir) / "checkpoints" / BEST


def default_checkpoint() -> Path:
    """The committed default model (config.DEFAULT_CHECKPOINT): what `predict` and the model card use."""
    path = REPO_ROOT / DEFAULT_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"the default checkpoint {DEFAULT_CHECKPOINT} is missing: pass --checkpoint")
    return path


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
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is another kind of file
        raise CheckpointError(f"{path} is not a checkpoint (not a PyTorch file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message would advise weights_only=False: exactly what must not happen
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain values; refused (a checkpoint is read as data only)"
        ) from None
    except Exception as err:  # truncated or damaged
        raise CheckpointError(f"checkpoint {path} could not be read: {type(err).__name__}: {_one_line(err)}") from None
    if not isinstance(state, dict) or set(REQUIRED_FIELDS) - set(state):
        raise CheckpointError(
            f"checkpoint {path} lacks {sorted(set(REQUIRED_FIELDS) - set(state or {}))}: not a brainlib checkpoint"
        )
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
        raise CheckpointError(
            f"checkpoint weights do not fit model {state['model_name']!r}: {_one_line(err)}"
        ) from None
    return model.to(device).eval()


def training_state(
    cfg: Config, model: nn.Module, optimizer, scheduler, epoch: int, best_val_acc: float, history: list, ema=None
) -> dict:
    """The dict last.pt holds after an epoch: weights, settings and what resume needs. With a weight
    average (brainlib.ema), `model_state` holds the averaged weights (what is scored) and the
    trained ones go to `train_model_state`, for resuming."""
    averaged = {} if ema is None else {"train_model_state": model.state_dict(), "ema_updates": ema.updates}
    return {
        **averaged,
        "model_name": cfg.model,
        "class_names": list(CLASS_NAMES),
        "config": cfg.__dict__.copy(),
        "epoch": epoch,
        "model_state": (ema.module if ema is not None else model).state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "scheduler_state": scheduler.state_dict(),
        "best_val_acc": best_val_acc,
        "history": history,
        "rng_state": torch.get_rng_state(),
    }


def save_epoch(ckpt_dir: str | Path, state: dict, calibration: dict | None = None) -> None:
    """After an epoch: best.pt (when `calibration` is given: the epoch improved, and its temperature
    and conformal thresholds were fitted on the same validation logits that selected it), then last.pt."""
    if calibration is not None:
        save_checkpoint({**state, **calibration}, Path(ckpt_dir) / BEST)
    save_checkpoint(state, Path(ckpt_dir) / LAST)


@dataclass
class Resume:
    """Where an interrupted run continues: the epoch after last.pt's, with its best and history."""

    next_epoch: int
    best_val_acc: float
    history: list


def resume_training(
    ckpt_dir: str | Path, model: nn.Module, optimizer, scheduler, device: str, ema=None
) -> Resume | None:
    """Loads last.pt's weights, optimizer and scheduler state (and weight average) into the given
    objects; None when the run has no last.pt yet."""
    path = Path(ckpt_dir) / LAST
    if not path.exists():
        return None
    state = load_checkpoint(path, device)
    if (ema is not None) != ("train_model_state" in state):
        raise CheckpointError(f"{path} was trained {'without' if ema is not None else 'with'} a weight average")
    model.load_state_dict(state.get("train_model_state", state["model_state"]))
    if ema is not None:
        ema.load(state["model_state"], state["ema_updates"])
    optimizer.load_state_dict(state["optimizer_state"])
    scheduler.load_state_dict(state["scheduler_state"])
    return Resume(state["epoch"] + 1, state["best_val_acc"], state["history"])


CALIBRATION_FIELDS = ("temperature", "conformal", "ood")


def write_calibrated_copy(src: str | Path, calibration: dict, out: str | Path) -> Path:
    """A copy of checkpoint `src` at `out` with the given temperature, conformal thresholds and/or OOD
    statistics (brainlib.calibration fits them); `out` may be `src` (written atomically)."""
    return save_checkpoint(
        load_checkpoint(src) | {k: calibration[k] for k in CALIBRATION_FIELDS if k in calibration}, out
    )


def trained_config(checkpoint: str | Path, cfg: Config) -> Config:
    """Scoring a checkpoint in a fresh folder: its training settings (input size, seed and so the
    val split its temperature is fitted on, recipe) with this command's locations and device."""
    trained = {k: v for k, v in (load_checkpoint(checkpoint).get("config") or {}).items() if k not in HERE_FIELDS}
    return build_config(trained, {k: getattr(cfg, k) for k in HERE_FIELDS})


@dataclass
class InferenceModel:
    """The scoring spec of a checkpoint: everything a scoring path needs from it (model, input and
    cache sizes, temperature, conformal thresholds, CAM layer)."""

    model: nn.Module
    model_name: str
    image_size: int  # the side the weights were trained at
    cache_size: int  # the side images are decoded to before resizing
    temperature: float | None  # fitted on the run's validation split; None: not calibrated
    conformal: dict | None  # split-conformal thresholds per alpha (calibration.conformal_state); None: no sets
    ood: dict | None  # the out-of-distribution detector (brainlib.ood); None: every input is answered
    state: dict  # the rest (config, epoch, history)

    def replace(self, **changes) -> InferenceModel:
        return dataclasses.replace(self, **changes)

    def scoring_config(self, cfg: Config) -> Config:
        """The run's settings with this checkpoint's input and cache sizes (the sizes its weights
        were trained at), for batching its inputs."""
        return cfg.replace(image_size=self.image_size, cache_size=self.cache_size)

    @property
    def cam_layer(self) -> nn.Module:
        return model_entry(self.model_name).cam_layer(self.model)


def load_for_inference(path: str | Path, device: str = "cpu") -> InferenceModel:
    state = load_checkpoint(path)
    model = model_from_state(state, device)  # refuses unknown models
    # BatchNorm and padding folded into the convolutions: the same outputs (to float rounding), fewer
    # passes over memory
    model = fold_for_inference(model).to(memory_format=torch.channels_last)
    trained = state.get("config") or {}
    temperature = state.get("temperature")
    return InferenceModel(
        model=model,
        model_name=state["model_name"],
        image_size=int(trained.get("image_size", model_entry(state["model_name"]).input_size)),
        cache_size=int(trained.get("cache_size", 256)),
        temperature=None if temperature is None else float(temperature),
        conformal=state.get("conformal"),
        ood=state.get("ood"),
        state=state,
    )


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = False) -> Path:
    """A small, inference-only copy: weights (fp16 with half=True, which halves the file; scoring
    upcasts them to fp32), class names, config, temperature, epoch and history."""
    state = load_checkpoint(src)
    keep = {k: state[k] for k in EXPORT_FIELDS if k in state}
    keep["model_state"] = {
        k: v.half() if half and v.is_floating_point() else v for k, v in state["model_state"].items()
    }
    keep["exported_from"] = str(src)
    return save_checkpoint(keep, dst)
