"""The one training loop: epochs over cached batches, validation on the val split, atomic
checkpoints (last and best, the best one with its temperature and conformal thresholds fitted on
that epoch's validation logits, and after the last epoch its out-of-distribution detector),
TensorBoard logging, exact resume, DistributedDataParallel under torchrun."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .atomic import atomic_path, write_text
from .calibration import calibration_of, calibration_state, fit_ood
from .checkpoint import (
    best_checkpoint,
    load_checkpoint,
    load_for_inference,
    model_from_state,
    resume_training,
    save_epoch,
    training_state,
    write_calibrated_copy,
)
from .config import Config, in_repo
from .cuda_graphs import GraphedTraining, graph_training_step
from .data import split_digest
from .ema import WeightAverage
from .errors import SettingsError
from .infer import autocast, predict_logits, setup_torch, use_bf16
from .loader import CachedBatches, RunData, load_run_data, split_batches
from .models import check_input_sides, training_model
from .progress import progress as progress_bar


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint is left as it was."""


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
        )
    raise ValueError(f"unknown schedule {cfg.schedule!r}: use 'constant' or 'onecycle'")


def evaluate_batches(model: nn.Module, batches: CachedBatches, device: str) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and the logits (in order) over `batches`, scored in fp32 (infer.py)."""
    logits = predict_logits(model, batches, device)
    labels = batches.labels.cpu()
    if not len(labels):
        return 0.0, 0.0, logits
    return (
        nn.functional.cross_entropy(logits, labels).item(),
        (logits.argmax(1) == labels).float().mean().item(),
        logits,
    )


# Steps between host syncs. The loss and accuracy sums and the finiteness guard stay on the device
# in between: a `.item()` per step makes the host wait for every step, which idles a GPU between
# kernel launches. A non-finite loss is still caught with its epoch and step, at most this
# many steps later and always before any checkpoint of the epoch is written.
SYNC_EVERY = 25


def train_one_epoch(
    model,
    batches,
    optimizer,
    scheduler,
    loss_fn,
    device,
    epoch,
    progress=True,
    on_first_batch=None,
    precision="auto",
    after_step=None,
):
    """One pass over `batches`: (mean loss, accuracy, images, seconds to the end of the first
    step). Raises NonFiniteLossError on a NaN/inf loss (nothing saved)."""
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    bad_step = torch.zeros((), dtype=torch.long, device=device)
    bad_loss = torch.zeros((), device=device)
    n, t0, first_step_seconds = 0, time.perf_counter(), 0.0

    def sync() -> None:
        if nonfinite.item():
            raise NonFiniteLossError(
                f"loss became {bad_loss.item()} at epoch {epoch}, step {bad_step.item()}; stopping. The last good checkpoint is untouched."
            )
        if hasattr(bar, "set_postfix"):  # a tqdm bar; plain progress lines carry no postfix
            loss, acc = total_loss.item() / max(n, 1), correct.item() / max(n, 1)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", refresh=False)

    bar = progress_bar(batches, f"epoch {epoch}", disable=not progress, leave=False, mininterval=5)
    for step, (x, y) in enumerate(bar, start=1):
        if step == 1 and on_first_batch is not None:
            on_first_batch(x)
        with autocast(device, precision, cache=False):  # cache off: the forward may be a captured CUDA graph
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        value = loss.detach()
        first_bad = ~torch.isfinite(value) & ~nonfinite
        bad_step = torch.where(first_bad, step, bad_step)
        bad_loss = torch.where(first_bad, value, bad_loss)
        nonfinite |= first_bad
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        total_loss += value * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        n += len(y)
        if step == 1:  # where a slow first epoch goes (lazy CUDA init, autotuning): one wait per epoch
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            first_step_seconds = time.perf_counter() - t0
        if step % SYNC_EVERY == 0:
            sync()
    sync()
    return total_loss.item() / max(n, 1), correct.item() / max(n, 1), n, first_step_seconds


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

    t_setup = time.perf_counter()
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
    train_batches.prefetch = cfg.host_prefetch
    val_batches = split_batches(cfg, data, "val", device)
    val_digest = split_digest(data.manifest)  # which carve selects the epoch: an ensemble checks its members share it

    model = initial_model(cfg, device)
    # CUDA graphs replay one batch shape; the epoch's last, smaller batch is then skipped (a different
    # 14 of 5,134 images each epoch, as timm's loaders do) rather than run eagerly: a second shape means
    # a second set of kernels to choose and load (≈20 s in epoch 1 on an H200 with cuDNN autotuning)
    use_graphs = (
        cfg.cuda_graphs
        and device.startswith("cuda")
        and dist.world_size == 1
        and not cfg.compile
        and len(train_batches.labels) >= cfg.batch_size
    )
    train_batches.drop_last = use_graphs
    # fused: one kernel for the whole update on CUDA instead of a few per parameter tensor
    fused = device.startswith("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    scheduler = make_scheduler(cfg, optimizer, len(train_batches))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start_epoch, best_acc, history = 1, -1.0, []
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    resumed = resume_training(ckpt_dir, model, optimizer, scheduler, device, ema) if resume else None
    if resumed:
        start_epoch, best_acc, history = resumed.next_epoch, resumed.best_val_acc, resumed.history
        if dist.is_main:
            print(f"Resuming {run_dir} after epoch {start_epoch - 1}")
    # the step runs through DDP and/or torch.compile; checkpoints hold the plain module's weights
    step_model = torch.nn.parallel.DistributedDataParallel(model) if dist.world_size > 1 else model
    step_model = torch.compile(step_model) if cfg.compile and not cfg.fast else step_model
    capture_seconds = 0.0
    if use_graphs:
        t_capture = time.perf_counter()
        step_model = graph_training_step(
            model, (cfg.batch_size, 3, cfg.image_size, cfg.image_size), device, cfg.precision
        )
        capture_seconds = time.perf_counter() - t_capture
    setup_seconds = time.perf_counter() - t_setup
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
        train_loss, train_acc, n_seen, first_step_seconds = train_one_epoch(
            step_model,
            train_batches,
            optimizer,
            scheduler,
            loss_fn,
            device,
            epoch,
            progress and dist.is_main,
            log_grid if epoch == start_epoch else None,
            cfg.precision,
            ema.update if ema else None,
        )
        train_loss, train_acc = dist.mean(train_loss, train_acc)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0
        scored = ema.module if ema else model  # what is validated, selected and saved for scoring
        val_loss, val_acc, val_logits = evaluate_batches(scored, val_batches, device)
        epoch_time = time.perf_counter() - t0
        row = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
            "lr": lr, "epoch_seconds": epoch_time, "train_images_per_s": n_seen * dist.world_size / train_time,
            "first_step_seconds": first_step_seconds,
        }  # fmt: skip
        history.append(row)
        improved = val_acc > best_acc
        best_acc = max(best_acc, val_acc)
        if dist.is_main:
            _log_epoch(writer, log_path, row, cfg.epochs)
            state = training_state(cfg, model, optimizer, scheduler, epoch, best_acc, history, ema, val_digest)
            calibration = calibration_state(val_logits, val_batches.labels.cpu()) | {"calibrated_size": cfg.image_size}
            save_epoch(ckpt_dir, state, calibration if improved else None)
        dist.barrier()

    frame = pd.DataFrame(history)
    if len(frame) and dist.is_main:
        summary = {
            "best_val_acc": best_acc,
            "best_epoch": int(frame.loc[frame["val_acc"].idxmax(), "epoch"]),
            "train_seconds": float(frame["epoch_seconds"].sum()),
            "mean_train_images_per_s": float(frame["train_images_per_s"].mean()),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "processes": dist.world_size,
            "bf16_autocast": use_bf16(device, cfg.precision),
            "cuda_graphs": isinstance(step_model, GraphedTraining),
            "fused_adamw": fused,
            # before the first epoch: cache load/upload, model build, graph capture (of which)
            "setup_seconds": setup_seconds,
            "graph_capture_seconds": capture_seconds,
        }
        _write_run_summary(cfg, writer, frame, summary)
    writer.close()
    best = best_checkpoint(run_dir)
    net = load_for_inference(best, device) if dist.is_main and best.exists() else None
    if net is not None and (net.ood is None or net.temperature is None):
        # once, after the last epoch: a model scored at another side than it was validated at (the recipe's
        # test_image_size) has its temperature and thresholds fitted again there; the OOD detector, one
        # pass over train and val (minutes on a CPU, seconds on a GPU)
        fitted = {}
        if net.temperature is None:
            fitted = {
                k: v for k, v in calibration_of(net, net.scoring_config(cfg), data, device).items() if k != "source"
            }
        fitted |= {"ood": fit_ood(net, cfg, data, device), "calibrated_size": net.image_size}
        write_calibrated_copy(best, fitted, best)
    return frame


def initial_model(cfg: Config, device: str) -> nn.Module:
    """The run's model, seeded, on `device`: its own initialisation, or a checkpoint's weights (read as
    data) for a fine-tune."""
    check_input_sides(cfg.model, cfg.image_size, cfg.scoring_size)
    torch.manual_seed(cfg.seed)
    model = training_model(cfg.model, device)
    if cfg.init_checkpoint:
        init = load_checkpoint(in_repo(cfg.init_checkpoint))
        if init["model_name"] != cfg.model:
            raise SettingsError(
                f"init_checkpoint {cfg.init_checkpoint} holds a {init['model_name']}, not the {cfg.model} this run trains"
            )
        model.load_state_dict(model_from_state(init).state_dict())
    return model


def _write_run_summary(cfg: Config, writer, frame: pd.DataFrame, summary: dict) -> None:
    """history.csv, train_summary.json and the hyper-parameters in TensorBoard (rank 0, after the last epoch)."""
    run_dir = Path(cfg.run_dir)
    with atomic_path(run_dir / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(run_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
    hparams = {k: v for k, v in cfg.__dict__.items() if isinstance(v, (int, float, str, bool))}
    metrics = {"hparam/best_val_acc": summary["best_val_acc"], "hparam/final_val_loss": frame["val_loss"].iloc[-1]}
    writer.add_hparams(hparams, metrics, run_name="hparams")


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
