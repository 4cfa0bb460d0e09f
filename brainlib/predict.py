"""Predict single images with a checkpoint: class, calibrated probabilities, optional Grad-CAM.

With a checkpoint that stores conformal thresholds (calibration.conformal_state), each image also gets
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
from PIL import Image

from .calibration import calibrate, prediction_sets
from .cam import compute_cams, overlay
from .checkpoint import InferenceModel, default_checkpoint, load_for_inference
from .config import CLASS_NAMES, REPO_ROOT
from .data import IMAGE_ERRORS, read_gray
from .errors import SettingsError
from .infer import predict_logits
from .loader import CachedBatches

# below this fraction of the model's input side, an image holds too little detail to trust
SMALL_IMAGE_FRACTION = 0.5
DEFAULT_ALPHA = 0.01
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def expand_inputs(paths: list[str]) -> list[str]:
    """Files as given; a folder becomes the image files inside it (recursively, sorted by path), or
    stays itself when it holds none (then reported as such)."""
    out = []
    for path in map(Path, paths):
        inside = (
            sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if path.is_dir()
            else []
        )
        out += inside or [str(path)]
    return out


def _decode_all(paths: list[str], size: int) -> tuple[list[dict], list[np.ndarray]]:
    entries, images = [], []
    for path in paths:
        entry: dict = {"path": str(path)}
        try:
            gray, entry["size"] = read_gray(path, size)
            images.append(gray)
        except FileNotFoundError:
            entry["error"] = "file not found"
        except IsADirectoryError:
            entry["error"] = "a folder with no image files"
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
) -> dict:
    """{checkpoint, model, image_size, temperature, results}: one result per path, {path, class,
    probabilities, [prediction_set, coverage, uncertain], [warning], [cam]} or {path, error}."""
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    net = load_for_inference(checkpoint, device)
    threshold = set_threshold(net, alpha)
    report = {
        "checkpoint": _shown(checkpoint),
        "model": net.model_name,
        "image_size": net.image_size,
        "temperature": net.temperature,
        "results": [],
    }
    entries, images = _decode_all(paths, net.cache_size)
    report["results"] = entries
    ok = [e for e in entries if "error" not in e]
    if not ok:
        return report
    batches = CachedBatches(np.stack(images), np.zeros(len(images), int), 32, net.image_size, device=device)
    probs = calibrate(predict_logits(net.model, batches, device), net.temperature).numpy()
    for k, entry in enumerate(ok):
        w, h = entry.pop("size")
        entry["class"] = CLASS_NAMES[int(probs[k].argmax())]
        entry["probabilities"] = {name: round(float(p), 4) for name, p in zip(CLASS_NAMES, probs[k], strict=True)}
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
    return report


def _shown(path: Path) -> str:
    """The checkpoint's path relative to the repo when inside it (checkpoints/...), else as given."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def set_threshold(net: InferenceModel, alpha: float) -> float | None:
    """The checkpoint's conformal threshold at alpha; None when it stores none (then no sets)."""
    thresholds = (net.conformal or {}).get("thresholds", {})
    if net.conformal and str(alpha) not in thresholds:
        raise SettingsError(
            f"alpha {alpha} is not calibrated in this checkpoint; it has {', '.join(sorted(thresholds))}"
        )
    return thresholds.get(str(alpha))


def _write_cam(net: InferenceModel, x: torch.Tensor, target: int, cam_dir: Path, stem: str) -> Path:
    cam_dir.mkdir(parents=True, exist_ok=True)
    heat = overlay(x[0], compute_cams(net.model, x, [target], layer=net.cam_layer)[0])
    out = cam_dir / f"{stem}_gradcam.png"
    Image.fromarray(np.asarray(heat, dtype=np.uint8)).save(out)
    return out
