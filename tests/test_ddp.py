"""DistributedDataParallel on CPU: torchrun, gloo backend, 2 processes, on the fixture."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from brainlib.cli import main


def test_torchrun_two_processes_trains_and_checkpoint_predicts(prepared_run, fixture_root, capsys):
    run = Path(prepared_run.run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRAIN_DATA_DIR": str(fixture_root)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "brainlib", "train", "--run-dir", str(run), "--epochs", "3", "--batch-size", "8",
        "--lr", "1e-3", "--compile", "false", "--num-threads", "1",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if "rank1" in line or "Error" in line)[-4000:]
    assert done.stdout.count("Epoch 3/3") == 1  # only rank 0 logs
    history = pd.read_csv(run / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert json.loads((run / "train_summary.json").read_text())["processes"] == 2
    image = next((fixture_root / "Testing" / "pituitary").glob("*.jpg"))
    assert main(["predict", str(image), "--checkpoint", str(run / "checkpoints" / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{image}: ") and out.split(": ")[1].split()[0] in ("glioma", "meningioma", "notumor", "pituitary")
