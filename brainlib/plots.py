"""Figures. Each function returns a matplotlib Figure and, given `save_to`, writes a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .config import CLASS_NAMES


def _finish(fig: plt.Figure, save_to: str | Path | None) -> plt.Figure:
    fig.tight_layout()
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=110, bbox_inches="tight")
    return fig


def class_counts_bar(counts: pd.DataFrame, save_to=None) -> plt.Figure:
    """counts: class x split table (as from data.class_counts), totals dropped."""
    table = counts.drop(index="total", errors="ignore").drop(columns="total", errors="ignore")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    return _finish(fig, save_to)


def size_and_mode(manifest: pd.DataFrame, save_to=None) -> plt.Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.scatter(manifest["width"], manifest["height"], s=4, alpha=0.3)
    a.set(
        xlabel="width (px)",
        ylabel="height (px)",
        title=f"Image sizes ({manifest[['width', 'height']].drop_duplicates().shape[0]} distinct)",
    )
    pd.crosstab(manifest["format"] + "/" + manifest["mode"], manifest["split_on_disk"]).plot.barh(ax=b, logx=True)
    b.set(xlabel="images (log)", ylabel="", title="File format / PIL mode")
    return _finish(fig, save_to)


def image_grid(
    images: list[np.ndarray], titles: list[str], ncols: int, save_to=None, size: float = 1.8, title: str = ""
) -> plt.Figure:
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    if title:
        fig.suptitle(title, fontsize=11)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255 if img.dtype == np.uint8 else None)
        ax.set_title(title, fontsize=7)
    return _finish(fig, save_to)


def threshold_sweep_plot(sweep: pd.DataFrame, chosen: int, save_to=None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(sweep["threshold"], sweep["test_images_with_train_twin"], marker="o")
    ax.axvline(chosen, color="red", linestyle="--", label=f"chosen: {chosen} bits")
    ax.set(
        xlabel="dHash Hamming threshold (of 256 bits)",
        ylabel="test images with a Training twin",
        title="Near-duplicate threshold sweep",
    )
    ax.legend()
    return _finish(fig, save_to)


def training_curves(history: pd.DataFrame, save_to=None) -> plt.Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for split in ("train", "val"):
        a.plot(history["epoch"], history[f"{split}_loss"], marker="o", label=split)
        b.plot(history["epoch"], history[f"{split}_acc"], marker="o", label=split)
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    b.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    a.legend()
    b.legend()
    return _finish(fig, save_to)


def confusion_matrices(cm: np.ndarray, save_to=None, title: str = "") -> plt.Figure:
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if title:
        fig.suptitle(title, fontsize=11)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for ax, mat, fmt, title in [(axes[0], cm, "d", "Counts"), (axes[1], norm, ".2f", "Row-normalised (recall)")]:
        sns.heatmap(
            mat, annot=True, fmt=fmt, cmap="Blues", xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, ax=ax, cbar=False
        )
        ax.set(xlabel="predicted", ylabel="true", title=title)
    return _finish(fig, save_to)


def reliability_diagram(bins: pd.DataFrame, ece: float, title: str = "", save_to=None) -> plt.Figure:
    """bins: columns confidence, accuracy, count (from calibration.calibration_bins)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    used = bins[bins["count"] > 0]
    ax.bar(
        used["lower"],
        used["accuracy"],
        width=used["upper"] - used["lower"],
        align="edge",
        alpha=0.7,
        edgecolor="k",
        label="accuracy",
    )
    ax.plot(used["confidence"], used["accuracy"], "o", color="C3", ms=3)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title} ECE = {ece * 100:.2f} %")
    ax.legend(loc="upper left")
    return _finish(fig, save_to)


def robustness_by_family(tables: dict[str, pd.DataFrame], title: str = "", save_to=None) -> plt.Figure:
    """Mean accuracy over each family's shifts against severity (0: clean), one line per model.
    tables: model label -> shift table (robustness.shift_table's records; severities it lacks are gaps)."""
    families = [f for f in next(iter(tables.values()))["family"].unique() if f != "none"]
    ncols = 3
    fig, axes = plt.subplots(-(-len(families) // ncols), ncols, figsize=(10, 6.2), sharey=True, squeeze=False)
    for ax, family in zip(axes.flat, families):
        for label, table in tables.items():
            clean = table.loc[table["shift"] == "clean", "accuracy"].mean()
            by = table[table["family"] == family].groupby("severity")["accuracy"].mean()
            points = pd.concat([pd.Series({0: clean}), by]).sort_index()
            ax.plot(points.index, 100 * points.to_numpy(), marker="o", label=label)
        seen = table.loc[table["family"] == family, "seen"].dropna().astype(bool)
        ax.set_title(family + ("" if seen.any() else " (held out in training)"), fontsize=10)
        ax.set_xticks(range(4), ["clean", "1", "2", "3"])
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in axes[-1]:
        ax.set_xlabel("severity")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=9, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    if save_to:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=110, bbox_inches="tight")
    return fig


def ood_scores(test_scores, suite: pd.DataFrame, threshold: float, save_to=None) -> plt.Figure:
    """Histograms of the OOD score: the test split's brain MRIs against the non-MRI suite (tuning and
    held-out families), with the threshold; log-scaled, since non-MRI scores run orders of magnitude higher."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    values = [
        np.asarray(test_scores, float),
        suite.loc[~suite["held_out"], "score"].to_numpy(),
        suite.loc[suite["held_out"], "score"].to_numpy(),
    ]
    low = max(min(v.min() for v in values if len(v)), 1e-3)
    bins = np.logspace(np.log10(low), np.log10(max(v.max() for v in values if len(v))), 40)
    for v, label in zip(values, ["test split (brain MRI)", "non-MRI, tuning families", "non-MRI, held-out families"]):
        ax.hist(np.clip(v, low, None), bins=bins, alpha=0.6, label=f"{label} (n={len(v)})", density=True)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.0f} (1 % of validation above)")
    ax.set(
        xscale="log",
        xlabel="OOD score (higher: less like Training)",
        ylabel="density",
        title="Out-of-distribution score",
    )
    ax.legend(fontsize=8)
    return _finish(fig, save_to)
