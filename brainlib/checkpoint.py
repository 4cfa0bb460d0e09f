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

An ensemble (`ensemble_state`) is a checkpoint too: instead of model_state it holds `members`, each
member's model_name, model_state and config, and `flip` (flip test-time augmentation); its own
temperature, conformal thresholds and OOD detector are fitted for its averaged output. Every scoring
path takes it through `load_for_inference`.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import cpu_engine
from .atomic import atomic_path
from .config import CLASS_NAMES, DEFAULT_CHECKPOINT, LOCATION_FIELDS, REPO_ROOT, Config, build_config
from .errors import CheckpointError, SettingsError
from .models import (
    Ensemble,
    check_input_sides,
    ensemble_name,
    fold_for_inference,
    model_entry,
)

REQUIRED_FIELDS = ("model_name", "class_names")
WEIGHT_FIELDS = ("model_state", "members")  # a model's weights, or an ensemble's members
# the settings that fix a run's validation carve (with its seed and the data copy): an ensemble's members
# must share them
CARVE_FIELDS = ("val_fraction", "exclude_list", "cache_size")
# what an inference-only copy keeps: no optimizer, scheduler or RNG state
EXPORT_FIELDS = (
    "model_name", "class_names", "config", "epoch", "best_val_acc", "history", "temperature", "conformal", "ood",
    "calibrated_size", "val_digest",
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
    if not any(isinstance(state.get(k), (dict, list)) for k in WEIGHT_FIELDS):
        raise CheckpointError(f"checkpoint {path} holds no weights (model_state or members): not a brainlib checkpoint")
    return state


def _entry(state: dict):
    """The registry entry of a checkpoint's model: a name this code does not know makes the file a bad
    checkpoint (exit 4), not bad settings."""
    try:
        return model_entry(state["model_name"])
    except SettingsError as err:
        raise CheckpointError(str(err)) from None


def model_from_state(state: dict, device: str = "cpu") -> nn.Module:
    """The checkpoint's model with its weights, in eval mode (fp16 exports are upcast to fp32)."""
    if "model_state" not in state:
        raise CheckpointError(
            f"this checkpoint is an ensemble ({state['model_name']}): score it through load_for_inference"
        )
    if tuple(state["class_names"]) != CLASS_NAMES:
        raise CheckpointError(f"checkpoint classes {state['class_names']} differ from this code's {list(CLASS_NAMES)}")
    model = _entry(state).architecture(len(CLASS_NAMES))
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["model_state"].items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint weights do not fit model {state['model_name']!r}: {_one_line(err)}"
        ) from None
    return model.to(device).eval()


def training_state(
    cfg: Config,
    model: nn.Module,
    optimizer,
    scheduler,
    epoch: int,
    best_val_acc: float,
    history: list,
    ema=None,
    val_digest: str | None = None,
) -> dict:
    """The dict last.pt holds after an epoch: weights, settings and what resume needs. With a weight
    average (brainlib.ema), `model_state` holds the averaged weights (what is scored) and the
    trained ones go to `train_model_state`, for resuming. `val_digest` (data.split_digest) names
    the validation carve the epoch is selected on."""
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
        **({"val_digest": val_digest} if val_digest else {}),
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


CALIBRATION_FIELDS = ("temperature", "conformal", "ood", "calibrated_size")


def uncalibrated(src: str | Path, out: str | Path) -> Path:
    """A copy of checkpoint `src` at `out` without temperature, conformal thresholds and OOD detector, so
    that calibrate fits them all again: for a checkpoint calibrated on other pixels than it will score
    (a GPU run's, fitted on the compact WebP copy, where the default scored 568 of its 575 validation
    images right against 570 on the original files)."""
    return save_checkpoint({k: v for k, v in load_checkpoint(src).items() if k not in CALIBRATION_FIELDS}, out)


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
    cache sizes, temperature, conformal thresholds, CAM layers)."""

    model: nn.Module
    model_name: str
    image_size: int  # the side it scores at: the recipe's test_image_size, else the side it was trained at
    cache_size: int  # the side images are decoded to before resizing
    temperature: float | None  # fitted on the run's validation split; None: not calibrated
    conformal: dict | None  # split-conformal thresholds per alpha (calibration.conformal_state); None: no sets
    ood: dict | None  # the out-of-distribution detector (brainlib.ood); None: every input is answered
    state: dict  # the rest (config, epoch, history)
    # Grad-CAM and the OOD features look at these layers (one per member of an ensemble) of cam_model:
    # the model itself, or for an ensemble the same members without the mirror view, since a layer
    # that runs twice per forward would give the CAM two activations for one layer
    cam_model: nn.Module
    cam_layers: list[nn.Module]

    @property
    def engine(self) -> str:
        """What runs `model` (brainlib.cpu_engine): "onnxruntime" for a single checkpoint scored on the
        CPU, "torch" on a GPU and for an ensemble."""
        return "onnxruntime" if isinstance(self.model, cpu_engine.OnnxRuntimeModel) else "torch"

    @property
    def feature_layers(self) -> list[nn.Module]:
        """The modules of `model` whose forward hooks see the OOD features: the runtime's feature taps,
        or in PyTorch the CAM layers."""
        return list(self.model.feature_taps) if self.engine == "onnxruntime" else self.cam_layers

    def replace(self, **changes) -> InferenceModel:
        return dataclasses.replace(self, **changes)

    def scoring_config(self, cfg: Config) -> Config:
        """The run's settings with this checkpoint's input and cache sizes (the sizes its weights
        were trained at), for batching its inputs."""
        return cfg.replace(image_size=self.image_size, cache_size=self.cache_size)


def _scoring_model(state: dict, device: str) -> nn.Module:
    # BatchNorm and padding folded into the convolutions: the same outputs (to float rounding), fewer
    # passes over memory
    return fold_for_inference(model_from_state(state, device)).to(memory_format=torch.channels_last)


def _trained_size(state: dict) -> int:
    size = (state.get("config") or {}).get("image_size")
    return int(size) if size else _entry(state).input_size


def scoring_size(state: dict) -> int:
    """The side a checkpoint scores images at: its recipe's test_image_size, else its training side."""
    return int((state.get("config") or {}).get("test_image_size") or 0) or _trained_size(state)


def calibrated_at_scoring_size(state: dict) -> bool:
    """Whether its temperature, conformal thresholds and OOD detector were fitted on images at the side it
    scores at. Each epoch's calibration is fitted at the training side; a checkpoint scored at another
    side is refitted there once trained (train.train) and records it; older checkpoints have one side."""
    calibrated = int(state.get("calibrated_size") or 0)
    return not calibrated or calibrated == scoring_size(state)


def scored_at(src: str | Path, size: int, out: str | Path) -> Path:
    """A copy of checkpoint `src` at `out` that scores at `size` px. Its calibration stays, marked with
    the side it was fitted at, so load_for_inference ignores it at another side (and callers fit it
    again there) instead of taking an old checkpoint's one side for this one."""
    state = load_checkpoint(src)
    if not state.get("members"):  # an ensemble resizes the input to each member's own side
        _entry(state)  # an unknown model makes the file a bad checkpoint, before the side check calls it bad settings
        check_input_sides(state["model_name"], size)
    return save_checkpoint(
        state
        | {"config": (state.get("config") or {}) | {"test_image_size": int(size)}}
        | {"calibrated_size": int(state.get("calibrated_size") or scoring_size(state))},
        out,
    )


def load_for_inference(path: str | Path, device: str = "cpu") -> InferenceModel:
    state = load_checkpoint(path)
    members = state.get("members")
    if members:  # refuses unknown models, as model_from_state does
        models = [_scoring_model(m, device) for m in members]
        sizes = [scoring_size(m) for m in members]
        model = Ensemble(models, sizes, flip=bool(state.get("flip"))).eval()
        cam_model = Ensemble(models, sizes).eval() if model.flip else model
        cam_layers = [model_entry(m["model_name"]).cam_layer(net) for m, net in zip(members, models)]
        image_size = max(sizes)
    else:
        model = cam_model = _scoring_model(state, device)
        cam_layers = [model_entry(state["model_name"]).cam_layer(model)]
        image_size = scoring_size(state)
    if not members and cpu_engine.engine_for(device) == "onnxruntime":
        model = cpu_engine.session_model(cam_model, cam_layers, image_size)
    # fitted on images of another side than it scores at: as good as absent, so it is fitted again
    fitted = state if calibrated_at_scoring_size(state) else {}
    temperature = fitted.get("temperature")
    return InferenceModel(
        model=model,
        model_name=state["model_name"],
        image_size=image_size,
        cache_size=int((state.get("config") or {}).get("cache_size", 256)),
        temperature=None if temperature is None else float(temperature),
        conformal=fitted.get("conformal"),
        ood=fitted.get("ood"),
        state=state,
        cam_model=cam_model,
        cam_layers=cam_layers,
    )


def _carve(state: dict) -> dict:
    cfg = state.get("config") or {}
    return {"validation seed": Config.from_dict(cfg).validation_seed} | {k: cfg.get(k) for k in CARVE_FIELDS}


def check_one_carve(states: list[dict], names: list[str]) -> None:
    """Refuse checkpoints (their states, named by `names`) that were not all selected on one validation
    carve: same validation seed, fraction, exclusions and cache side, and, where every one records it
    (val_digest), the same images. Their validation scores are comparable, and an ensemble of them can
    be calibrated, only on a carve that every one held out."""
    first = _carve(states[0])
    digests = {s.get("val_digest") for s in states}
    for name, state in zip(names[1:], states[1:]):
        carve = _carve(state)
        differ = [f"{k} {carve[k]!r} vs {first[k]!r}" for k in carve if carve[k] != first[k]]
        if None not in digests and state["val_digest"] != states[0]["val_digest"]:
            differ.append("the validation images differ (another copy of the data)")
        if differ:
            raise CheckpointError(
                f"{name} was selected on another validation carve than {names[0]} ({'; '.join(differ)}): "
                "an ensemble is calibrated, and checkpoints are compared on validation, on one carve that every one held out"
            )


def ensemble_state(paths: list[str | Path], flip: bool = False) -> dict:
    """One checkpoint from several (seeds or backbones) and/or flip test-time augmentation, without
    temperature, conformal thresholds or OOD detector: those are fitted for the ensemble's output on
    the validation carve (brainlib.calibration.calibrate_checkpoint), which is why its members must
    have been selected on one carve: same split seed, validation fraction, exclusions and cache side, and,
    where the members record it (val_digest, written by training since it exists), the same images."""
    if not paths:
        raise CheckpointError("an ensemble needs at least one member checkpoint")
    members = []
    for path in paths:
        state = load_checkpoint(path)
        if "members" in state:
            raise CheckpointError(f"{path} is an ensemble already: give its members instead")
        model_from_state(state)  # refuses another class list, an unknown model or weights that do not fit
        members.append(
            {
                k: state[k]
                for k in ("model_name", "class_names", "model_state", "config", "epoch", "best_val_acc", "val_digest")
                if k in state
            }
            | {"source": str(path)}
        )
    check_one_carve(members, [str(p) for p in paths])
    digests = {m.get("val_digest") for m in members}
    return {
        # None when a member predates the digest: then only the settings above were checked
        "val_digest": None if None in digests else members[0]["val_digest"],
        "model_name": ensemble_name([m["model_name"] for m in members], flip),
        "class_names": list(CLASS_NAMES),
        # the ensemble's input side: the largest its members score at (each member resizes to its own)
        "config": (members[0].get("config") or {})
        | {"image_size": max(scoring_size(m) for m in members), "test_image_size": 0},
        "members": members,
        "flip": flip,
    }


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = False, trained_weights: bool = False) -> Path:
    """A small, inference-only copy: weights (fp16 with half=True, which halves the file; scoring
    upcasts them to fp32), class names, config, temperature, epoch and history. With trained_weights,
    a weight-averaged run's last.pt gives its trained weights instead of the average (the same
    training without the average: what the average is compared with), uncalibrated."""
    state = load_checkpoint(src)
    if trained_weights:
        if "train_model_state" not in state:
            raise CheckpointError(
                f"{src} holds no trained weights besides its average (a weight-averaged run's last.pt does)"
            )
        # best_val_acc was measured on the average: these weights' accuracy is unknown until scored
        drop = ("temperature", "conformal", "ood", "best_val_acc")
        state = {k: v for k, v in state.items() if k not in drop} | {
            "model_state": state["train_model_state"],
            "config": (state.get("config") or {}) | {"ema_decay": 0.0},
        }
    keep = {k: state[k] for k in EXPORT_FIELDS if k in state}

    def weights(model_state: dict) -> dict:
        return {k: v.half() if half and v.is_floating_point() else v for k, v in model_state.items()}

    if "members" in state:
        keep["members"] = [m | {"model_state": weights(m["model_state"])} for m in state["members"]]
        keep["flip"] = bool(state.get("flip"))
    else:
        keep["model_state"] = weights(state["model_state"])
    keep["exported_from"] = str(src)
    return save_checkpoint(keep, dst)


def weight_states(state: dict) -> list[dict]:
    """The model_state dicts of a checkpoint: its own, or each ensemble member's."""
    return [m["model_state"] for m in state["members"]] if "members" in state else [state["model_state"]]


def weights_bytes(state: dict) -> int:
    """Bytes of the model weights a checkpoint ships (every member's), without the optimizer state
    a training checkpoint also carries (EfficientNet-Lite1: 16 MB of weights in a 49 MB best.pt)."""
    return sum(t.numel() * t.element_size() for w in weight_states(state) for t in w.values() if torch.is_tensor(t))
