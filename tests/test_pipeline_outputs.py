"""The fixture pipeline's outputs: after the five notebooks ran on the fixture (nbval runs them
first in `make test`, into $BRAIN_RUN_DIR), the run folder holds the files each notebook promises
and metrics.json holds its fields, in range and consistent with the manifest. Run alone, this
module executes the notebooks itself with papermill, as `make pipeline` does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainlib.config import CLASS_NAMES, DEFAULT_RECIPE
from brainlib.shifts import SEVERITIES, SHIFTS

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("0*.ipynb"))
PROMISED = {
    "01_data": [
        "config.json",
        "manifest.csv",
        "audit.json",
        "figures/class_counts.png",
        "figures/near_threshold_sweep.png",
    ],
    "02_model": ["tb"],
    "03_train": ["checkpoints/best.pt", "checkpoints/last.pt", "history.csv", "train_summary.json", "train_log.txt"],
    "04_evaluate": [
        "metrics.json",
        "predictions.csv",
        "test_logits.npy",
        "figures/confusion_matrix.png",
        "figures/shifts.png",
    ],
    "05_gradcam": ["cam_faithfulness.json", "figures/gradcam_correct.png"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    here = Path(os.environ.get("BRAIN_RUN_DIR", "")) if os.environ.get("BRAIN_RUN_DIR") else None
    if here and (here / "cam_faithfulness.json").exists():  # the notebooks ran earlier in this pytest run
        return here
    import papermill

    run = tmp_path_factory.mktemp("pipeline") / "run"
    fixture = Path(__file__).parent / "fixtures" / "data"
    os.environ.setdefault("BRAIN_CACHE_DIR", str(run.parent / "cache"))
    for nb in NOTEBOOKS:
        params = {"run_dir": str(run)} | (
            {"data_dir": str(fixture), "fast": True, "epochs": 1} if nb.stem == "01_data" else {}
        )
        papermill.execute_notebook(
            str(nb), str(run.parent / nb.name), parameters=params, kernel_name="brainlib", cwd=str(nb.parents[1])
        )
    return run


@pytest.mark.parametrize("notebook", list(PROMISED))
def test_each_notebook_leaves_the_files_it_promises(run_dir, notebook):
    missing = [f for f in PROMISED[notebook] if not (run_dir / f).exists()]
    assert not missing, f"{notebook} did not write {missing}"


def test_a_new_run_without_a_recipe_trains_the_default(run_dir):
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["recipe"] == DEFAULT_RECIPE and saved["acquisition_aug"] is True
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == list(range(1, saved["epochs"] + 1))


def test_metrics_are_in_range_and_match_the_manifest(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = pd.read_csv(run_dir / "manifest.csv")
    n_test = int((manifest["split"] == "test").sum())
    assert metrics["n_test"] == n_test == len(pd.read_csv(run_dir / "predictions.csv"))
    assert np.load(run_dir / "test_logits.npy").shape == (n_test, len(CLASS_NAMES))
    assert np.array(metrics["confusion_matrix"]).sum() == n_test
    for name in ("accuracy", "macro_f1", "ece"):
        low, high = metrics["intervals"][name]
        assert 0 <= low <= metrics[name] <= high <= 1, name
    assert metrics["n_leakage_free"] <= n_test and metrics["temperature"] > 0
    assert set(metrics["conformal"]["thresholds"]) == {"0.01", "0.05"}
    for alpha, sets in metrics["conformal"]["sets"].items():
        assert 1 <= sets["test"]["mean_set_size"] <= len(CLASS_NAMES), alpha
    shifts = metrics["shifts"]
    assert shifts["summary"]["severities"] == list(SEVERITIES)
    assert len(shifts["table"]) == 1 + len(SHIFTS) * len(SEVERITIES)
    assert all(0 <= row["accuracy"] <= 1 for row in shifts["table"])


def test_gradcam_faithfulness_covers_both_methods_on_the_sampled_images(run_dir):
    faith = json.loads((run_dir / "cam_faithfulness.json").read_text())
    n_test = len(pd.read_csv(run_dir / "predictions.csv"))
    assert set(faith) == {"Grad-CAM", "Grad-CAM++"}
    assert all(v["n"] == min(400, n_test) and -1 <= v["drop_cam"] <= 1 for v in faith.values())
