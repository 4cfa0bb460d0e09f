import dataclasses

import pytest

from brainlib.config import (
    DEFAULT_RECIPE,
    RECIPES,
    Config,
    build_config,
    prepare_config,
    read_run_config,
    run_config,
    write_run_config,
)
from brainlib.errors import DataError, SettingsError


def test_from_dict_coerces_text_and_ignores_unknown_keys():
    cfg = Config.from_dict({"fast": "false", "epochs": "3", "lr": "0.01", "unknown": 1})
    assert cfg.fast is False and cfg.epochs == 3 and cfg.lr == 0.01
    assert Config.from_dict({"fast": "True"}).fast is True
    with pytest.raises(ValueError, match="boolean"):
        Config.from_dict({"fast": "maybe"})


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 0},
        {"test_image_size": 16},
        {"cache_size": 8},
        {"epochs": 0},
        {"batch_size": 0},
        {"val_fraction": 0.0},
        {"val_fraction": 1.5},
        {"fast_per_class": 0},
        {"seed": -1},
        {"lr": 0.0},
        {"weight_decay": -0.1},
        {"label_smoothing": 1.0},
        {"ema_decay": 1.0},
        {"crop_scale_min": 0.0},
        {"jitter": -0.5},
        {"schedule": "cosine"},
        {"precision": "fp16"},
        {"device": "tpu"},
        {"num_threads": -2},
        {"host_prefetch": "gpu"},
    ],
    ids=lambda bad: f"{next(iter(bad))}={next(iter(bad.values()))}",
)
def test_a_setting_no_step_can_run_with_is_refused_where_settings_are_made(bad, tmp_path):
    """Each of these used to pass prepare and end in a traceback from inside training."""
    name = next(iter(bad))
    with pytest.raises(SettingsError, match=f"^{name} must be"):
        Config(**bad)
    with pytest.raises(SettingsError, match=f"^{name} must be"):
        prepare_config(str(tmp_path / "run"), **bad)
    with pytest.raises(SettingsError, match=f"^{name} must be"):
        Config.from_dict({**dataclasses.asdict(Config()), **bad})  # a saved config.json


def test_the_edges_of_the_accepted_settings_are_accepted():
    Config(test_image_size=0, ema_decay=0.0, label_smoothing=0.0, crop_scale_min=1.0, split_seed=-1, device="cuda:1")
    Config(image_size=32, cache_size=32, batch_size=1, epochs=1, fast_per_class=1, val_fraction=0.5, device="")


def test_prepare_writes_settings_and_a_recipe_replaces_them_explicit_values_winning(tmp_path):
    run = tmp_path / "run"
    first = prepare_config(str(run), data_dir="/data", epochs=3, lr=0.5)
    assert (first.recipe, first.epochs, first.lr) == (DEFAULT_RECIPE, 3, 0.5)  # a new run starts from the default
    assert not (run / "config.json").exists()  # prepare_run writes it, with the manifest
    write_run_config(first)
    cfg = prepare_config(str(run), recipe="efficientnet_lite0", epochs=2)
    write_run_config(cfg)
    assert (cfg.recipe, cfg.model, cfg.lr, cfg.schedule, cfg.epochs) == (
        "efficientnet_lite0",
        "efficientnet_lite0",
        1e-3,
        "onecycle",
        2,
    )
    assert cfg.data_dir == "/data"  # locations survive a recipe
    assert Config.from_dict(read_run_config(run)) == cfg
    # 01 opened alone passes empty parameters: the run's saved settings stay
    assert prepare_config(str(run), recipe="", model="", epochs=None, batch_size=None) == cfg
    assert prepare_config(str(run), recipe="reference") == Config(run_dir=str(run), data_dir="/data")


def test_run_config_reads_settings_and_never_writes_them(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DataError, match="run notebooks/01_data"):
        run_config(str(run))
    write_run_config(prepare_config(str(run), seed=7, batch_size=32))
    before = (run / "config.json").read_text()
    cfg = run_config(str(run), device="cpu", seed="")  # a notebook's override, and an empty one
    assert (cfg.seed, cfg.batch_size, cfg.device) == (7, 32, "cpu")
    assert (run / "config.json").read_text() == before


def test_every_recipe_names_a_registered_model_and_real_fields():
    from brainlib.models import create_model

    assert RECIPES["reference"] == {}
    for name, changes in RECIPES.items():
        assert set(changes) <= {f.name for f in dataclasses.fields(Config)}, name
        cfg = build_config({}, {"recipe": name})
        assert cfg.recipe == name and create_model(cfg.model) is not None
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*efficientnet_lite0"):
        build_config({}, {"recipe": "nope"})
