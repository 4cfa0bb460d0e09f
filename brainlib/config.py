"""The one configuration object shared by every notebook and the CLI, the named recipes, and
the one merge rule.

A run's settings are fixed when it is prepared (`prepare` or 01_data): that step writes
`config.json`, and nothing else does. Later steps (02-05, train, evaluate) read it; an override
given to one of them applies to that step only and is never written back, so a run prepared with
seed 7 stays seed 7 whatever a later notebook's parameter cell says.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text
from .errors import DataError, SettingsError

REPO_ROOT = Path(__file__).resolve().parents[1]
# The default, named once. DEFAULT_RECIPE is what a new run trains (`make pipeline`, `prepare`, 01_data
# without a recipe); DEFAULT_CHECKPOINT is the committed model of that recipe that `predict`, `make evaluate`
# and the model card use: the seed that validation chose among six trained on one carve of the original
# files (three on a 2-core CPU, three on an H200). Over three CPU seeds the recipe scores 99.67 ± 0.09 % against
# 99.19 ± 0.19 % for the 224-px/10-epoch one (Welch p = 0.03, docs/trust.md) for about 2.5 times its training
# time (`make pipeline`'s 03 on a 2-core CPU with bf16 kernels: 37.6 against 14.8 min); `plan` offers the shorter
# one where the default's estimate is long.
DEFAULT_RECIPE = "efficientnet_lite0_robust_256"
# what `plan` suggests where DEFAULT_RECIPE would take hours on the machine it found
SHORTER_RECIPE = "efficientnet_lite0_robust"
DEFAULT_CHECKPOINT = "checkpoints/efficientnet_lite0_robust.pt"
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
SPLITS_ON_DISK: tuple[str, ...] = ("Training", "Testing")


def _setting(default, help: str):
    """A Config field with its one-line help (the CLI's --help shows it with the default)."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # where things are
    run_dir: str = _setting(
        "runs/default", "run folder: settings, manifest, checkpoints, metrics, figures, TensorBoard logs"
    )
    data_dir: str = _setting("", "dataset folder with Training/ and Testing/ (empty: $BRAIN_DATA_DIR, then kagglehub)")
    cache_dir: str = _setting("", "decoded-image cache (empty: $BRAIN_CACHE_DIR, then runs/cache, shared by all runs)")
    # data
    seed: int = _setting(42, "seed of the validation split, initialisation, shuffling and augmentation")
    split_seed: int = _setting(
        -1,
        "seed of the validation split alone (-1: the run's seed): runs that share it are selected on the same "
        "images, so their models can be compared there and ensembled",
    )
    val_fraction: float = _setting(
        0.10, "share of Training carved out for validation (stratified, duplicate groups kept whole)"
    )
    cache_size: int = _setting(256, "side of the decoded grayscale images in the cache (px)")
    image_size: int = _setting(224, "model input side (px)")
    test_image_size: int = _setting(
        0,
        "side the trained model scores images at (0: image_size); larger undoes the zoom of the training "
        "crops (FixRes)",
    )
    fast: bool = _setting(False, "a tiny sample per class: for tests and smoke runs")
    fast_per_class: int = _setting(8, "images per class and split with --fast")
    exclude_list: str = _setting(
        "", "CSV with a `path` column (a label audit's label_issues.csv): those Training images train nowhere"
    )
    carve_file: str = _setting(
        "",
        "CSV with a `path` column naming the validation images to hold out in place of a drawn carve (empty: "
        "draw one with split_seed): a run on another copy of the data is then selected on a committed "
        "checkpoint's own validation images (scripts/default_carve.csv)",
    )
    # train-time augmentation (reference: flip, rotate 15, RandomResizedCrop, ColorJitter)
    augment: bool = _setting(
        True, "flip, rotation, random-resized crop and brightness/contrast jitter (false: an ablation)"
    )
    crop_scale_min: float = _setting(
        0.08, "smallest random-resized-crop area (torchvision's default; the reference does not say)"
    )
    jitter: float = _setting(0.2, "brightness/contrast/saturation jitter strength (the reference does not say)")
    init_checkpoint: str = _setting(
        "", "start from these weights (a brainlib checkpoint, read as data) instead of the model's own"
    )
    acquisition_aug: bool = _setting(
        False, "train-time resolution, JPEG, intensity and noise shifts (brainlib.augment)"
    )
    # model and optimisation: the reference recipe is the dataclass's default; RECIPES names better ones
    recipe: str = _setting("reference", "named recipe these settings start from (see RECIPES in brainlib/config.py)")
    model: str = _setting("seed_cnn", "architecture, a name in brainlib.models.MODELS")
    epochs: int = _setting(10, "training epochs")
    batch_size: int = _setting(128, "images per training step")
    lr: float = _setting(1e-4, "learning rate (the peak with the onecycle schedule)")
    weight_decay: float = _setting(1e-4, "AdamW weight decay")
    schedule: str = _setting("constant", "learning-rate schedule: constant | onecycle")
    label_smoothing: float = _setting(0.0, "cross-entropy label smoothing")
    ema_decay: float = _setting(
        0.0, "exponential moving average of the weights (decay per step), validated and saved in their place; 0: off"
    )
    device: str = _setting("auto", "auto (CUDA when available) | cpu | cuda")
    precision: str = _setting(
        "auto", "training precision: auto (bf16 autocast on CUDA and on CPUs with bf16 instructions) | bf16 | fp32"
    )
    compile: bool = _setting(
        False, "torch.compile the training step (+25 % in fp32 on a CPU; slower than bf16 eager for both models)"
    )
    cuda_graphs: bool = _setting(True, "on CUDA, replay the training forward/backward from CUDA graphs")
    num_threads: int = _setting(0, "CPU threads for torch (0: torch's default)")
    host_prefetch: str = _setting(
        "auto",
        "where the next training batch is drawn and its JPEG round trips run: auto (a host thread on CUDA, in line on a "
        "CPU) | thread | process (a forked worker) | off; the batches are the same",
    )

    def __post_init__(self) -> None:
        # every way of making settings (prepare, a notebook's parameters, a run's config.json, a checkpoint's)
        # passes here, so a value no step can run with is one line, not a stack trace from deep inside
        # training after the data was scanned (before this check, 10 of 13 bad values tried each ended in a
        # traceback; epochs=0 exited 0 with no model; fast_per_class=0 trained on the whole dataset)
        problem = next((text for bad, text in _setting_problems(self) if bad), None)
        if problem:
            raise SettingsError(problem)

    @property
    def scoring_size(self) -> int:
        """The side images are scored at once the model is trained (evaluate, predict, the shift suite):
        test_image_size where a recipe sets it, else the training side."""
        return self.test_image_size or self.image_size

    @property
    def validation_seed(self) -> int:
        """The seed the validation split is carved with."""
        return self.seed if self.split_seed < 0 else self.split_seed

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """Build from a dict, ignoring unknown keys (old run folders, notebook extras) and
        coercing text to each field's type ("false" from a command line is not truthy)."""
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{k: _coerce(v, kinds[k]) for k, v in values.items() if k in kinds})

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)


SCHEDULES = ("constant", "onecycle")
PRECISIONS = ("auto", "bf16", "fp32")
HOST_PREFETCH = ("auto", "thread", "process", "off")
# the registered models downsample 32x: a smaller side leaves less than one pixel to their last stage
SMALLEST_SIDE = 32


def _setting_problems(cfg: Config):
    """(is wrong, what to say) for each setting a run cannot work with."""
    side = f"at least {SMALLEST_SIDE} px (the models downsample 32x)"
    yield cfg.image_size < SMALLEST_SIDE, f"image_size must be {side}, not {cfg.image_size}"
    yield (
        cfg.test_image_size != 0 and cfg.test_image_size < SMALLEST_SIDE,
        f"test_image_size must be 0 (the training side) or {side}, not {cfg.test_image_size}",
    )
    yield cfg.cache_size < SMALLEST_SIDE, f"cache_size must be {side}, not {cfg.cache_size}"
    yield cfg.epochs < 1, f"epochs must be at least 1, not {cfg.epochs}"
    yield cfg.batch_size < 1, f"batch_size must be at least 1, not {cfg.batch_size}"
    yield (
        not 0 < cfg.val_fraction < 1,
        f"val_fraction must be between 0 and 1 (validation selects the model), not {cfg.val_fraction}",
    )
    yield cfg.fast_per_class < 1, f"fast_per_class must be at least 1, not {cfg.fast_per_class}"
    yield cfg.seed < 0, f"seed must be 0 or more, not {cfg.seed}"
    yield cfg.split_seed < -1, f"split_seed must be -1 (the run's seed) or 0 or more, not {cfg.split_seed}"
    yield not cfg.lr > 0, f"lr must be above 0, not {cfg.lr}"
    yield cfg.weight_decay < 0, f"weight_decay must be 0 or more, not {cfg.weight_decay}"
    yield not 0 <= cfg.label_smoothing < 1, f"label_smoothing must be in [0, 1), not {cfg.label_smoothing}"
    yield not 0 <= cfg.ema_decay < 1, f"ema_decay must be 0 (off) or in (0, 1), not {cfg.ema_decay}"
    yield not 0 < cfg.crop_scale_min <= 1, f"crop_scale_min must be in (0, 1], not {cfg.crop_scale_min}"
    yield cfg.jitter < 0, f"jitter must be 0 or more, not {cfg.jitter}"
    yield cfg.schedule not in SCHEDULES, f"schedule must be {' or '.join(SCHEDULES)}, not {cfg.schedule!r}"
    yield cfg.precision not in PRECISIONS, f"precision must be {', '.join(PRECISIONS)}, not {cfg.precision!r}"
    yield (
        not re.fullmatch(r"(auto|cpu|cuda(:\d+)?)?", cfg.device),
        f"device must be auto, cpu, cuda or cuda:N, not {cfg.device!r}",
    )
    yield cfg.num_threads < 0, f"num_threads must be 0 (torch's default) or more, not {cfg.num_threads}"
    yield (
        cfg.host_prefetch not in HOST_PREFETCH,
        f"host_prefetch must be {', '.join(HOST_PREFETCH)}, not {cfg.host_prefetch!r}",
    )


# Named recipes, timm-style: each is a set of changes to the defaults (the reference recipe as
# published, with torchvision's default augmentation parameters). Every row of the README's
# comparison table is one of these: `make pipeline RECIPE=efficientnet_lite0`.
ONECYCLE_MILD_AUG = {"schedule": "onecycle", "label_smoothing": 0.1, "crop_scale_min": 0.5, "jitter": 0.1}
SEED_CNN_ONECYCLE = {"augment": False, "epochs": 12, "lr": 1e-3, "schedule": "onecycle", "label_smoothing": 0.1}
EFFNET_LITE0 = {"model": "efficientnet_lite0", "epochs": 10, "batch_size": 64, "lr": 1e-3, **ONECYCLE_MILD_AUG}
RECIPES: dict[str, dict] = {
    "reference": {},
    "seed_cnn_noaug": {"augment": False},  # the reference without its augmentation: what the published log matches
    "seed_cnn_onecycle": SEED_CNN_ONECYCLE,
    "resnet18_scratch": {"model": "resnet18_scratch", "epochs": 8, "batch_size": 64, "lr": 2e-3, **ONECYCLE_MILD_AUG},
    "efficientnet_lite0": EFFNET_LITE0,
    # the whole cached 256-px image as input: best on validation (98.6 vs 98.3 %), 20 % slower
    "efficientnet_lite0_256": {**EFFNET_LITE0, "image_size": 256},
    # train-time acquisition shifts (resolution, JPEG, intensity, noise): accuracy on other scanners' exports
    # scored at 272 px: its random-resized crops (area 0.5-1) show a slice about 1.17x larger in training than
    # the whole 224-px image does; out of fold (five models of this recipe, 5,712 Training images each scored
    # by the model that never saw a copy) accuracy went 97.29 % at 224 px -> 97.97 % at 272 (McNemar
    # p = 3e-5), the smallest side within one standard error of the best (98.09 % at 320)
    "efficientnet_lite0_robust": {**EFFNET_LITE0, "acquisition_aug": True, "test_image_size": 272},
    # the same at 256 px for 20 epochs: best validation of the three robust variants trained on a GPU
    # (98.60 % against 98.08 % for 224 px/10 epochs and 98.43 % for 256 px/30); 49-53 s of training epochs
    # on an H200 (three seeds; the `train` command 85-104 s), 51-60 minutes (three seeds) on a 2-core AMD EPYC
    # with bf16 kernels (docs/trust.md);
    # scored at 320 px, chosen out of fold as the 224-px recipe's side was: five models of this recipe took
    # the 5,712 Training images from 97.15 % at 256 px to 97.85 % at 320 (McNemar p = 3e-5), the smallest side
    # within one standard error of the best (97.92 % at 352)
    "efficientnet_lite0_robust_256": {
        **EFFNET_LITE0,
        "acquisition_aug": True,
        "image_size": 256,
        "test_image_size": 320,
        "epochs": 20,
    },
    "seed_cnn_robust": {**SEED_CNN_ONECYCLE, "acquisition_aug": True},
    # larger backbones with the same shifts, for selection on validation against the default (GPU-sized:
    # Lite1 at its native 240 px; Lite2 at 256, the cache's side, where its native 260 would upsample)
    "efficientnet_lite1_robust": {
        **EFFNET_LITE0,
        "model": "efficientnet_lite1",
        "image_size": 240,
        "acquisition_aug": True,
    },
    "efficientnet_lite0_robust_ema": {
        **EFFNET_LITE0,
        "acquisition_aug": True,
        "test_image_size": 272,
        "ema_decay": 0.998,
    },
    # the committed default's recipe with the average: on a CPU the average lost to the plain weights on
    # validation at 224 px/10 epochs (98.10 against 98.44 %); at 256 px/20 epochs on the default's carve it was
    # one image below the plain weights at seed 2 and level at seed 42 (569/570, 568/568 of 575 at 320 px;
    # docs/results.md). It scores at its base recipe's side, as the 224-px average scores at 272, so the two
    # meet on equal terms
    "efficientnet_lite0_robust_256_ema": {
        **EFFNET_LITE0,
        "acquisition_aug": True,
        "image_size": 256,
        "test_image_size": 320,
        "epochs": 20,
        "ema_decay": 0.998,
    },
    "efficientnet_lite2_robust": {
        **EFFNET_LITE0,
        "model": "efficientnet_lite2",
        "image_size": 256,
        "acquisition_aug": True,
    },
    # the same shifts as a short fine-tune of the committed checkpoints (2 epochs at 3e-4): what a
    # CPU without AVX-512 can train in half an hour, where a full robust recipe takes two hours
    "efficientnet_lite0_robust_ft": {
        **EFFNET_LITE0,
        "image_size": 256,
        "acquisition_aug": True,
        "init_checkpoint": "checkpoints/efficientnet_lite0.pt",
        "epochs": 2,
        "lr": 3e-4,
    },
    "seed_cnn_robust_ft": {
        **SEED_CNN_ONECYCLE,
        "acquisition_aug": True,
        "init_checkpoint": "checkpoints/seed_cnn.pt",
        "epochs": 2,
        "lr": 3e-4,
    },
}
LOCATION_FIELDS = ("run_dir", "data_dir", "cache_dir")


def build_config(saved: dict, given: dict) -> Config:
    """The one merge rule for notebooks and the CLI: a run's saved config.json, replaced by a
    named recipe when one is given (locations kept), then the explicitly given values. Empty
    values (None, "") count as not given, so a notebook opened alone keeps its run's settings.
    A run with no saved settings and no recipe given starts from DEFAULT_RECIPE."""
    given = {k: v for k, v in given.items() if v is not None and v != ""}
    if not saved and "recipe" not in given:
        given = {"recipe": DEFAULT_RECIPE, **given}
    base = saved
    if "recipe" in given:
        if given["recipe"] not in RECIPES:
            raise SettingsError(f"unknown recipe {given['recipe']!r}; known: {', '.join(RECIPES)}")
        base = {**{k: saved[k] for k in LOCATION_FIELDS if k in saved}, **RECIPES[given["recipe"]]}
    return Config.from_dict({**base, **given})


def parse_bool(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"expected a boolean, got {text!r}")


def _coerce(value, kind: str):
    if not isinstance(value, str) or kind == "str":
        return value
    return {"bool": parse_bool, "int": int, "float": float}.get(kind, lambda v: v)(value)


def write_run_config(cfg: Config) -> Path:
    """The one writer of a run's config.json (called when the run is prepared)."""
    return write_text(Path(cfg.run_dir) / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def read_run_config(run_dir: str | Path) -> dict:
    """A run's saved settings ({} for a folder not prepared yet)."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def prepare_config(run_dir: str, **params) -> Config:
    """01_data's config: the run's saved settings (if any) with the notebook's parameters applied
    (see build_config). data.prepare_run writes it, with the manifest."""
    run_dir = str(in_repo(run_dir))
    return build_config(read_run_config(run_dir), {**params, "run_dir": run_dir})


def run_config(run_dir: str, **overrides) -> Config:
    """02-05's config: the run's saved settings with this notebook's non-empty overrides, not saved."""
    run_dir = str(in_repo(run_dir))
    saved = read_run_config(run_dir)
    if not saved:
        raise DataError(
            f"{run_dir}/config.json not found: run notebooks/01_data.ipynb (or `make pipeline`) for this run first"
        )
    return build_config(saved, {**overrides, "run_dir": run_dir})


IGNORED_IN_RECIPE_DIFF = {*LOCATION_FIELDS, "recipe", "device", "num_threads", "compile", "host_prefetch"}


def effective_settings(cfg: Config) -> dict:
    """The settings as they act: test_image_size 0 means scoring at image_size, so it reads as that side
    (runs that score at the same side group together however they said it)."""
    return cfg.__dict__ | {"test_image_size": cfg.scoring_size}


def recipe_and_changes(saved: dict) -> str:
    """'efficientnet_lite0 + image_size=256': the run's named recipe and what differs from it.
    A run from before recipes existed is described from the recipe it differs least from."""
    values = Config.from_dict(saved).__dict__

    def shown(key: str, value) -> str:  # a recipe that scores at another side, against one that does not
        return f"{key}={values['image_size'] if key == 'test_image_size' and not value else value}"

    def changes(name: str) -> list[str]:
        recipe = build_config({}, {"recipe": name}).__dict__
        return [shown(k, v) for k, v in values.items() if k not in IGNORED_IN_RECIPE_DIFF and v != recipe[k]]

    name = saved.get("recipe") or min(RECIPES, key=lambda r: len(changes(r)))
    changed = changes(name)
    return f"{name} + {' '.join(changed)}" if changed else name


def in_repo(path: str | Path) -> Path:
    """Relative paths are taken from the repo root, so a notebook opened in notebooks/ and
    `make pipeline` run from the root write to the same runs/ folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def default_cache_dir() -> Path:
    """Where derived files shared by all runs live (decoded images, shift-suite logits, exported
    scoring graphs): $BRAIN_CACHE_DIR, else runs/cache."""
    return in_repo(os.environ.get("BRAIN_CACHE_DIR", "runs/cache"))
