"""eagle_ext._io: atomic writes leave either the old entry or the complete new one, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from eagle_ext._io import _umask, atomic_directory, atomic_path, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_directory_gives_files_the_permissions_of_a_plain_open(tmp_path):
    out = tmp_path / "export"
    with atomic_directory(out) as tmp:
        fd = os.open(os.path.join(tmp, "weights.bin"), os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors does
        os.write(fd, b"x")
        os.close(fd)
        os.makedirs(os.path.join(tmp, "sub"))
        script = os.path.join(tmp, "sub", "run.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(script, 0o700)
    mask = _umask()
    assert _mode(out / "weights.bin") == 0o666 & ~mask
    assert _mode(out / "sub" / "run.sh") == 0o766 & ~mask  # readable like the rest; its executable bit stays
    assert _mode(out) == _mode(out / "sub") == 0o777 & ~mask
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_atomic_directory_replaces_on_success_and_keeps_the_old_one_on_error(tmp_path):
    out = tmp_path / "d"
    with atomic_directory(out) as tmp:
        write_json(os.path.join(tmp, "a.json"), {"v": 1})
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        write_json(os.path.join(tmp, "a.json"), {"v": 2})
        raise RuntimeError("crash mid-write")
    assert (out / "a.json").read_text().strip() == '{"v": 1}'
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_atomic_path_leaves_no_temp_file_on_error(tmp_path):
    target = tmp_path / "f.txt"
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write("old")
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
        raise ValueError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    assert _mode(target) == 0o666 & ~_umask()
