"""Class activation maps (pytorch-grad-cam), the panels 05 and `predict --cam` show, and a check
that the maps mean something.

Faithfulness: blur the 20 % of pixels a map ranks highest and measure the drop in the
predicted class's probability; do the same for a random blob mask of the same area. A map
that points at what the model uses gives a clearly larger drop than the random mask.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .atomic import write_text
from .checkpoint import InferenceModel
from .config import Config
from .loader import RunData, rows_batches

METHODS = {"Grad-CAM": GradCAM, "Grad-CAM++": GradCAMPlusPlus}


def compute_cams(
    model: nn.Module, x: torch.Tensor, targets: list[int], method: str = "Grad-CAM", *, layers: list[nn.Module]
) -> np.ndarray:
    """(B, H, W) maps in [0, 1] for class `targets[i]` of image i, from `layers` (the model's registry
    entry names its layer; an ensemble has one per member, whose maps pytorch-grad-cam averages:
    checkpoint.InferenceModel.cam_model and cam_layers)."""
    model.eval()
    with METHODS[method](model=model, target_layers=list(layers)) as cam:
        return cam(input_tensor=x.contiguous(), targets=[ClassifierOutputTarget(int(t)) for t in targets])


def overlay(x: torch.Tensor, cam_map: np.ndarray) -> np.ndarray:
    """Heat map over the (normalised, 3-channel) input image, as uint8 RGB."""
    rgb = (x[:3].permute(1, 2, 0).float().cpu().numpy() * 0.5 + 0.5).clip(0, 1)
    return show_cam_on_image(rgb.astype(np.float32), cam_map, use_rgb=True, image_weight=0.6)


def _blur(x: torch.Tensor, sigma: float = 8.0) -> torch.Tensor:
    radius = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _top_fraction_mask(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, H, W) boolean mask of each map's top `fraction` of pixels."""
    flat = score.flatten(1)
    k = max(1, int(fraction * flat.shape[1]))
    thresh = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= thresh).view_as(score)


@torch.no_grad()
def confidence_drop(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Drop in p(target) when the masked pixels are replaced by a heavily blurred image."""
    model.eval()
    blurred = _blur(x)
    m = mask.unsqueeze(1).to(x.dtype)
    p0 = model(x).softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
    p1 = model(x * (1 - m) + blurred * m).softmax(1).gather(1, targets.view(-1, 1)).squeeze(1)
    return p0 - p1


def faithfulness(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, cams: np.ndarray, fraction: float = 0.2, seed: int = 0
) -> pd.DataFrame:
    """Per image: confidence drop for the CAM's top pixels vs a random blob mask of equal area."""
    gen = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    blobs = F.interpolate(
        torch.rand(b, 1, 7, 7, generator=gen), size=(h, w), mode="bicubic", align_corners=False
    ).squeeze(1)
    cam_mask = _top_fraction_mask(torch.from_numpy(cams).float(), fraction)
    rand_mask = _top_fraction_mask(blobs, fraction)
    return pd.DataFrame(
        {
            "target": targets.numpy(),
            "drop_cam": confidence_drop(model, x, targets, cam_mask).numpy(),
            "drop_random": confidence_drop(model, x, targets, rand_mask).numpy(),
        }
    )


def cam_panels(
    net: InferenceModel, x: torch.Tensor, targets: list[int], titles: list[str]
) -> tuple[list[np.ndarray], list[str]]:
    """Per image: the input, then its map for each of METHODS (targets: the classes to explain),
    as (images, titles) for plots.image_grid."""
    maps = {m: compute_cams(net.cam_model, x, targets, m, layers=net.cam_layers) for m in METHODS}
    images, names = [], []
    for k, title in enumerate(titles):
        images += [((x[k, 0].numpy() * 0.5 + 0.5) * 255).astype(np.uint8)] + [
            overlay(x[k], maps[m][k]) for m in METHODS
        ]
        names += [title] + list(METHODS)
    return images, names


def faithfulness_study(
    net: InferenceModel, cfg: Config, data: RunData, rows: np.ndarray, targets: np.ndarray, seed: int, batch: int = 64
) -> pd.DataFrame:
    """`faithfulness` for every method over the given manifest rows, explaining class `targets[i]`
    of row i: one table row per (image, method) with the row's position in `rows`."""
    cfg = net.scoring_config(cfg)
    frames = []
    for start in range(0, len(rows), batch):
        part = np.arange(start, min(start + batch, len(rows)))
        x, _ = rows_batches(cfg, data, rows[part]).batch(range(len(part)))
        wanted = torch.tensor(np.asarray(targets)[part])
        for method in METHODS:
            maps = compute_cams(net.cam_model, x, wanted.tolist(), method, layers=net.cam_layers)
            frames.append(
                faithfulness(net.model, x, wanted, maps, seed=seed + start).assign(method=method, position=part)
            )
    return pd.concat(frames, ignore_index=True)


def write_faithfulness(drops: pd.DataFrame, run_dir: str) -> dict:
    """Mean drops per method, written to <run>/cam_faithfulness.json."""
    summary = {
        m: {"drop_cam": float(g["drop_cam"].mean()), "drop_random": float(g["drop_random"].mean()), "n": int(len(g))}
        for m, g in drops.groupby("method")
    }
    write_text(f"{run_dir}/cam_faithfulness.json", json.dumps(summary, indent=2) + "\n")
    return summary
