"""Command line: `python -m brainlib COMMAND [--flag value ...]`; `python -m brainlib COMMAND --help`
lists the flags that command takes, each with its default.

A run's settings are fixed by `prepare` (which writes config.json, as 01_data does); later steps
read them, and a flag given to a later step applies to that step only.

Exit codes: 0 done; 1 some images could not be predicted; 2 bad arguments or settings;
3 data folder or run folder problem; 4 bad checkpoint. Expected errors print one `error: ...` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import (
    DEFAULT_CHECKPOINT,
    DEFAULT_RECIPE,
    LOCATION_FIELDS,
    RECIPES,
    Config,
    build_config,
    parse_bool,
    read_run_config,
)
from .errors import BrainlibError, DataError, SettingsError

# Each command's modules are imported when it runs, not here: importing them all (torch, MONAI,
# TorchIO, scikit-learn, cleanlab) takes seconds, and `--help` or a bad flag should answer at once.

ALL_SETTINGS = tuple(f.name for f in dataclasses.fields(Config))
RUNTIME = ("device", "precision", "num_threads")
# the Config fields each command reads; `prepare` and `audit-labels` fix a run's settings, so take them all
COMMAND_SETTINGS = {
    "prepare": ALL_SETTINGS,
    "audit-labels": ALL_SETTINGS,
    # overrides for this training alone (the split, model and augmentation stay the run's)
    "train": (
        *LOCATION_FIELDS,
        *RUNTIME,
        "compile",
        "cuda_graphs",
        "host_prefetch",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "schedule",
        "label_smoothing",
        "ema_decay",
    ),
    "evaluate": (*LOCATION_FIELDS, "device", "num_threads", "fast"),
    "calibrate": (*LOCATION_FIELDS, "device", "num_threads"),
    "ensemble": (*LOCATION_FIELDS, "device", "num_threads"),
    "ood-report": (*LOCATION_FIELDS, "device", "num_threads"),
    "bench": (
        *LOCATION_FIELDS,
        *RUNTIME,
        "model",
        "image_size",
        "batch_size",
        "acquisition_aug",
        "compile",
        "cuda_graphs",
    ),
    "plan": ("run_dir", "seed", "recipe", "model", "epochs", "batch_size", "device", "precision", "fast"),
}


def _parse_bool(text: str) -> bool:
    try:
        return parse_bool(text)
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_config_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One flag per Config field in `names`, with the field's help and its default for a new run
    (the default recipe's value)."""
    group = parser.add_argument_group("run settings (default: the run's config.json; for a new run, the value shown)")
    new_run = dataclasses.asdict(build_config({}, {}))
    for f in dataclasses.fields(Config):
        if f.name not in names:
            continue
        kind = {"bool": _parse_bool, "int": int, "float": float}.get(str(f.type), str)
        help_text = f"{f.metadata['help']} (default: {new_run[f.name]!r})"
        if f.name == "recipe":
            help_text += f"; one of: {', '.join(RECIPES)}"
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=kind,
            default=None,
            choices=list(RECIPES) if f.name == "recipe" else None,
            metavar=f.name.upper(),
            help=help_text.replace("%", "%%"),  # argparse formats help with %
        )


def config_from_args(args: argparse.Namespace) -> Config:
    given = {name: getattr(args, name) for name in ALL_SETTINGS if getattr(args, name, None) is not None}
    return build_config(read_run_config(given.get("run_dir", Config.run_dir)), given)


def main(argv: list[str] | None = None) -> int:
    """Runs a command; an expected error becomes one `error: ...` line and its exit code."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrainlibError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.filename is None:  # not about a path the user gave: a bug or the machine, keep the traceback
            raise
        # a run folder, --out or --cam under a file, on a read-only or missing mount, a full disk
        print(f"error: {err.strerror or err}: {err.filename}", file=sys.stderr)
        return DataError.exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brainlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in COMMAND_SETTINGS:
            add_config_flags(p, COMMAND_SETTINGS[name])
        return p

    command("plan", "how long `make pipeline` will take here: times a few training and scoring steps, then scales them")
    command(
        "prepare",
        f"scan the data, audit duplicates, carve validation, write the run's settings (new run: recipe {DEFAULT_RECIPE})",
    )
    p = command("train", "train the run's model on its train split, selecting the epoch on validation")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    p = command("evaluate", "score a checkpoint on the official Testing split (writes metrics.json, predictions.csv)")
    p.add_argument("--checkpoint", default=None, help="default: <run-dir>/checkpoints/best.pt")
    p.add_argument(
        "--shift-severities",
        default="1,2,3",
        help="shift-suite severities to score, comma-separated; '' skips it. All three are 76 passes over the "
        "1,311 test images: 14 min on a 2-core Xeon with AVX-512 (scored in ONNX Runtime), 51 min on a CPU "
        "without AVX-512 scoring in PyTorch (default: '1,2,3')",
    )
    p.add_argument(
        "--shift-sample",
        type=int,
        default=0,
        help="score the shifts on a stratified sample of this many test images (default: 0, all)",
    )
    p = command(
        "bench", "training and scoring throughput: the plain per-image pipeline vs brainlib's batches, same run"
    )
    p.add_argument("--steps", type=int, default=4, help="timed training steps per pipeline (default: 4)")
    p.add_argument("--out", default=None, help="JSON file for the results (default: none)")
    p = command("audit-labels", "label-quality audit: k-fold out-of-fold probabilities, then confident learning")
    p.add_argument("--folds", type=int, default=5, help="folds, each trains the run's recipe once (default: 5)")
    p.add_argument(
        "--test-checkpoint",
        default=None,
        help="score Testing with this checkpoint (trained on Training only) and fold Training alone",
    )
    p.add_argument(
        "--members",
        nargs="+",
        default=None,
        help="finished audits of the same folds (run folders, or folders of fold<k>/) to combine; trains nothing",
    )
    p = command(
        "calibrate", "store temperature and conformal thresholds, fitted on the val split, in a copy of a checkpoint"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="the calibrated copy (may be the same path: written atomically)")
    p.add_argument(
        "--scoring-size",
        type=int,
        default=0,
        help="a copy that scores at this side (FixRes: a side chosen out of fold), its temperature, conformal "
        "thresholds and OOD detector fitted there on the val split (default: the side it scores at now)",
    )
    p.add_argument(
        "--refit",
        action="store_true",
        help="fit temperature, conformal thresholds and OOD detector again where the checkpoint has them "
        "(default: keep them): for one calibrated on other pixels, as a GPU run on a compact copy is",
    )
    p = command(
        "ensemble",
        "one checkpoint from several (seeds or backbones) and/or flip test-time augmentation, with its own "
        "temperature, conformal thresholds and OOD detector fitted on the members' validation split",
    )
    p.add_argument(
        "members", nargs="+", help="member checkpoints, all selected on one validation split (same seed and data)"
    )
    p.add_argument("--flip", action="store_true", help="each member also scores the mirror image")
    p.add_argument("--out", required=True, help="the ensemble checkpoint")
    p = command(
        "ood-report", "measure the out-of-distribution scores: test split, shifted test images, the non-MRI suite"
    )
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"default: {DEFAULT_CHECKPOINT}")
    p.add_argument(
        "--shift-sample",
        type=int,
        default=400,
        help="test images scored under each shift, middle severity (default: 400)",
    )
    p = command("export", "write a small inference-only copy of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--half", action="store_true", help="store weights as float16 (half the file)")
    p.add_argument(
        "--trained-weights",
        action="store_true",
        help="from a weight-averaged run's last.pt: its trained weights, not the average (uncalibrated: run calibrate)",
    )
    p = command("model-card", "write the model card of a checkpoint from its evaluation run's files")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"default: {DEFAULT_CHECKPOINT}")
    p.add_argument("--eval-run", required=True, help="run folder where `evaluate` scored this checkpoint")
    p.add_argument(
        "--audit-run",
        default=None,
        help="run folder holding a label audit (label_audit/), or the folder of label_audit.json",
    )
    p.add_argument(
        "--ood-report", default=None, help="an ood-report's report.json (default: <eval-run>/ood/report.json)"
    )
    p.add_argument("--out", default="docs/MODEL_CARD.md", help="default: docs/MODEL_CARD.md")
    p = command("compare", "one table row per evaluated run folder (markdown); paired tests against the first")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR")
    p.add_argument("--shifts", action="store_true", help="add the shift suite's summary columns")
    p = command(
        "shortcuts",
        "does the file's format alone tell tumour from no tumour, and do the runs' models fail where it misleads?",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="evaluated run folders (predictions.csv)")
    p.add_argument(
        "--manifest", default=None, help="a run's manifest.csv, for folders without their own (default: the folder's)"
    )
    p = command("results-table", "the front-door results table, from the committed metrics files (markdown)")
    p.add_argument(
        "--update", default=None, metavar="FILE", help="write it into FILE's results-table block (e.g. README.md)"
    )
    p = command(
        "figures", "the default checkpoint's figures in docs/figures/, from committed files and its evaluation folder"
    )
    p.add_argument(
        "--eval-run",
        default=None,
        help="where `evaluate` scored the default checkpoint: adds confusion matrix, reliability, shift examples, Grad-CAM",
    )
    p = command("predict", "classify image files (or the images in folders) with a checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--checkpoint", default=None, help=f"default: {DEFAULT_CHECKPOINT}")
    p.add_argument("--cam", default=None, metavar="OUT_DIR", help="write a Grad-CAM overlay per image here")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default: auto)")
    p.add_argument(
        "--allow-ood", action="store_true", help="show the class of inputs judged out of distribution too, marked"
    )
    p.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        default=2,
        help="NIfTI: slice along this axis of the canonical (RAS) volume: 2 axial, 1 coronal, 0 sagittal (default: 2)",
    )
    p.add_argument("--slice", type=int, default=None, help="NIfTI: score only this slice index (default: every slice)")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="prediction sets hold the true class with probability 1 - alpha: 0.01 or 0.05 (default: 0.01)",
    )
    return parser


def _prepare_if_new(cfg: Config) -> None:
    if not (Path(cfg.run_dir) / "manifest.csv").exists():
        prepare(cfg)


def prepare(cfg: Config) -> None:
    from .data import prepare_run

    prepared = prepare_run(cfg)
    print(
        f"manifest: {Path(cfg.run_dir) / 'manifest.csv'} ({len(prepared.manifest)} images, {len(prepared.scan.skipped)} skipped)"
    )
    print(json.dumps(prepared.duplicates.summary, indent=2))
    print(f"settings: {Path(cfg.run_dir) / 'config.json'} (recipe {cfg.recipe})")


def plan_command(args: argparse.Namespace) -> int:
    from .plan import print_plan

    print_plan(config_from_args(args))
    return 0


def prepare_command(args: argparse.Namespace) -> int:
    prepare(config_from_args(args))
    return 0


def train_command(args: argparse.Namespace) -> int:
    from .train import train

    train(config_from_args(args), resume=args.resume)
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from .bench import run_benchmark

    if args.steps < 1:
        raise SettingsError(f"--steps must be at least 1, not {args.steps}")
    cfg = config_from_args(args)
    _prepare_if_new(cfg)
    run_benchmark(cfg, steps=args.steps, out=args.out)
    return 0


def audit_command(args: argparse.Namespace) -> int:
    from .label_audit import run_label_audit
    from .loader import load_run_data

    if args.folds < 2:
        raise SettingsError(f"--folds must be at least 2, not {args.folds}")
    cfg = config_from_args(args)
    _prepare_if_new(cfg)
    print(
        json.dumps(
            run_label_audit(
                cfg, load_run_data(cfg), args.folds, test_checkpoint=args.test_checkpoint, members=args.members
            ),
            indent=2,
        )
    )
    return 0


def _scoring_config(args: argparse.Namespace) -> Config:
    """A scoring command's settings: with a checkpoint, its training settings (seed and so the val
    split it was selected and calibrated on, sizes) with this command's locations and device."""
    from .checkpoint import trained_config

    cfg = config_from_args(args)
    return trained_config(args.checkpoint, cfg) if args.checkpoint else cfg


def calibrate_command(args: argparse.Namespace) -> int:
    import tempfile

    from .calibration import calibrate_checkpoint
    from .checkpoint import scored_at, uncalibrated
    from .loader import load_run_data

    cfg = _scoring_config(args)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if args.scoring_size:  # checked before the data load: a fixed-side model gets its one line at once
            # the copy keeps the side its calibration was fitted at, so calibrate_checkpoint fits all of it again
            checkpoint = scored_at(args.checkpoint, args.scoring_size, Path(tmp) / "at_side.pt")
        if args.refit:
            checkpoint = uncalibrated(checkpoint, Path(tmp) / "uncalibrated.pt")
        _prepare_if_new(cfg)
        print(json.dumps(calibrate_checkpoint(cfg, load_run_data(cfg), checkpoint, args.out), indent=2))
    return 0


def ensemble_command(args: argparse.Namespace) -> int:
    from .checkpoint import trained_config
    from .ensemble import build_ensemble
    from .loader import load_run_data

    cfg = trained_config(args.members[0], config_from_args(args))  # the members' validation split
    _prepare_if_new(cfg)
    print(json.dumps(build_ensemble(cfg, load_run_data(cfg), args.members, args.flip, args.out), indent=2))
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from .evaluate import compute_metrics, predict_test, report_table, write_metrics
    from .loader import load_run_data
    from .robustness import parse_severities, shift_pivot

    severities = parse_severities(args.shift_severities)
    cfg = _scoring_config(args)
    _prepare_if_new(cfg)
    pred, logits, extras = predict_test(
        cfg, load_run_data(cfg), args.checkpoint, bool(severities), severities, args.shift_sample
    )
    metrics = compute_metrics(pred, logits, extras)
    print(report_table(pred))
    if metrics["shifts"]:
        print(shift_pivot(metrics["shifts"]).to_string(float_format=lambda v: f"{100 * v:.2f}"))
        print(json.dumps(metrics["shifts"]["summary"], indent=2))
    keys = (
        "accuracy",
        "accuracy_leakage_free",
        "n_leakage_free",
        "macro_f1",
        "ece",
        "ece_calibrated",
        "accuracy_tta_flip",
    )
    print(
        json.dumps(
            {k: metrics[k] for k in keys} | {"meningioma_recall": metrics["per_class"]["meningioma"]["recall"]},
            indent=2,
        )
    )
    print(
        json.dumps(
            {"95% intervals": metrics["intervals"], "prediction sets": (metrics["conformal"] or {}).get("sets")},
            indent=2,
        )
    )
    print(f"metrics: {write_metrics(metrics, cfg.run_dir)}")
    return 0


def ood_report_command(args: argparse.Namespace) -> int:
    from .checkpoint import load_for_inference
    from .infer import setup_torch
    from .loader import load_run_data
    from .ood_suite import measure, write_report

    cfg = _scoring_config(args)
    _prepare_if_new(cfg)
    device = setup_torch(cfg)
    result = measure(load_for_inference(args.checkpoint, device), cfg, load_run_data(cfg), device, args.shift_sample)
    print(result["summary"].round(4).to_markdown(index=False))
    print(f"chosen on the tuning families: {result['chosen']}")
    print(f"report: {write_report(result, Path(cfg.run_dir) / 'ood')}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from .checkpoint import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, args.half, args.trained_weights))
    return 0


def model_card_command(args: argparse.Namespace) -> int:
    from .model_card import build_model_card, write_model_card

    print(write_model_card(build_model_card(args.checkpoint, args.eval_run, args.audit_run, args.ood_report), args.out))
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from .compare import compare_runs, paired_table, seed_summary

    table = compare_runs(args.run_dirs, args.shifts)
    if not len(table):
        print(
            "error: no evaluated run folders given: evaluate something first, e.g. `make evaluate` "
            "(the default checkpoint) or `python -m brainlib evaluate --run-dir runs/<run>`",
            file=sys.stderr,
        )
        return 1
    print(table[[c for c in table.columns if not c.startswith("_")]].to_markdown(index=False))
    seeds = seed_summary(table)
    if len(seeds):
        print("\nSeeds of one recipe (mean ± sample sd, range):")
        print(seeds.to_markdown(index=False))
    if len(table) > 1:
        paired = paired_table([Path(r) for r in args.run_dirs if (Path(r) / "metrics.json").exists()])
        if len(paired):
            print("\nPaired on the same test images (difference = run - vs; McNemar's exact test):")
            print(paired.to_markdown(index=False))
    return 0


def shortcuts_command(args: argparse.Namespace) -> int:
    import pandas as pd

    from .shortcuts import (
        fit_file_rule,
        fit_tumour_type_rule,
        folder_report,
        rule_text,
        shortcut_table,
        tumour_type_table,
    )

    reports, manifest_file = {}, None
    for run_dir in map(Path, args.run_dirs):
        source = Path(args.manifest) if args.manifest else run_dir / "manifest.csv"
        report = folder_report(run_dir, source)
        if report is None:
            print(
                f"skipped {run_dir}: needs predictions.csv (evaluate) and a manifest with file modes (prepare, --manifest)"
            )
            continue
        reports[run_dir.name], manifest_file = report, source
    if not reports:
        print("error: no run folder could be read", file=sys.stderr)
        return 1
    manifest = pd.read_csv(manifest_file)
    print("The file rule (Training files only; True = no tumour):")
    print(rule_text(fit_file_rule(manifest)))
    first = next(iter(reports.values()))
    print(f"its tumour-vs-none accuracy on the test images: {100 * first['rule_tumour_vs_none_accuracy']:.2f} %\n")
    print(shortcut_table(reports).to_markdown(index=False))
    types = tumour_type_table(reports)
    if len(types):
        share = first["tumour_type"]
        print("\nInside the tumour classes: the type the file's format points to (Training's tumour files only):")
        print(rule_text(fit_tumour_type_rule(manifest)))
        print(
            f"right for {100 * share['rule_accuracy']:.2f} % of the tumour test images "
            f"(the largest class alone: {100 * share['largest_class_share']:.2f} %)\n"
        )
        print(types.to_markdown(index=False))
    return 0


def results_table_command(args: argparse.Namespace) -> int:
    from .results import results_table, update

    print(update(args.update) if args.update else results_table())
    return 0


def figures_command(args: argparse.Namespace) -> int:
    from .results import default_figures, robustness_figure

    print(robustness_figure())
    for path in default_figures(args.eval_run) if args.eval_run else []:
        print(path)
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """Exit 0 when every input was classified, 1 when any could not be read or was judged out of
    distribution without --allow-ood (the others still print)."""
    from .infer import resolve_device
    from .predict import expand_inputs, predict_images

    inputs, skipped = expand_inputs(args.images)
    report = predict_images(
        inputs,
        args.checkpoint,
        args.cam,
        resolve_device(args.device),
        args.alpha,
        args.allow_ood,
        args.axis,
        args.slice,
    )
    results = report["results"]
    report["skipped"] = skipped
    if skipped:  # not an error: a folder of scans often holds a note or a spreadsheet
        shown = ", ".join(Path(f).name for f in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(
            f"skipped {len(skipped)} file(s) in the folders given: not images, DICOM or NIfTI ({shown})",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"checkpoint: {report['checkpoint']} ({report['model']}, {report['image_size']} px)")
    for r in results:
        where = r["path"] + (f" [{r['slice']}]" if "slice" in r else "")
        if "error" in r:
            print(f"error: {where}: {r['error']}", file=sys.stderr)
        elif not args.json:
            print(f"{where}: {_predict_line(r)}")
        if "warning" in r:
            print(f"warning: {where}: {r['warning']}", file=sys.stderr)
    if not args.json:
        for v in report["volumes"]:
            classes = ", ".join(f"{c} {n}" for c, n in v["classes"].items()) or "none"
            print(
                f"volume {v['path']}: {v['slices']} slices; classes: {classes}; out of distribution: {v['out_of_distribution']}"
            )
    declined = any(r.get("out_of_distribution") for r in results) and not args.allow_ood
    return 1 if declined or any("error" in r for r in results) else 0


def _predict_line(r: dict) -> str:
    if r["class"] is None:
        return f"no class: {r['reason']}"
    probs = "  ".join(f"{k}={v:.3f}" for k, v in r["probabilities"].items())
    chosen = ""
    if "prediction_set" in r:
        chosen = f"  {100 * r['coverage']:g}% set: {{{', '.join(r['prediction_set'])}}}"
        chosen += "  uncertain: review" if r["uncertain"] else ""
    marked = "  [out of distribution: shown because of --allow-ood]" if r.get("out_of_distribution") else ""
    return f"{r['class']}  ({probs}){chosen}{marked}" + (f"  cam: {r['cam']}" if "cam" in r else "")


COMMANDS = {
    "plan": plan_command,
    "prepare": prepare_command,
    "train": train_command,
    "evaluate": evaluate_command,
    "bench": bench_command,
    "audit-labels": audit_command,
    "calibrate": calibrate_command,
    "ensemble": ensemble_command,
    "export": export_command,
    "ood-report": ood_report_command,
    "model-card": model_card_command,
    "compare": compare_command,
    "shortcuts": shortcuts_command,
    "results-table": results_table_command,
    "figures": figures_command,
    "predict": predict_command,
}

if __name__ == "__main__":
    sys.exit(main())
