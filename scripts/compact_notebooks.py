"""Executed notebooks for readers, made small: every PNG figure in the outputs re-encoded as JPEG
(quality 80), which cuts the five notebooks of a default run from about 5 MB to about 1.5 MB. With
--run-dir, the absolute paths of that run's machine (the project folder and the folder holding the
data) are written relative, so the printed settings read runs/<run> and brain-tumor-mri-dataset.

    .venv/bin/python scripts/compact_notebooks.py [--run-dir runs/<run>] docs/notebooks/*.ipynb
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

from PIL import Image


def machine_prefixes(run_dir: Path) -> list[str]:
    """The absolute folders a run printed that mean nothing on a reader's machine, longest first."""
    config = json.loads((run_dir / "config.json").read_text())
    prefixes = {str(Path.cwd().resolve()) + "/"}
    if Path(config["data_dir"]).is_absolute():
        prefixes.add(str(Path(config["data_dir"]).parent) + "/")
    return sorted(prefixes, key=len, reverse=True)


def relative(value, prefixes: list[str]):
    if isinstance(value, str):
        for prefix in prefixes:
            value = value.replace(prefix, "")
        return value
    if isinstance(value, list):
        return [relative(v, prefixes) for v in value]
    return value


def compact(path: Path, quality: int = 80, prefixes: list[str] = ()) -> tuple[int, int]:
    before = path.stat().st_size
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        # papermill's injected-parameters cell holds the run's paths too
        cell["source"] = relative(cell["source"], prefixes)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text" in output:
                output["text"] = relative(output["text"], prefixes)
            for kind in ("text/plain", "text/html", "text/markdown"):
                if kind in data:
                    data[kind] = relative(data[kind], prefixes)
            if "image/png" in data:
                image = Image.open(io.BytesIO(base64.b64decode(data.pop("image/png")))).convert("RGB")
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=quality, optimize=True)
                data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode()
    parameters = nb.get("metadata", {}).get("papermill", {}).get("parameters", {})
    for name, value in parameters.items():
        parameters[name] = relative(value, prefixes)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return before, path.stat().st_size


if __name__ == "__main__":
    args = sys.argv[1:]
    prefixes: list[str] = []
    if args[:1] == ["--run-dir"]:
        prefixes, args = machine_prefixes(Path(args[1])), args[2:]
    for name in args:
        before, after = compact(Path(name), prefixes=prefixes)
        print(f"{name}: {before / 1e6:.2f} -> {after / 1e6:.2f} MB")
