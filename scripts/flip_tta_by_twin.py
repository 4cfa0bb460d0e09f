"""Where a mirror view's change on Testing falls: per test image, the orientations in which it has a
Training twin (brainlib.duplicates; exact twins count as stored), then the images two evaluations
disagree on, by that. For reading a result after the fact, never for choosing.

    .venv/bin/python scripts/flip_tta_by_twin.py <run with manifest.csv> <plain predictions.csv> <flip predictions.csv>
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from brainlib.data import resolve_data_dir, scan_dataset
from brainlib.duplicates import NEAR_THRESHOLD, near_pairs


def twin_orientations(run_dir: Path) -> pd.Series:
    """For each test image with a Training twin, the set of orientations the twins are in."""
    scan = scan_dataset(resolve_data_dir(), progress=False)
    paths, split = scan.manifest["path"].to_numpy(), scan.manifest["split_on_disk"].to_numpy()
    pairs = near_pairs(scan.thumbs, NEAR_THRESHOLD)
    found = []
    for a, b in (("i", "j"), ("j", "i")):
        first, second = pairs[a].to_numpy(), pairs[b].to_numpy()
        keep = (split[first] == "Testing") & (split[second] == "Training")
        found.append(pd.DataFrame({"path": paths[first[keep]], "orientation": pairs["orientation"].to_numpy()[keep]}))
    manifest = pd.read_csv(run_dir / "manifest.csv")
    exact = manifest.loc[
        (manifest["split_on_disk"] == "Testing") & manifest["has_train_twin_exact"].astype(bool), "path"
    ]
    found.append(pd.DataFrame({"path": exact, "orientation": "same"}))
    return pd.concat(found).groupby("path")["orientation"].agg(set)


def kind(orientations) -> str:
    if not isinstance(orientations, set):
        return "no twin"
    mirrored = bool(orientations & {"mirrored", "half turn"})
    unmirrored = bool(orientations & {"same", "upside down"})
    return {(True, False): "mirrored only", (False, True): "as stored or upside down only"}.get(
        (mirrored, unmirrored), "both"
    )


def main() -> None:
    run_dir, plain_csv, flip_csv = map(Path, sys.argv[1:4])
    plain, flip = pd.read_csv(plain_csv), pd.read_csv(flip_csv)
    both = plain[["path", "label", "pred"]].merge(flip[["path", "pred"]], on="path", suffixes=("", "_flip"))
    both["twin"] = both["path"].map(twin_orientations(run_dir)).apply(kind)
    right, right_flip = both["pred"] == both["label"], both["pred_flip"] == both["label"]
    both["fixed"], both["broken"] = right_flip & ~right, right & ~right_flip
    print(both.groupby("twin")[["fixed", "broken"]].sum().assign(images=both.groupby("twin").size()).to_string())
    print(
        both.loc[both["fixed"] | both["broken"], ["path", "label", "pred", "pred_flip", "twin"]].to_string(index=False)
    )


if __name__ == "__main__":
    main()
