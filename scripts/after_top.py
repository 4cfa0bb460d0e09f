"""What follows the GPU batch's `top` part (scripts/cuda_session.sh), on a CPU: the choice of the default
on validation, then every candidate on the original Testing files, for the record.

    BRAIN_DATA_DIR=<original files> .venv/bin/python scripts/after_top.py <fetched folder> \
        --compact-data <compact copy> [--out runs/top] [--default checkpoints/efficientnet_lite0_robust.pt] \
        [--shift-severities 2]

<fetched folder> is what came back from the machine: the half exports of the runs in scripts/top_plan.tsv
(the default's recipe at three seeds, then the candidates, as far as the batch got), results.tgz and steps.tsv.

1. Validation, to choose. Every candidate is scored here, in one precision, on the carve they were all
   selected on: the committed default's own validation images (scripts/default_carve.csv, which the batch
   gives `prepare`), read from the original files ($BRAIN_DATA_DIR), the pixels the default was selected
   on and every scoring path reads (on the compact copy's WebP pixels the default gets 568 of the 575
   right instead of 570, log-loss 0.051 instead of 0.040: a copy's pixels favour the runs trained on
   them). Scored: the committed default itself, each export, and the plan's ensembles rebuilt from the
   exports by `ensemble` (the three seeds; seed 42 with the mirror view; Lite0 + Lite1 + Lite2; the
   weight-averaged Lite0 + Lite1 + Lite2). The rule (compare.choose_on_validation), fixed before any
   candidate was trained: the most validation images right, ties to the lower log-loss, then to fewer
   forward passes; a candidate replaces the committed default only with strictly more images right.
   Where the exports were selected on another carve (a smoke run draws its own), the plan's first run,
   the default's recipe at seed 42, stands in for the committed default, and the carve is read from
   the compact copy, the only one it exists on. <out>/choice.md and choice.json.
2. Testing, which does not choose. The committed default and every candidate evaluated on the original
   files (`evaluate --checkpoint`; single checkpoints with the shift suite at --shift-severities,
   ensembles without), then `compare --shifts`: the seed table of the default's recipe and the paired
   tests against the committed default. <out>/compare.md.

Steps already done (a metrics.json, an ensemble's scores) are not done again, so a cut run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd

from brainlib.calibration import require_selection_split
from brainlib.checkpoint import check_one_carve, load_checkpoint, load_for_inference, trained_config
from brainlib.compare import choose_on_validation
from brainlib.config import Config
from brainlib.data import prepare_run
from brainlib.ensemble import validation_scores
from brainlib.infer import setup_torch
from brainlib.loader import load_run_data

TOP_PLAN = Path(__file__).with_name("top_plan.tsv")  # the `top` part's steps, as the GPU batch runs them


def top_plan_steps(path: Path = TOP_PLAN) -> list[list[str]]:
    """The plan's steps in order, each its tab-separated fields (kind, name, ...); comments left out."""
    return [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]


def read_top_plan(path: Path = TOP_PLAN) -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, ...], bool]]]:
    """The runs the `top` part trains and exports (in order; the first stands in for the committed
    default) and the ensembles it builds of them (name: members, with the mirror view or not)."""
    runs, ensembles = [], {}
    for kind, name, *fields in top_plan_steps(path):
        if kind == "run":
            runs.append(name)
        elif kind == "ensemble":
            members, views = fields[0], fields[1]
            ensembles[name] = (tuple(members.split(",")), views == "flip")
    return tuple(runs), ensembles


EXPORTS, ENSEMBLES = read_top_plan()
# the plan's first run: the default's recipe at seed 42. Its folder on the machine holds the carve the
# ensembles are calibrated on, and it stands in for the committed default where that carve is not the default's
FIRST_RUN = EXPORTS[0]
COMMITTED = "committed"  # the committed default's row in the validation table


def with_incumbent(found: dict[str, Path], default: Path) -> tuple[dict[str, Path], str]:
    """The checkpoints to score on validation, and the one a candidate must beat: the committed default
    itself where the exports were selected on its validation images (the same recorded digest), else the
    plan's first run."""
    carve = load_checkpoint(default).get("val_digest")
    if carve and load_checkpoint(next(iter(found.values()))).get("val_digest") == carve:
        return {COMMITTED: default} | found, COMMITTED
    if FIRST_RUN not in found:
        sys.exit(
            f"error: the exports were not selected on {default}'s validation images, and no {FIRST_RUN}.pt "
            "came back to stand in for it"
        )
    print(f"validation: the exports were not selected on {default}'s validation images; {FIRST_RUN} stands in for it")
    return found, FIRST_RUN


def brainlib(args: list[str], log: Path, data_dir: str | None = None) -> str:
    """Run a brainlib command (one of its public commands, as a reader would), its output kept in `log`."""
    env = dict(os.environ) | ({"BRAIN_DATA_DIR": data_dir} if data_dir else {})
    log.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "brainlib", *args], env=env, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode:
        sys.exit(f"error: `brainlib {args[0]}` failed (exit {result.returncode}); its output: {log}")
    return result.stdout


def validation_table(checkpoints: dict[str, Path], data_dir: Path | None, out: Path) -> pd.DataFrame:
    """Validation accuracy and log-loss of the checkpoints and the exports' ensembles, one row each, on
    the files in `data_dir` (None: the original files, $BRAIN_DATA_DIR)."""
    # the carve the exports were selected on: their settings (the carve file, or a smoke run's sample: `fast`)
    states = {name: load_checkpoint(path) for name, path in checkpoints.items()}
    # scored only on a carve every one of them held out: refused before any file is scanned
    check_one_carve(list(states.values()), list(states))
    export = next(name for name in checkpoints if name != COMMITTED)
    here = Config(
        run_dir=str(out / "carve"), data_dir=str(data_dir or ""), device="cpu", fast=states[export]["config"]["fast"]
    )
    cfg = trained_config(checkpoints[export], here)
    if not (out / "carve" / "manifest.csv").exists():
        prepare_run(cfg)
    data, device = load_run_data(cfg), setup_torch(cfg)
    rows = []
    for name, path in checkpoints.items():
        net = load_for_inference(path, device)
        require_selection_split(net, cfg, data, name)
        scores = validation_scores(net, cfg, data, device)
        rows.append({"name": name, "checkpoint": str(path), "passes": 1} | scores)
        print(f"validation: {name} {scores['accuracy']:.2%} of {scores['n']}, log-loss {scores['nll']:.4f}")
    for name, (members, flip) in ENSEMBLES.items():
        if not all(m in checkpoints for m in members):
            print(f"validation: ensemble {name} left out: the batch did not return all of {', '.join(members)}")
            continue
        path, record = out / "ensembles" / f"{name}.pt", out / "ensembles" / f"{name}.json"
        if not record.exists():
            printed = brainlib(
                ["ensemble", *(str(checkpoints[m]) for m in members), *(["--flip"] if flip else []),
                 "--out", str(path), "--run-dir", str(out / "carve"), "--device", "cpu"],
                out / "logs" / f"ensemble-{name}.log", data_dir=str(data_dir) if data_dir else None,
            )  # fmt: skip
            report = json.loads(printed[printed.rfind("\n{") + 1 :])  # the JSON it prints last
            record.write_text(json.dumps(report["validation"]["ensemble"]))
        scores = json.loads(record.read_text())
        rows.append({"name": name, "checkpoint": str(path), "passes": len(members) * (2 if flip else 1)} | scores)
        print(f"validation: ensemble {name} {scores['accuracy']:.2%}, log-loss {scores['nll']:.4f}")
    table = pd.DataFrame(rows)
    table["right"] = (table["accuracy"] * table["n"]).round().astype(int)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fetched", type=Path, help="the folder the machine's results came back to")
    parser.add_argument(
        "--compact-data",
        type=Path,
        required=True,
        help="the compact copy the batch trained on (validation reads it only where the exports were not "
        "selected on the committed default's carve)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/top"))
    parser.add_argument("--default", type=Path, default=Path("checkpoints/efficientnet_lite0_robust.pt"))
    parser.add_argument("--shift-severities", default="2", help="for single checkpoints on Testing ('' skips)")
    args = parser.parse_args()
    found = {name: args.fetched / f"{name}.pt" for name in EXPORTS if (args.fetched / f"{name}.pt").exists()}
    if not found:
        sys.exit(f"error: none of the plan's exports ({', '.join(EXPORTS)}) in {args.fetched}: nothing to choose")
    for folder in (args.fetched, args.compact_data / "Training"):
        if not folder.is_dir():
            sys.exit(f"error: {folder} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.fetched / "results.tgz").exists():  # the batch's own logs and compact-copy scores, for the record
        with tarfile.open(args.fetched / "results.tgz") as archive:
            archive.extractall(args.out / "gpu", filter="data")

    checkpoints, incumbent = with_incumbent(found, args.default)
    validation_data = None if incumbent == COMMITTED else args.compact_data
    table = validation_table(checkpoints, validation_data, args.out)
    choice = choose_on_validation(table, incumbent)
    (args.out / "choice.json").write_text(json.dumps(choice | {"scores": table.to_dict("records")}, indent=2))
    shown = table.set_index("name").loc[choice["ranking"]].reset_index()  # in the rule's order
    (args.out / "choice.md").write_text(
        f"Validation ({int(table['n'].iloc[0])} images, the carve the exports were selected on, read from "
        f"{validation_data or 'the original files'}; the incumbent: {incumbent}), scored on this machine; the rule in "
        f"brainlib.compare.choose_on_validation:\n\n"
        + shown[["name", "right", "n", "accuracy", "nll", "passes"]].to_markdown(index=False, floatfmt=".4f")
        + f"\n\n{'Adopt' if choice['adopt'] else 'Keep the committed default'}: {choice['reason']} "
        f"({choice['candidates']} candidates).\n"
    )
    print(f"choice: {choice['choice']} ({choice['reason']})")

    runs = []
    testing = [(COMMITTED, str(args.default), args.shift_severities)] + [
        (row.name, row.checkpoint, args.shift_severities if row.name in found else "")
        for row in table.itertuples()
        if row.name != COMMITTED
    ]
    for name, checkpoint, shifts in testing:
        run = args.out / "test" / name
        if not (run / "metrics.json").exists():
            brainlib(
                ["evaluate", "--checkpoint", checkpoint, "--run-dir", str(run), "--shift-severities", shifts],
                args.out / "logs" / f"evaluate-{name}.log",
            )
        runs.append(str(run))
        print(f"testing: {name} evaluated ({run})")
    compared = brainlib(["compare", *runs, "--shifts"], args.out / "logs" / "compare.log")
    (args.out / "compare.md").write_text(
        f"`python -m brainlib compare {' '.join(runs)} --shifts` (Testing does not choose: {args.out}/choice.md does)\n\n"
        + compared
    )
    print(f"written: {args.out}/choice.md, {args.out}/compare.md")
    if choice["adopt"]:
        best = table.set_index("name").loc[choice["choice"], "checkpoint"]
        print(
            f"to adopt {choice['choice']}: copy {best} to {args.default}, then `make evaluate CHECKPOINT={args.default}` "
            "(the full shift suite), `make readme-table` and `make model-card`"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
