"""Run files are written whole or not at all."""

import pytest

from brainlib.atomic import atomic_path, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_text(tmp_path / "sub" / "metrics.json", "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and len(list(target.parent.iterdir())) == 1
