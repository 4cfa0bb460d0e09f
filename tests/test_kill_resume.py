"""A training process killed with SIGKILL mid-run resumes from its last checkpoint and completes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from brainlib.checkpoint import load_checkpoint


def test_sigkill_mid_epoch_then_resume(prepared_run, fixture_root):
    run = Path(prepared_run.run_dir)
    cmd = [
        sys.executable,
        "-m",
        "brainlib",
        "train",
        "--run-dir",
        str(run),
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--compile",
        "false",
        "--num-threads",
        "1",
    ]
    env = {**os.environ, "BRAIN_DATA_DIR": str(fixture_root)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.7)  # inside epoch 2
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_epoch = load_checkpoint(last)["epoch"]  # readable: never half-written
    assert 1 <= saved_epoch < 4
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Resuming {run} after epoch {saved_epoch}" in done.stdout
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert load_checkpoint(last)["epoch"] == 4
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] >= 1
