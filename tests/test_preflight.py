"""The paper profile's up-front check, and importing files obtained another way."""

from __future__ import annotations

import json

import pytest

from regattn_lib.datasets.downloads import (
    ChecksumError,
    import_local,
    load_manifest,
    sha256_file,
)
from regattn_lib.preflight import main, paper_checks

WANTED = 13  # gnd x4, images x3, Caffe features, attention, SfM db + images, 1M list, RPN


def by_name(checks):
    return {c.what: c for c in checks}


def test_offline_checks_name_every_missing_file_with_url_and_destination(tmp_path):
    checks = by_name(paper_checks(tmp_path / "data", "cpu", False, network=False))
    files = load_manifest()
    missing = [c for c in checks.values() if c.detail.startswith("MISSING and unreachable")]
    assert len(missing) == WANTED
    att = checks["official_attention"]
    assert not att.ok and att.required
    assert files["official_attention"]["url"] in att.detail
    assert str(tmp_path / "data" / files["official_attention"]["dest"]) in att.detail
    assert checks["GPU"].ok  # --device cpu accepts running without CUDA
    assert not checks["ImageNet (ILSVRC-2012) for training"].required


def test_import_copies_a_verified_file_and_records_it(tmp_path, official_weights):
    src_dir = tmp_path / "usb" / "nested"
    src_dir.mkdir(parents=True)
    (src_dir / official_weights.name).write_bytes(official_weights.read_bytes())
    root = tmp_path / "data"
    source = import_local("official_attention", [tmp_path / "usb"], root)
    assert source == src_dir / official_weights.name
    dest = root / load_manifest()["official_attention"]["dest"]
    assert sha256_file(dest) == load_manifest()["official_attention"]["sha256"]
    lock = json.loads((root / "downloads.lock.json").read_text())
    assert lock[load_manifest()["official_attention"]["url"]]["sha256"] == sha256_file(dest)
    assert import_local("official_attention", [tmp_path / "usb"], root) is None  # already there


def test_import_refuses_a_wrong_file_and_leaves_it_alone(tmp_path):
    (tmp_path / "usb").mkdir()
    fake = tmp_path / "usb" / "ContextAwareRegionalAttention_weights.pth"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ChecksumError, match=r"usb/ContextAwareRegionalAttention_weights.pth"):
        import_local("official_attention", [tmp_path / "usb"], tmp_path / "data")
    assert fake.read_bytes() == b"not the weights"
    assert not (tmp_path / "data" / "weights").exists() or not any(
        (tmp_path / "data" / "weights").iterdir()
    )


def test_import_without_a_manifest_hash_trusts_then_pins_it(tmp_path):
    dest_name = load_manifest()["gnd_oxford5k"]["dest"].rsplit("/", 1)[-1]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / dest_name).write_bytes(b"first copy")
    root = tmp_path / "data"
    assert import_local("gnd_oxford5k", [tmp_path / "a"], root)
    dest = root / load_manifest()["gnd_oxford5k"]["dest"]
    assert dest.read_bytes() == b"first copy"
    dest.unlink()  # lost later; the lock file still pins the first copy's hash
    (tmp_path / "a" / dest_name).write_bytes(b"another file")
    with pytest.raises(ChecksumError, match="lock file"):
        import_local("gnd_oxford5k", [tmp_path / "a"], root)


def test_import_folder_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_local("gnd_oxford5k", [tmp_path / "nowhere"], tmp_path / "data")


def test_preflight_command_imports_from_the_environment_folder(
    tmp_path, official_weights, monkeypatch, capsys
):
    monkeypatch.setenv("REGATTN_IMPORT_FROM", str(official_weights.parent))
    code = main(["--profile", "paper", "--device", "cpu", "--no-network",
                 "--data-root", str(tmp_path / "data")])  # fmt: skip
    out = capsys.readouterr()
    assert code == 1  # the datasets are still missing
    line = next(ln for ln in out.out.splitlines() if "official_attention" in ln)
    assert line.startswith("[preflight] ok") and f"imported from {official_weights}" in line
    assert "official_attention" not in out.err.split("missing", 1)[1]
    assert "gnd_oxford5k" in out.err
