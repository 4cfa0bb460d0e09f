"""DistributedDataParallel on CPU: torchrun, gloo backend, 2 processes, on the fixture."""

import json
import os
import shutil
import socket
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
    assert done.returncode == 0, "\n".join(
        line for line in done.stderr.splitlines() if "rank1" in line or "Error" in line
    )[-4000:]
    assert done.stdout.count("Epoch 3/3") == 1  # only rank 0 logs
    history = pd.read_csv(run / "history.csv")
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert json.loads((run / "train_summary.json").read_text())["processes"] == 2
    image = next((fixture_root / "Testing" / "pituitary").glob("*.jpg"))
    assert main(["predict", str(image), "--checkpoint", str(run / "checkpoints" / "best.pt"), "--allow-ood"]) == 0
    out = capsys.readouterr().out.splitlines()[1]
    assert out.startswith(f"{image}: ") and out.split(": ")[1].split()[0] in (
        "glioma",
        "meningioma",
        "notumor",
        "pituitary",
    )


def test_two_nodes_meet_over_a_c10d_rendezvous_and_only_the_first_writes(prepared_run, fixture_root, tmp_path):
    """Two torchrun "nodes" on this machine, each with its own copy of the run folder and its own
    image cache (as two machines would have), meet at a localhost c10d rendezvous and train one model."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = Path(prepared_run.run_dir)
    second = tmp_path / "node1" / "run"
    second.mkdir(parents=True)
    for name in ("manifest.csv", "config.json"):
        shutil.copy(first / name, second / name)
    procs = []
    for node, run in enumerate((first, second)):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "BRAIN_DATA_DIR": str(fixture_root),
            "BRAIN_CACHE_DIR": str(tmp_path / f"cache{node}"),
        }
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=fixture", "-m", "brainlib", "train", "--run-dir", str(run),
            "--epochs", "2", "--batch-size", "8", "--compile", "false", "--num-threads", "1",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-2000:] for _, err in outs)
    summaries = [
        json.loads((run / "train_summary.json").read_text())
        for run in (first, second)
        if (run / "train_summary.json").exists()
    ]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2  # global rank 0 alone writes
    # the rendezvous, not the order of launch, says which node holds rank 0
    assert sorted((run / "checkpoints" / "best.pt").exists() for run in (first, second)) == [False, True]
