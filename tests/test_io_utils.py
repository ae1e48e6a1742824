"""Atomic writes: all or nothing, and the permissions of an ordinary write."""

from __future__ import annotations

import json
import os

import pytest

from regattn_lib.runtime.atomic import atomic_write, atomic_write_json, atomic_write_text


def test_new_file_gets_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a.md", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600


def test_replacing_keeps_the_existing_mode(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{}")
    path.chmod(0o604)
    atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert path.stat().st_mode & 0o777 == 0o604


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
