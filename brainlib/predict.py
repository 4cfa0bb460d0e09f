"""Predict single images with a checkpoint: class, calibrated probabilities, optional Grad-CAM.

Each image is handled on its own: a missing or unreadable file yields an error entry for that
image while the others are still predicted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import CLASS_NAMES, REPO_ROOT
from .data import IMAGE_ERRORS, load_gray
from .loader import resize_batch, to_model_input
from .train import load_checkpoint, model_from_checkpoint

DEFAULT_CHECKPOINTS = ("checkpoints/efficientnet_lite0.pt", "checkpoints/seed_cnn.pt")


def default_checkpoint() -> Path:
    for name in DEFAULT_CHECKPOINTS:
        if (REPO_ROOT / name).exists():
            return REPO_ROOT / name
    raise FileNotFoundError(f"no checkpoint given and none of {DEFAULT_CHECKPOINTS} exists")


def predict_images(paths: list[str], checkpoint: str | Path | None = None, cam_dir: str | Path | None = None) -> list[dict]:
    """One dict per path: {path, class, probabilities, [cam]} or {path, error}."""
    state = load_checkpoint(checkpoint or default_checkpoint())
    model = model_from_checkpoint(state)
    temperature = float(state.get("temperature", 1.0))
    cfg = state.get("config", {})
    cache_size, image_size = int(cfg.get("cache_size", 256)), int(cfg.get("image_size", 224))
    results = []
    for path in paths:
        try:
            gray = load_gray(path, cache_size)
        except FileNotFoundError:
            results.append({"path": str(path), "error": "file not found"})
            continue
        except IMAGE_ERRORS as err:
            results.append({"path": str(path), "error": f"not a readable image ({type(err).__name__}: {err})"})
            continue
        x = to_model_input(resize_batch(torch.from_numpy(gray)[None, None], image_size))
        with torch.no_grad():
            probs = (model(x).float() / temperature).softmax(1)[0].numpy()
        entry = {
            "path": str(path),
            "class": CLASS_NAMES[int(probs.argmax())],
            "probabilities": {name: round(float(p), 4) for name, p in zip(CLASS_NAMES, probs, strict=True)},
            "temperature": temperature,
        }
        if cam_dir:
            entry["cam"] = str(_write_cam(model, x, int(probs.argmax()), Path(cam_dir), Path(path).stem))
        results.append(entry)
    return results


def _write_cam(model, x: torch.Tensor, target: int, cam_dir: Path, stem: str) -> Path:
    from PIL import Image

    from .cam import compute_cams, overlay

    cam_dir.mkdir(parents=True, exist_ok=True)
    heat = overlay(x[0], compute_cams(model, x, [target])[0])
    out = cam_dir / f"{stem}_gradcam.png"
    Image.fromarray(np.asarray(heat, dtype=np.uint8)).save(out)
    return out
