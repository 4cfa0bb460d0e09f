import io
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainlib import data, duplicates
from brainlib.config import CLASS_NAMES, Config

MANIFEST_COLUMNS = {
    "path", "split_on_disk", "split", "label", "label_idx", "width", "height", "mode", "format", "is_gray",
    "file_sha256", "pixel_sha1", "dhash", "exact_group", "near_group", "has_train_twin_exact", "has_train_twin_near",
}  # fmt: skip


def test_fixture_layout_is_valid(fixture_root):
    layout = data.validate_layout(fixture_root)
    assert set(layout) == {"Training", "Testing"}
    assert all(set(classes) == set(CLASS_NAMES) for classes in layout.values())


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda root: shutil.rmtree(root / "Testing"), "Testing is missing"),
        (lambda root: (root / "Training" / "astrocytoma").mkdir(), "unknown class folder"),
        (lambda root: shutil.rmtree(root / "Training" / "pituitary"), "lacks class folder"),
        (lambda root: [p.unlink() for p in (root / "Testing" / "glioma").iterdir()], "is empty"),
    ],
)
def test_bad_layout_gives_clear_error(data_copy, breakage, message):
    breakage(data_copy)
    with pytest.raises(data.DataError, match=message) as err:
        data.validate_layout(data_copy)
    assert "Expected layout" in str(err.value)


def test_missing_data_dir_names_both_options(tmp_path, monkeypatch):
    with pytest.raises(data.DataError, match="does not exist"):
        data.resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.delenv("BRAIN_DATA_DIR", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "kagglehub", None)  # as if the download failed
    with pytest.raises(data.DataError, match="BRAIN_DATA_DIR") as err:
        data.resolve_data_dir(None)
    assert "kagglehub" in str(err.value)


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_bad_files_are_skipped_and_odd_modes_load(data_copy):
    folder = data_copy / "Training" / "glioma"
    good = Image.open(next(folder.glob("*.jpg"))).convert("RGB")
    jpeg = _save(good, "JPEG")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "text.jpg").write_text("not an image")
    (folder / "png_named.jpg").write_bytes(_save(good, "PNG"))
    (folder / "rgba.png").write_bytes(_save(good.convert("RGBA"), "PNG"))
    (folder / "palette.png").write_bytes(_save(good.convert("P"), "PNG"))
    (folder / "sixteen.png").write_bytes(
        _save(Image.fromarray(np.asarray(good.convert("L")).astype(np.uint16) * 256), "PNG")
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = data.scan_dataset(data_copy, progress=False)
    skipped = {p.split("/")[-1] for p, _ in scan.skipped}
    assert skipped == {"zero.jpg", "truncated.jpg", "text.jpg"}
    assert sum("skipping unreadable image" in str(w.message) for w in caught) == 3
    rows = scan.manifest.set_index(scan.manifest["path"].str.split("/").str[-1])
    assert rows.loc["png_named.jpg", "format"] == "PNG"
    assert rows.loc["palette.png", "mode"] == "P"
    assert rows.loc["sixteen.png", "mode"].startswith("I")
    for name in ("png_named.jpg", "rgba.png", "palette.png", "sixteen.png"):
        gray = data.load_gray(folder / name, 64)
        assert gray.shape == (64, 64) and gray.dtype == np.uint8 and gray.max() > 50


def test_manifest_columns_and_splits(fixture_root):
    manifest, result, _ = data.build_manifest(fixture_root, 0.2, seed=3, progress=False)
    assert MANIFEST_COLUMNS <= set(manifest.columns)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest.loc[manifest["split_on_disk"] == "Testing", "split"] == "test").all()
    assert (manifest.loc[manifest["split"] == "val", "split_on_disk"] == "Training").all()
    # stratified: every class has val images, about 20 % of its Training rows
    val_share = (
        manifest[manifest["split_on_disk"] == "Training"].groupby("label")["split"].apply(lambda s: (s == "val").mean())
    )
    assert set(val_share.index) == set(CLASS_NAMES) and val_share.between(0.1, 0.4).all()


def test_split_is_deterministic_and_seeded(fixture_root):
    scan = data.scan_dataset(fixture_root, progress=False)
    base = duplicates.audit_duplicates(scan.manifest, scan.thumbs).manifest
    a = data.assign_splits(base, 0.3, seed=1)["split"]
    b = data.assign_splits(base, 0.3, seed=1)["split"]
    c = data.assign_splits(base, 0.3, seed=2)["split"]
    assert a.equals(b)
    assert not a.equals(c)


def test_split_keeps_duplicate_groups_together():
    frame = pd.DataFrame(
        {
            "split_on_disk": ["Training"] * 40,
            "label": ["glioma"] * 20 + ["notumor"] * 20,
            "near_group": [i // 4 for i in range(40)],
        }
    )
    for seed in range(5):
        split = data.assign_splits(frame, 0.25, seed)
        assert split.groupby("near_group")["split"].nunique().max() == 1


def test_duplicate_audit_finds_planted_twins(data_copy):
    src = data_copy / "Training" / "glioma" / "Tr-gl_0219.jpg"
    # exact twin in Testing (same bytes) and a near twin (slightly brighter, re-encoded) in Testing
    shutil.copy(src, data_copy / "Testing" / "glioma" / "exact_twin.jpg")
    brighter = np.clip(np.asarray(Image.open(src).convert("L")).astype(int) + 12, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(data_copy / "Testing" / "glioma" / "near_twin.jpg", quality=80)
    manifest, result, _ = data.build_manifest(data_copy, 0.1, seed=0, progress=False)
    rows = manifest.set_index(manifest["path"].str.split("/").str[-1])
    assert rows.loc["exact_twin.jpg", "has_train_twin_exact"]
    assert not rows.loc["near_twin.jpg", "has_train_twin_exact"]
    assert rows.loc["near_twin.jpg", "has_train_twin_near"]
    assert rows.loc["exact_twin.jpg", "exact_group"] == rows.loc["Tr-gl_0219.jpg", "exact_group"]
    # the fixture carries one real cross-split exact twin (Te-meTr_0001 / Tr-me_0196)
    assert rows.loc["Te-meTr_0001.jpg", "has_train_twin_exact"]
    assert result.summary["test_with_train_twin_exact"] == 2  # the planted twin and the real one
    assert result.summary["exact_groups_with_label_conflict"] == 0


@pytest.mark.parametrize(
    "turn, orientation",
    [
        (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored"),
        (Image.Transpose.FLIP_TOP_BOTTOM, "upside down"),
        (Image.Transpose.ROTATE_180, "half turn"),
    ],
)
def test_a_flipped_copy_is_a_near_duplicate(data_copy, turn, orientation):
    """A copy turned over and brightened (as the dataset's sources stored augmented copies) is the
    same slice: it shares its original's group, so it is not leakage-free and never in another fold."""
    src = data_copy / "Training" / "glioma" / "Tr-gl_0219.jpg"
    gray = np.asarray(Image.open(src).convert("L").transpose(turn)).astype(int)
    turned = Image.fromarray(np.clip(gray + 12, 0, 255).astype(np.uint8))
    turned.save(data_copy / "Testing" / "glioma" / "turned.jpg", quality=95)
    manifest, result, _ = data.build_manifest(data_copy, 0.1, seed=0, progress=False)
    rows = manifest.set_index(manifest["path"].str.split("/").str[-1])
    assert rows.loc["turned.jpg", "has_train_twin_near"] and not rows.loc["turned.jpg", "has_train_twin_exact"]
    assert rows.loc["turned.jpg", "near_group"] == rows.loc["Tr-gl_0219.jpg", "near_group"]
    pair = result.near_pairs[result.near_pairs["orientation"] == orientation]
    names = manifest["path"].str.split("/").str[-1].to_numpy()
    assert {frozenset((names[i], names[j])) for i, j in pair[["i", "j"]].to_numpy()} >= {
        frozenset(("turned.jpg", "Tr-gl_0219.jpg"))
    }
    assert result.summary["near_pairs_by_orientation"][orientation] >= 1


def test_unrelated_images_are_not_near_duplicates_in_any_orientation(fixture_root):
    scan = data.scan_dataset(fixture_root, progress=False)
    pairs = duplicates.near_pairs(scan.thumbs, duplicates.NEAR_THRESHOLD)
    names = scan.manifest["path"].str.split("/").str[-1]
    flagged = {frozenset((names[i], names[j])) for i, j in pairs[["i", "j"]].to_numpy()}
    assert flagged <= {frozenset(("Tr-me_0196.jpg", "Te-meTr_0001.jpg"))}


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    bits[7] = bits[3] ^ np.array([1] + [0] * 31, dtype=np.uint8)  # one bit apart
    got = duplicates.hamming_pairs(bits, 1, chunk=16)
    assert [tuple(r) for r in got[["i", "j", "distance"]].to_numpy()] == [(3, 7, 1)]
    # against other hashes of the same images: every i != j, each unordered pair once, smallest distance
    other = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    other[12] = bits[40]  # 40 ~ 12 at distance 0
    other[40] = bits[12] ^ np.array([3] + [0] * 31, dtype=np.uint8)  # 12 ~ 40 at distance 2
    got = duplicates.hamming_pairs(bits, 2, chunk=16, other=other)
    assert [tuple(r) for r in got[["i", "j", "distance"]].to_numpy()] == [(12, 40, 0)]
    # every pair against distances counted bit by bit, for hashes of 32 bytes and of 5 (not whole 64-bit words)
    for width, threshold in ((32, 120), (5, 17)):
        bits, other = rng.integers(0, 256, size=(2, 40, width), dtype=np.uint8)
        unpacked = np.unpackbits(bits, axis=1).astype(int)
        flipped = np.unpackbits(other, axis=1).astype(int)
        same = (unpacked[:, None] != unpacked[None]).sum(2)
        cross = np.minimum((unpacked[:, None] != flipped[None]).sum(2), (flipped[:, None] != unpacked[None]).sum(2))
        for against, dist in ((None, same), (other, cross)):
            want = [(i, j, dist[i, j]) for i in range(40) for j in range(i + 1, 40) if dist[i, j] <= threshold]
            got = duplicates.hamming_pairs(bits, threshold, chunk=16, other=against)
            assert len(want) > 20 and [tuple(r) for r in got[["i", "j", "distance"]].to_numpy()] == want


def test_images_above_the_pixel_limit_are_skipped_and_large_ones_scanned_reduced(data_copy, monkeypatch):
    folder = data_copy / "Training" / "glioma"
    Image.new("L", (1000, 1000), 90).save(folder / "bomb.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 900), dtype=np.uint8)).save(folder / "wide.jpg")
    monkeypatch.setattr(data, "MAX_PIXELS", 600_000)
    monkeypatch.setattr(data, "SCAN_MAX_SIDE", 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = data.scan_dataset(data_copy, progress=False)
    skipped = {p.split("/")[-1]: reason for p, reason in scan.skipped}
    assert list(skipped) == ["bomb.png"] and "MP limit" in skipped["bomb.png"]
    wide = scan.manifest[scan.manifest["path"].str.endswith("wide.jpg")].iloc[0]
    assert (wide["width"], wide["height"]) == (900, 600)  # the file's size, though decoded reduced


def test_exif_orientation_is_applied_when_loading(tmp_path):
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    gray, size = data.read_gray(tmp_path / "turned.jpg", 32)
    assert size == (20, 40)
    assert gray[:12].mean() > 200 and gray[-12:].mean() < 50  # the white half is now on top


def test_an_exclude_list_takes_training_images_out_of_train_and_val_but_never_testing(prepared_run, tmp_path):
    import pandas as pd

    from brainlib.data import exclude_images, read_manifest
    from brainlib.errors import DataError

    manifest = read_manifest(prepared_run.run_dir)
    train_paths = list(manifest.loc[manifest["split"] == "train", "path"][:2])
    test_path = manifest.loc[manifest["split"] == "test", "path"].iloc[0]
    listed = tmp_path / "label_issues.csv"
    pd.DataFrame({"path": [*train_paths, test_path], "given": "x"}).to_csv(listed, index=False)
    out = exclude_images(manifest, listed)
    assert set(out.loc[out["split"] == "excluded", "path"]) == set(train_paths)
    assert (out.loc[out["path"] == test_path, "split"] == "test").all()  # the official test split is not edited
    unchanged = ~out["path"].isin(train_paths)
    assert (out.loc[unchanged, "split"] == manifest.loc[unchanged, "split"]).all()
    pd.DataFrame({"path": ["Training/glioma/nope.jpg"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="1 images not in this dataset"):
        exclude_images(manifest, tmp_path / "bad.csv")
    with pytest.raises(DataError, match="not found"):
        exclude_images(manifest, tmp_path / "missing.csv")


def test_prepare_applies_the_exclude_list_and_keeps_it_in_the_settings(fixture_root, tmp_path):
    import json

    import pandas as pd

    from brainlib.cli import main
    from brainlib.data import read_manifest

    listed = tmp_path / "suspects.csv"
    pd.DataFrame(
        {"path": ["Training/glioma/" + sorted(p.name for p in (fixture_root / "Training" / "glioma").glob("*.jpg"))[0]]}
    ).to_csv(listed, index=False)
    run = tmp_path / "ablation"
    args = ["prepare", "--run-dir", str(run), "--data-dir", str(fixture_root), "--exclude-list", str(listed)]
    assert main(args) == 0
    manifest = read_manifest(run)
    assert (manifest["split"] == "excluded").sum() == 1
    assert json.loads((run / "config.json").read_text())["exclude_list"] == str(listed)


def test_a_dataset_attached_to_a_kaggle_notebook_is_found_under_any_name(tmp_path):
    def dataset(path):
        for split in ("Training", "Testing"):
            (path / split / "glioma").mkdir(parents=True)
        return path

    assert data.attached_kaggle_dataset(tmp_path / "no-mount") is None
    (tmp_path / "other-competition" / "Training").mkdir(parents=True)  # no Testing beside it: not this dataset
    assert data.attached_kaggle_dataset(tmp_path) is None
    nested = dataset(tmp_path / "my-copy" / "versions" / "2")
    assert data.attached_kaggle_dataset(tmp_path) == nested
    shallow = dataset(tmp_path / "zz-upload")
    assert data.attached_kaggle_dataset(tmp_path) == shallow  # the shallowest match before a deeper one
    assert data.attached_kaggle_dataset(tmp_path / "my-copy", max_depth=2) is None  # versions/2 is 3 levels down
    named = dataset(tmp_path / data.KAGGLE_SLUG)
    assert data.attached_kaggle_dataset(tmp_path) == named


def test_a_sample_too_small_to_train_on_is_refused_before_anything_is_written(fixture_root, tmp_path):
    """One image per class all go to the validation carve (it takes at least one group per class);
    before, such a run was prepared and failed with a traceback at the learning-rate schedule."""
    cfg = Config(run_dir=str(tmp_path / "run"), data_dir=str(fixture_root), fast=True, fast_per_class=1)
    with pytest.raises(data.DataError, match="leaves no Training image of glioma, meningioma"):
        data.prepare_run(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_carve_file_holds_out_the_same_images_on_a_copy_of_the_data_whatever_the_seed(
    prepared_run, data_copy, tmp_path
):
    import json

    from brainlib.cli import main
    from brainlib.data import read_manifest, split_digest

    first = read_manifest(prepared_run.run_dir)
    carve = tmp_path / "carve.csv"
    first.loc[first["split"] == "val", ["path", "label"]].to_csv(carve, index=False)
    run = tmp_path / "other-copy"
    args = ["prepare", "--run-dir", str(run), "--data-dir", str(data_copy), "--seed", "7", "--carve-file", str(carve)]
    assert main(args) == 0
    second = read_manifest(run)
    assert set(second.loc[second["split"] == "val", "path"]) == set(first.loc[first["split"] == "val", "path"])
    assert split_digest(second) == split_digest(first)  # what ensembles and comparisons check
    assert (second["split"] == "test").sum() == (second["split_on_disk"] == "Testing").sum()
    assert (second["split"] == "train").sum() == (first["split"] == "train").sum()
    assert json.loads((run / "config.json").read_text())["carve_file"] == str(carve)


def test_a_carve_file_that_does_not_fit_the_data_is_one_error_line(prepared_run, tmp_path, capsys):
    import pandas as pd

    from brainlib.cli import main
    from brainlib.data import read_manifest

    manifest = read_manifest(prepared_run.run_dir)
    a_training = manifest.loc[manifest["split_on_disk"] == "Training"].iloc[0]
    a_testing = manifest.loc[manifest["split_on_disk"] == "Testing", "path"].iloc[0]
    other_label = next(c for c in ("glioma", "meningioma") if c != a_training["label"])
    cases = {
        "missing.csv": (None, "not found"),
        "columns.csv": (pd.DataFrame({"file": [a_training["path"]]}), "no 'path' column"),
        "testing.csv": (pd.DataFrame({"path": [a_testing]}), "1 images that are not Training images"),
        "unknown.csv": (pd.DataFrame({"path": ["Training/glioma/nope.jpg"]}), "not Training images"),
        "label.csv": (pd.DataFrame({"path": [a_training["path"]], "label": [other_label]}), "another label"),
    }
    for name, (frame, message) in cases.items():
        if frame is not None:
            frame.to_csv(tmp_path / name, index=False)
        run = tmp_path / f"run-{name}"
        args = [
            "prepare",
            "--run-dir",
            str(run),
            "--data-dir",
            prepared_run.data_dir,
            "--carve-file",
            str(tmp_path / name),
        ]
        assert main(args) != 0, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: carve file") and message in err[-1], (name, err[-1])
        assert not (run / "manifest.csv").exists()


def test_the_committed_carve_file_is_the_committed_defaults_validation_carve():
    import pandas as pd

    from brainlib.checkpoint import load_checkpoint
    from brainlib.config import DEFAULT_CHECKPOINT, in_repo
    from brainlib.data import split_digest

    carve = pd.read_csv(in_repo("scripts/default_carve.csv")).assign(split="val")
    assert carve["path"].str.startswith("Training/").all() and not carve["path"].duplicated().any()
    assert split_digest(carve) == load_checkpoint(in_repo(DEFAULT_CHECKPOINT))["val_digest"]
