"""write_atomically: the old file or the new one, never a part, and no temporary file left."""

import pytest

from stbench.files import write_atomically


def test_replaces_text_and_bytes(tmp_path):
    path = tmp_path / "a.json"
    write_atomically(path, "é\n")
    assert path.read_text(encoding="utf-8") == "é\n"
    assert write_atomically(path, b"\x00\x01") == path and path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomically(path, 42)  # neither str nor bytes: fails inside the write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
