"""Command line: `python -m brainlib {prepare,train,evaluate,audit-labels,calibrate,model-card,bench,export,compare,predict} [--field value ...]`.

Every Config field is a flag (`--epochs 2`, `--run-dir runs/x`); a run folder's saved
config.json is read first when it exists, so later steps see what earlier steps used. Only
`prepare` writes config.json; a flag given to a later step applies to that step only.

Exit codes: 0 done; 1 some images could not be predicted; 2 bad arguments or settings;
3 data folder or run folder problem; 4 bad checkpoint. Expected errors print one `error: ...` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import LOCATION_FIELDS, RECIPES, Config, build_config, parse_bool, read_run_config, write_run_config
from .errors import BrainlibError, SettingsError


def _parse_bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Config):
        kind = {"bool": _parse_bool, "int": int, "float": float}.get(str(f.type), str)
        choices = list(RECIPES) if f.name == "recipe" else None
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None, choices=choices)


def config_from_args(args: argparse.Namespace) -> Config:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name, None) is not None}
    return build_config(read_run_config(given.get("run_dir", Config.run_dir)), given)


def main(argv: list[str] | None = None) -> int:
    """Runs a command; an expected error becomes one `error: ...` line and its exit code."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrainlibError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m brainlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("prepare", "scan the data, audit duplicates, split, write the manifest (what 01_data does)"),
        ("train", "train cfg.model on the run's manifest"),
        ("bench", "training throughput: plain pipeline vs brainlib's, same run"),
        ("evaluate", "score a checkpoint on the official Testing split (writes metrics.json)"),
    ]:
        p = sub.add_parser(name, help=help_text)
        add_config_flags(p)
        if name == "train":
            p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
        if name == "evaluate":
            p.add_argument("--checkpoint", default=None, help="default: <run-dir>/checkpoints/best.pt")
            p.add_argument(
                "--shift-severities", default="1,2,3", help="severities of the shift suite to score (comma-separated; empty: none)"
            )
            p.add_argument(
                "--shift-sample", type=int, default=0, help="score shifts on a stratified sample of this many test images (0: all)"
            )
        if name == "bench":
            p.add_argument("--steps", type=int, default=4, help="timed training steps per pipeline")
            p.add_argument("--out", default=None, help="JSON file for the results")
    p = sub.add_parser("export", help="write a small inference-only copy of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--half", action="store_true", help="store weights as float16")
    p = sub.add_parser("audit-labels", help="label-quality audit: k-fold out-of-fold probabilities, then confident learning")
    add_config_flags(p)
    p.add_argument("--folds", type=int, default=5, help="folds (each trains the run's recipe once)")
    p.add_argument(
        "--test-checkpoint", default=None, help="score Testing with this checkpoint (trained on Training only) and fold Training alone"
    )
    p = sub.add_parser("model-card", help="write the model card of a checkpoint from its evaluation run's files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--eval-run", required=True, help="run folder where `evaluate` scored this checkpoint")
    p.add_argument("--audit-run", default=None, help="run folder holding a label audit (label_audit/)")
    p.add_argument("--out", default="docs/MODEL_CARD.md")
    p = sub.add_parser("calibrate", help="store temperature and conformal thresholds, fitted on the val split, in a copy of a checkpoint")
    add_config_flags(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the calibrated copy (may be the same path: written atomically)")
    p = sub.add_parser("compare", help="one table row per evaluated run folder (markdown); paired tests against the first")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--shifts", action="store_true", help="add accuracy under each acquisition shift")
    p = sub.add_parser("predict", help="classify image files with a checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--checkpoint", default=None, help="default: the committed checkpoints/ model")
    p.add_argument("--cam", default=None, metavar="OUT_DIR", help="write a Grad-CAM overlay per image here")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument(
        "--alpha", type=float, default=0.01, help="prediction sets hold the true class with probability 1 - alpha (0.01 or 0.05)"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "predict":
        return predict_command(args)
    if args.command == "compare":
        from .compare import compare_runs

        table = compare_runs(args.run_dirs, args.shifts)
        print(table.to_markdown(index=False) if len(table) else "no evaluated runs")
        if len(table) > 1:
            from .compare import paired_table

            evaluated = [r for r in args.run_dirs if (Path(r) / "metrics.json").exists()]
            print("\nPaired on the same test images (difference = run - vs; McNemar's exact test):")
            print(paired_table(evaluated).to_markdown(index=False))
        return 0 if len(table) else 1
    if args.command == "model-card":
        from .model_card import build_model_card, write_model_card

        print(write_model_card(build_model_card(args.checkpoint, args.eval_run, args.audit_run), args.out))
        return 0
    if args.command == "export":
        from .checkpoint import export_checkpoint

        print(export_checkpoint(args.checkpoint, args.out, args.half))
        return 0
    cfg = config_from_args(args)
    if args.command in ("evaluate", "calibrate") and args.checkpoint:
        cfg = checkpoint_config(cfg, args.checkpoint)

    unprepared = not (Path(cfg.run_dir) / "manifest.csv").exists()
    if args.command == "prepare" or (args.command in ("evaluate", "calibrate", "audit-labels") and unprepared):
        prepare(cfg)
    if args.command == "train":
        from .train import train

        train(cfg, resume=args.resume)
    elif args.command == "bench":
        from .bench import run_benchmark

        run_benchmark(cfg, steps=args.steps, out=args.out)
    elif args.command == "audit-labels":
        from .label_audit import run_label_audit
        from .loader import load_run_data

        if args.folds < 2:
            raise SettingsError(f"--folds must be at least 2, not {args.folds}")
        print(json.dumps(run_label_audit(cfg, load_run_data(cfg), args.folds, test_checkpoint=args.test_checkpoint), indent=2))
    elif args.command == "calibrate":
        from .evaluate import calibrate_checkpoint
        from .loader import load_run_data

        print(json.dumps(calibrate_checkpoint(cfg, load_run_data(cfg), args.checkpoint, args.out), indent=2))
    elif args.command == "evaluate":
        from .evaluate import compute_metrics, predict_test, report_table, write_metrics
        from .loader import load_run_data

        severities = tuple(int(x) for x in args.shift_severities.split(",") if x.strip())
        if not set(severities) <= {1, 2, 3}:
            raise SettingsError(f"--shift-severities takes 1, 2 and/or 3, not {args.shift_severities!r}")
        pred, extras = predict_test(cfg, load_run_data(cfg), args.checkpoint, bool(severities), severities, args.shift_sample)
        metrics = compute_metrics(pred, extras)
        print(report_table(pred))
        if metrics["shifts"]:
            from .evaluate import shift_pivot

            print(shift_pivot(metrics["shifts"]).to_string(float_format=lambda v: f"{100 * v:.2f}"))
            print(json.dumps(metrics["shifts"]["summary"], indent=2))
        keys = ("accuracy", "accuracy_leakage_free", "n_leakage_free", "macro_f1", "ece", "ece_calibrated", "accuracy_tta_flip")
        print(json.dumps({k: metrics[k] for k in keys} | {"meningioma_recall": metrics["per_class"]["meningioma"]["recall"]}, indent=2))
        print(json.dumps({"95% intervals": metrics["intervals"], "prediction sets": (metrics["conformal"] or {}).get("sets")}, indent=2))
        print(f"metrics: {write_metrics(metrics, cfg.run_dir)}")
    return 0


def checkpoint_config(cfg: Config, checkpoint: str) -> Config:
    """Scoring a checkpoint in a fresh folder: its training settings (input size, seed and so the
    val split its temperature is fitted on, recipe) with this command's locations and device."""
    from .checkpoint import load_checkpoint

    here = (*LOCATION_FIELDS, "device", "fast", "fast_per_class", "precision", "num_threads")
    trained = {k: v for k, v in (load_checkpoint(checkpoint).get("config") or {}).items() if k not in here}  # not the trainer's paths
    return build_config(trained, {k: getattr(cfg, k) for k in here})


def prepare(cfg: Config) -> None:
    from .data import build_manifest, resolve_data_dir, write_manifest

    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    manifest, audit, scan = build_manifest(
        resolve_data_dir(cfg.data_dir or None),
        cfg.val_fraction,
        cfg.seed,
        cfg.fast_per_class if cfg.fast else 0,
        exclude_list=cfg.exclude_list,
    )
    print(f"manifest: {write_manifest(manifest, cfg.run_dir)} ({len(manifest)} images, {len(scan.skipped)} skipped)")
    print(json.dumps(audit.summary, indent=2))
    print(f"settings: {write_run_config(cfg)}")


def predict_command(args: argparse.Namespace) -> int:
    """Exit 0 when every image was classified, 1 when any failed (the others still print)."""
    from .infer import resolve_device
    from .predict import predict_images

    results = predict_images(args.images, args.checkpoint, args.cam, resolve_device(args.device), args.alpha)
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results:
        if "error" in r:
            print(f"error: {r['path']}: {r['error']}", file=sys.stderr)
        elif not args.json:
            probs = "  ".join(f"{k}={v:.3f}" for k, v in r["probabilities"].items())
            chosen = ""
            if "prediction_set" in r:
                chosen = f"  {100 * r['coverage']:g}% set: {{{', '.join(r['prediction_set'])}}}" + (
                    "  uncertain: review" if r["uncertain"] else ""
                )
            print(f"{r['path']}: {r['class']}  ({probs}){chosen}" + (f"  cam: {r['cam']}" if "cam" in r else ""))
        if "warning" in r:
            print(f"warning: {r['path']}: {r['warning']}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
