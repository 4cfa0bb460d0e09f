"""The one training loop: epochs over cached batches, validation on the val split, atomic
checkpoints (last and best), TensorBoard logging, exact resume."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .cache import build_or_load_cache
from .config import CLASS_NAMES, Config, resolve_device
from .data import read_manifest, resolve_data_dir
from .acquisition import AcquisitionParams
from .loader import AugmentParams, CachedBatches
from .models import create_model


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint is left as it was."""


@dataclass
class RunData:
    manifest: pd.DataFrame
    images: np.ndarray  # decoded cache, row-aligned with manifest
    data_root: Path


def load_run_data(cfg: Config) -> RunData:
    """The run's manifest (from 01_data) and its decoded-image cache."""
    manifest = read_manifest(cfg.run_dir)
    root = resolve_data_dir(cfg.data_dir or None)
    images = build_or_load_cache(manifest, root, cfg.cache_size, cfg.cache_dir or None)
    return RunData(manifest, images, root)


def augment_params(cfg: Config) -> AugmentParams:
    acquisition = AcquisitionParams() if cfg.acquisition_aug else None
    if not cfg.augment:
        return AugmentParams(
            flip_p=0, rotation_deg=0, crop_scale=(1, 1), crop_ratio=(1, 1), brightness=0, contrast=0, saturation=0, acquisition=acquisition
        )
    j = cfg.jitter
    return AugmentParams(crop_scale=(cfg.crop_scale_min, 1.0), brightness=j, contrast=j, saturation=j, acquisition=acquisition)


def split_batches(cfg: Config, data: RunData, split: str, device: str, train: bool = False) -> CachedBatches:
    return rows_batches(cfg, data, np.flatnonzero((data.manifest["split"] == split).to_numpy()), device, train)


def rows_batches(cfg: Config, data: RunData, rows: np.ndarray, device: str = "cpu", train: bool = False) -> CachedBatches:
    """Batches over the given manifest rows (positions), in order unless train=True."""
    rows = np.asarray(rows, dtype=int)
    return CachedBatches(
        data.images[rows] if len(rows) else np.zeros((0, cfg.cache_size, cfg.cache_size), np.uint8),
        data.manifest["label_idx"].to_numpy()[rows],
        cfg.batch_size,
        cfg.image_size,
        train=train,
        aug=augment_params(cfg),
        seed=cfg.seed,
        device=device,
    )


def setup_torch(cfg: Config) -> str:
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    return resolve_device(cfg.device)


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:
        detail = " ".join(str(err).split())[:300]
        raise RuntimeError(f"checkpoint {path} could not be read: {type(err).__name__}: {detail}") from err
    missing = {"model_name", "class_names", "model_state"} - set(state)
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {sorted(missing)}: not a brainlib checkpoint")
    return state


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = False) -> Path:
    """A small, inference-only copy: weights (optionally fp16), class names, config, temperature,
    epoch and history; no optimizer state."""
    state = load_checkpoint(src)
    keep = {k: state[k] for k in ("model_name", "class_names", "config", "epoch", "best_val_acc", "history", "temperature") if k in state}
    weights = state["model_state"]
    keep["model_state"] = {k: v.half() if half and v.is_floating_point() else v for k, v in weights.items()}
    keep["exported_from"] = str(src)
    save_checkpoint(keep, Path(dst))
    return Path(dst)


def model_from_checkpoint(state: dict, device: str = "cpu") -> nn.Module:
    if tuple(state["class_names"]) != CLASS_NAMES:
        raise ValueError(f"checkpoint classes {state['class_names']} differ from this code's {list(CLASS_NAMES)}")
    model = create_model(state["model_name"])
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ValueError(f"checkpoint weights do not fit model {state['model_name']!r}: {detail}") from err
    return model.to(device).eval()


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    raise ValueError(f"unknown schedule {cfg.schedule!r}: use 'constant' or 'onecycle'")


def use_bf16(device: str, precision: str = "auto") -> bool:
    """bf16 autocast: on CUDA, and on CPUs with oneDNN bf16 kernels (1.6x faster than fp32 for
    the reference CNN on this AVX-512 machine, see BENCHMARKS.md). Weights stay fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if precision == "auto":
        return device.startswith("cuda") or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return precision == "bf16"


def autocast(device: str, precision: str = "auto"):
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=use_bf16(device, precision))


@torch.no_grad()
def predict_logits(model: nn.Module, batches, device: str, tta: bool = False, precision: str = "auto") -> torch.Tensor:
    """Logits in order; with tta, the mean of the image's and its mirror image's log-probabilities."""
    model.eval()
    out = []
    for x, _ in batches:
        with autocast(device, precision):
            logits = model(x).float()
            if tta:
                logits = (logits.log_softmax(1) + model(torch.flip(x, dims=[-1])).float().log_softmax(1)) / 2
        out.append(logits.cpu())
    return torch.cat(out) if out else torch.zeros(0, len(CLASS_NAMES))


def evaluate_batches(model: nn.Module, batches: CachedBatches, device: str, precision: str = "auto") -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and the logits (in order) over `batches`."""
    logits = predict_logits(model, batches, device, precision=precision)
    labels = batches.labels.cpu()
    if not len(labels):
        return 0.0, 0.0, logits
    return nn.functional.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item(), logits


def train_one_epoch(model, batches, optimizer, scheduler, loss_fn, device, epoch, progress=True, on_first_batch=None, precision="auto"):
    """One pass over `batches`; raises NonFiniteLossError on a NaN/inf loss (nothing saved)."""
    from tqdm.auto import tqdm

    model.train()
    total_loss, correct, n = 0.0, 0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress, mininterval=5)
    for step, (x, y) in enumerate(bar, start=1):
        if step == 1 and on_first_batch is not None:
            on_first_batch(x)
        with autocast(device, precision):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {epoch}, step {step}; stopping. The last good checkpoint is untouched."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        bar.set_postfix(loss=f"{total_loss / n:.4f}", acc=f"{correct / n:.4f}", refresh=False)
    return total_loss / max(n, 1), correct / max(n, 1), n


@dataclass
class Distributed:
    """This process's place under torchrun (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def mean(self, *values: float) -> list[float]:
        """Average numbers over processes (per-rank train loss/accuracy -> global)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return (t / self.world_size).tolist()


def init_distributed(device: str) -> tuple[Distributed, str]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = torch.distributed.get_rank()
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return Distributed(rank, world_size), device


class _NoWriter:
    """Stands in for SummaryWriter on ranks other than 0."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def train(cfg: Config, resume: bool = False, progress: bool = True, data: RunData | None = None) -> pd.DataFrame:
    """Train cfg.model on the run's train split, select on val; returns the per-epoch history.

    Under `torchrun --nproc_per_node=N` the same call trains with DistributedDataParallel; only
    rank 0 logs, writes TensorBoard and checkpoints."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    dist, device = init_distributed(setup_torch(cfg))
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if not dist.is_main:
        dist.barrier()  # rank 0 builds the decoded cache first; the others then load it
    data = data or load_run_data(cfg)
    if dist.is_main:
        dist.barrier()
    train_batches = split_batches(cfg, data, "train", device, train=True)
    train_batches.rank, train_batches.world_size = dist.rank, dist.world_size
    val_batches = split_batches(cfg, data, "val", device)

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(cfg, optimizer, len(train_batches))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start_epoch, best_acc, history = 1, -1.0, []
    if resume and (ckpt_dir / "last.pt").exists():
        state = load_checkpoint(ckpt_dir / "last.pt", device)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        start_epoch, best_acc, history = state["epoch"] + 1, state["best_val_acc"], state["history"]
        if dist.is_main:
            print(f"Resuming {run_dir} after epoch {state['epoch']}")
    # the step runs through DDP and/or torch.compile; checkpoints hold the plain module's weights
    step_model = torch.nn.parallel.DistributedDataParallel(model) if dist.world_size > 1 else model
    step_model = torch.compile(step_model) if cfg.compile and not cfg.fast else step_model
    if dist.is_main:
        cfg.save(run_dir / "config.json")
    writer = SummaryWriter(str(run_dir / "tb")) if dist.is_main else _NoWriter()
    log_path = run_dir / "train_log.txt"

    def log_grid(x: torch.Tensor) -> None:
        grid = make_grid(x[:16, :1].float().cpu() * 0.5 + 0.5, nrow=8)
        writer.add_image("train/augmented_batch", grid, start_epoch)

    for epoch in range(start_epoch, cfg.epochs + 1):
        torch.manual_seed((cfg.seed * 1_000_003 + epoch) * 64 + dist.rank)  # dropout: replayable per epoch
        train_batches.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_loss, train_acc, n_seen = train_one_epoch(
            step_model,
            train_batches,
            optimizer,
            scheduler,
            loss_fn,
            device,
            epoch,
            progress and dist.is_main,
            log_grid if epoch == start_epoch else None,
        )
        train_loss, train_acc = dist.mean(train_loss, train_acc)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0
        val_loss, val_acc, _ = evaluate_batches(model, val_batches, device, cfg.precision)
        epoch_time = time.perf_counter() - t0
        row = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
            "lr": lr, "epoch_seconds": epoch_time, "train_images_per_s": n_seen * dist.world_size / train_time,
        }  # fmt: skip
        history.append(row)
        improved = val_acc > best_acc
        best_acc = max(best_acc, val_acc)
        if dist.is_main:
            _log_epoch(writer, log_path, row, cfg.epochs)
            state = {
                "model_name": cfg.model, "class_names": list(CLASS_NAMES), "config": cfg.__dict__.copy(), "epoch": epoch,
                "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(), "best_val_acc": best_acc, "history": history,
                "rng_state": torch.get_rng_state(),
            }  # fmt: skip
            if improved:
                save_checkpoint(state, ckpt_dir / "best.pt")
            save_checkpoint(state, ckpt_dir / "last.pt")
        dist.barrier()

    frame = pd.DataFrame(history)
    if len(frame) and dist.is_main:
        frame.to_csv(run_dir / "history.csv", index=False)
        summary = {
            "best_val_acc": best_acc,
            "best_epoch": int(frame.loc[frame["val_acc"].idxmax(), "epoch"]),
            "train_seconds": float(frame["epoch_seconds"].sum()),
            "mean_train_images_per_s": float(frame["train_images_per_s"].mean()),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "processes": dist.world_size,
            "bf16_autocast": use_bf16(device, cfg.precision),
        }
        (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        hparams = {k: v for k, v in cfg.__dict__.items() if isinstance(v, (int, float, str, bool))}
        metrics = {"hparam/best_val_acc": best_acc, "hparam/final_val_loss": frame["val_loss"].iloc[-1]}
        writer.add_hparams(hparams, metrics, run_name="hparams")
    writer.close()
    return frame


def _log_epoch(writer, log_path: Path, row: dict, epochs: int) -> None:
    """TensorBoard scalars and the reference's one-line epoch summary (stdout and train_log.txt)."""
    epoch = row["epoch"]
    for key in ("loss", "acc"):
        writer.add_scalars(key, {"train": row[f"train_{key}"], "val": row[f"val_{key}"]}, epoch)
        writer.add_scalar(f"train/{key}", row[f"train_{key}"], epoch)
        writer.add_scalar(f"val/{key}", row[f"val_{key}"], epoch)
    writer.add_scalar("train/lr", row["lr"], epoch)
    writer.add_scalar("time/epoch_seconds", row["epoch_seconds"], epoch)
    writer.add_scalar("time/train_images_per_s", row["train_images_per_s"], epoch)
    line = (
        f"Epoch {epoch}/{epochs}: Train loss={row['train_loss']:.4f}, acc={row['train_acc']:.4f} | "
        f"Val loss={row['val_loss']:.4f}, acc={row['val_acc']:.4f} | {row['epoch_seconds']:.0f}s, {row['train_images_per_s']:.1f} img/s"
    )
    print(line, flush=True)
    with open(log_path, "a") as fh:
        fh.write(line + "\n")
