import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pins(lines):
    return sorted(line.strip() for line in lines if re.match(r"^[A-Za-z0-9_.\-\[\]]+==\S+$", line.strip()))


def test_environment_yml_mirrors_requirements():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    yml = pins(line.strip().removeprefix("- ") for line in (ROOT / "environment.yml").read_text().splitlines())
    assert req, "requirements.txt has no pins"
    assert req == yml
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_torch_pins_are_the_ones_on_disk():
    req = (ROOT / "requirements.txt").read_text()
    assert "torch==2.14.1" in req and "torchvision==0.29.1" in req


def test_committed_notebooks_have_no_outputs():
    import json

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{nb.name} has outputs"
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), (
            f"{nb.name} lacks a parameters cell"
        )


def test_papermill_sees_every_parameter_the_makefile_passes():
    """papermill warns 'Passed unknown parameter' for a parameters-cell line it cannot parse.
    01_data takes the run's settings; 02-05 take only the run folder and a device."""
    import papermill

    makefile = (ROOT / "Makefile").read_text()

    def passed(variable: str) -> set[str]:
        block = re.search(rf"^{variable} := (.*?)(?:\n(?!\t)|\Z)", makefile, re.S | re.M).group(1)
        return set(re.findall(r"-p (\w+) ", block))

    prepare, run, evaluate = passed("PREPARE_PARAMS"), passed("RUN_PARAMS"), passed("EVALUATE_PARAMS")
    assert (
        {"run_dir", "fast", "epochs", "seed", "recipe"} <= prepare
        and run == {"run_dir", "device"}
        and evaluate == {"label_audit", "shift_severities"}
    )
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        names = set(papermill.inspect_notebook(str(path)))
        wanted = prepare if path.name.startswith("01") else run | (evaluate if path.name.startswith("04") else set())
        assert wanted <= names, f"{path.name}: papermill cannot parse {sorted(wanted - names)}"
        if not path.name.startswith("01"):
            assert not names & {"seed", "fast", "epochs", "recipe", "model", "batch_size"}, (
                f"{path.name} takes run settings"
            )


def test_make_runs_everything_with_the_malloc_thresholds():
    """CPU training re-faults its activation buffers every step under glibc's default malloc
    thresholds (BENCHMARKS.md); make exports GLIBC_TUNABLES and the Jupyter kernel sets it."""
    import json
    import os
    import sys

    makefile = (ROOT / "Makefile").read_text()
    assert "export GLIBC_TUNABLES ?= $(GLIBC_MALLOC)" in makefile and "glibc.malloc.mmap_threshold=" in makefile
    if os.environ.get("MAKELEVEL"):  # under `make test`
        assert "glibc.malloc.mmap_threshold=" in os.environ.get("GLIBC_TUNABLES", "")
    kernel = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "brainlib" / "kernel.json"
    if kernel.exists():
        assert "glibc.malloc.mmap_threshold=" in json.loads(kernel.read_text()).get("env", {}).get("GLIBC_TUNABLES", "")
