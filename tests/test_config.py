import dataclasses

import pytest

from brainlib.config import RECIPES, Config, build_config, notebook_config


def test_from_dict_coerces_text_and_ignores_unknown_keys():
    cfg = Config.from_dict({"fast": "false", "epochs": "3", "lr": "0.01", "unknown": 1})
    assert cfg.fast is False and cfg.epochs == 3 and cfg.lr == 0.01
    assert Config.from_dict({"fast": "True"}).fast is True
    with pytest.raises(ValueError, match="boolean"):
        Config.from_dict({"fast": "maybe"})


def test_notebook_config_merges_saved_config(tmp_path):
    run = tmp_path / "run"
    notebook_config(str(run), epochs=3, lr=0.5)
    cfg = notebook_config(str(run), epochs=4)
    assert (cfg.epochs, cfg.lr) == (4, 0.5)
    assert Config.load(run / "config.json").epochs == 4


def test_a_recipe_replaces_saved_settings_and_explicit_values_win(tmp_path):
    run = tmp_path / "run"
    notebook_config(str(run), data_dir="/data", epochs=3, lr=0.5)
    cfg = notebook_config(str(run), recipe="efficientnet_lite0", epochs=2)
    assert (cfg.recipe, cfg.model, cfg.lr, cfg.schedule, cfg.epochs) == ("efficientnet_lite0", "efficientnet_lite0", 1e-3, "onecycle", 2)
    assert cfg.data_dir == "/data"  # locations survive a recipe
    # a notebook opened alone passes empty parameters: the run's saved settings stay
    assert notebook_config(str(run), recipe="", model="", epochs=None, batch_size=None) == cfg
    back = notebook_config(str(run), recipe="reference")
    assert back == Config(run_dir=str(run), data_dir="/data")


def test_every_recipe_names_a_registered_model_and_real_fields():
    from brainlib.models import create_model

    assert RECIPES["reference"] == {}
    for name, changes in RECIPES.items():
        assert set(changes) <= {f.name for f in dataclasses.fields(Config)}, name
        cfg = build_config({}, {"recipe": name})
        assert cfg.recipe == name and create_model(cfg.model) is not None
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*efficientnet_lite0"):
        build_config({}, {"recipe": "nope"})


def test_cli_refuses_an_unknown_recipe(capsys):
    from brainlib.cli import main

    with pytest.raises(SystemExit):
        main(["prepare", "--recipe", "nope"])
    assert "invalid choice" in capsys.readouterr().err
