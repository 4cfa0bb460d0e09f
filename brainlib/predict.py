"""Predict single images with a checkpoint: class, calibrated probabilities, optional Grad-CAM.

With a checkpoint that stores conformal thresholds (infer.conformal_state), each image also gets
its prediction set at 1 - alpha (default 0.99): every class the model cannot rule out at that
level. A set of more than one class is flagged "uncertain: review".

Each image is handled on its own: a missing or unreadable file yields an error entry for that
image while the others are still predicted. Scoring goes through the same path as `evaluate`
(decode with data.read_gray at the checkpoint's cache size, CachedBatches, infer.predict_logits
in fp32), so both give the same answer for the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .checkpoint import InferenceModel, load_for_inference
from .config import CLASS_NAMES, REPO_ROOT
from .errors import CheckpointError, SettingsError
from .infer import calibrate, predict_logits
from .loader import CachedBatches
from .stats import prediction_sets

# the first that exists: the committed default (robust to other scanners and export pipelines) first
DEFAULT_CHECKPOINTS = ("checkpoints/efficientnet_lite0_robust.pt", "checkpoints/efficientnet_lite0.pt", "checkpoints/seed_cnn.pt")
# below this fraction of the model's input side, an image holds too little detail to trust
SMALL_IMAGE_FRACTION = 0.5
DEFAULT_ALPHA = 0.01


def default_checkpoint() -> Path:
    for name in DEFAULT_CHECKPOINTS:
        if (REPO_ROOT / name).exists():
            return REPO_ROOT / name
    raise CheckpointError(f"no checkpoint given and none of {DEFAULT_CHECKPOINTS} exists")


def _decode_all(paths: list[str], size: int) -> tuple[list[dict], list[np.ndarray]]:
    from .data import IMAGE_ERRORS, read_gray

    entries, images = [], []
    for path in paths:
        entry: dict = {"path": str(path)}
        try:
            gray, entry["size"] = read_gray(path, size)
            images.append(gray)
        except FileNotFoundError:
            entry["error"] = "file not found"
        except IMAGE_ERRORS as err:
            entry["error"] = f"not a readable image ({type(err).__name__}: {err})"
        entries.append(entry)
    return entries, images


def predict_images(
    paths: list[str],
    checkpoint: str | Path | None = None,
    cam_dir: str | Path | None = None,
    device: str = "cpu",
    alpha: float = DEFAULT_ALPHA,
) -> list[dict]:
    """One dict per path: {path, class, probabilities, temperature, [prediction_set, coverage,
    uncertain], [warning], [cam]} or {path, error}."""
    net = load_for_inference(checkpoint or default_checkpoint(), device)
    threshold = set_threshold(net, alpha)
    entries, images = _decode_all(paths, net.cache_size)
    ok = [e for e in entries if "error" not in e]
    if not ok:
        return entries
    batches = CachedBatches(np.stack(images), np.zeros(len(images), int), 32, net.image_size, device=device)
    probs = calibrate(predict_logits(net.model, batches, device), net.temperature).numpy()
    for k, entry in enumerate(ok):
        w, h = entry.pop("size")
        entry["class"] = CLASS_NAMES[int(probs[k].argmax())]
        entry["probabilities"] = {name: round(float(p), 4) for name, p in zip(CLASS_NAMES, probs[k], strict=True)}
        entry["temperature"] = net.temperature
        if threshold is not None:
            chosen = prediction_sets(probs[k : k + 1], threshold)[0]
            entry["prediction_set"] = [name for name, inside in zip(CLASS_NAMES, chosen, strict=True) if inside]
            entry["coverage"] = 1 - alpha
            entry["uncertain"] = len(entry["prediction_set"]) > 1
        if min(w, h) < SMALL_IMAGE_FRACTION * net.image_size:
            entry["warning"] = (
                f"image is {w}x{h} px, far below the {net.image_size} px the model was trained at: treat the result with care"
            )
        if cam_dir:
            x, _ = batches.batch([k])
            entry["cam"] = str(_write_cam(net, x, int(probs[k].argmax()), Path(cam_dir), Path(entry["path"]).stem))
    return entries


def set_threshold(net: InferenceModel, alpha: float) -> float | None:
    """The checkpoint's conformal threshold at alpha; None when it stores none (then no sets)."""
    thresholds = (net.conformal or {}).get("thresholds", {})
    if net.conformal and str(alpha) not in thresholds:
        raise SettingsError(f"alpha {alpha} is not calibrated in this checkpoint; it has {', '.join(sorted(thresholds))}")
    return thresholds.get(str(alpha))


def _write_cam(net: InferenceModel, x: torch.Tensor, target: int, cam_dir: Path, stem: str) -> Path:
    from PIL import Image

    from .cam import compute_cams, overlay

    cam_dir.mkdir(parents=True, exist_ok=True)
    heat = overlay(x[0], compute_cams(net.model, x, [target], layer=net.cam_layer)[0])
    out = cam_dir / f"{stem}_gradcam.png"
    Image.fromarray(np.asarray(heat, dtype=np.uint8)).save(out)
    return out
