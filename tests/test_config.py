import pytest

from brainlib.config import Config, notebook_config


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
