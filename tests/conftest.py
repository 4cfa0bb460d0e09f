import importlib.util
import shutil
from pathlib import Path

import pytest

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "data"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def script():
    """Import one of scripts/*.py as a module, by its name without the suffix."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def fixture_root() -> Path:
    """The committed tiny dataset: real MRIs, downsized, 6 per class in Training, 3 in Testing."""
    return FIXTURE_DATA


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the fixture dataset, for tests that plant bad files or break the layout."""
    dst = tmp_path / "data"
    shutil.copytree(FIXTURE_DATA, dst)
    return dst


@pytest.fixture
def prepared_run(tmp_path, fixture_root, monkeypatch):
    """A run folder with the fixture's manifest written, and the cache in tmp."""
    from brainlib.config import Config, write_run_config
    from brainlib.data import build_manifest, write_manifest

    monkeypatch.setenv("BRAIN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = Config(
        run_dir=str(tmp_path / "run"), data_dir=str(fixture_root), batch_size=8, epochs=2, num_threads=1, compile=False
    )
    manifest, _, _ = build_manifest(fixture_root, cfg.val_fraction, cfg.seed, progress=False)
    write_manifest(manifest, cfg.run_dir)
    write_run_config(cfg)
    return cfg


@pytest.fixture
def trained_run(prepared_run):
    """The prepared fixture run after one epoch of the reference recipe."""
    from brainlib import train

    train.train(prepared_run.replace(epochs=1), progress=False)
    return prepared_run
