"""Safe, atomic extraction of tar and zip archives (the dataset image archives).

Tar members go through the standard library's ``tarfile.data_filter`` (no absolute paths, no
``..``, no links out of the folder, no device files); zip members are checked by hand, since
``zipfile`` silently rewrites unsafe names instead of refusing them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from regattn_lib.datasets.downloads import DownloadError

CHUNK = 1 << 16


def _check_member(archive: Path, name: str) -> PurePosixPath:
    """Reject absolute names and ``..`` components (path traversal) of a zip member."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in p.parts:
        raise DownloadError(f"{archive}: refusing unsafe member path {name!r} (path traversal)")
    return p


def _target(root: Path, rel: PurePosixPath, flatten: bool, seen: set[str]) -> Path:
    if flatten:
        if rel.name in seen:
            raise DownloadError(f"two archive members are both named {rel.name!r}: cannot flatten")
        seen.add(rel.name)
        return root / rel.name
    return root.joinpath(*[part for part in rel.parts if part not in ("", ".")])


def _tar_member_filter(archive: Path, flatten: bool) -> Callable[..., tarfile.TarInfo | None]:
    """An ``extractall`` filter: the standard ``data_filter``, plus refusal of links and
    special files (image archives have none) and, with ``flatten``, every file renamed to its
    base name (directories dropped). Refusals raise ``DownloadError`` naming the archive."""
    seen: set[str] = set()

    def member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if not (member.isfile() or member.isdir()):
            raise DownloadError(f"{archive}: refusing member {member.name!r} (not a regular file)")
        try:
            if member.name.startswith(("/", os.sep)):
                # data_filter would strip the slash and extract it inside; refuse it instead
                raise tarfile.AbsolutePathError(member)
            member = tarfile.data_filter(member, dest)
        except tarfile.FilterError as e:
            raise DownloadError(
                f"{archive}: refusing unsafe member path {member.name!r} (path traversal: {e})"
            ) from None
        if not flatten:
            return member
        if member.isdir():
            return None
        name = PurePosixPath(member.name).name
        if name in seen:
            raise DownloadError(f"two archive members are both named {name!r}: cannot flatten")
        seen.add(name)
        return member.replace(name=name, deep=False)

    return member_filter


def _extract_tar(archive: Path, root: Path, flatten: bool) -> None:
    with tarfile.open(archive, "r:*") as tf:
        tf.extractall(root, filter=_tar_member_filter(archive, flatten))


def _extract_zip(archive: Path, root: Path, flatten: bool) -> None:
    seen: set[str] = set()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _check_member(archive, info.filename)
            if info.is_dir():
                if not flatten:
                    _target(root, rel, False, seen).mkdir(parents=True, exist_ok=True)
                continue
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise DownloadError(f"{archive}: refusing symbolic link member {info.filename!r}")
            out = _target(root, rel, flatten, seen)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)


def done_marker(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """The marker ``<dest_dir>/.<archive name>.done`` written once ``archive`` is extracted."""
    return Path(dest_dir) / f".{Path(archive).name}.done"


def _merge(src: Path, dst: Path, marker_name: str) -> None:
    """Move the tree ``src`` into the existing ``dst``; the marker goes last."""
    for p in sorted(src.rglob("*")):
        if p.is_dir() or p.name == marker_name:
            continue
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, out)
    os.replace(src / marker_name, dst / marker_name)


def extract_archive(
    archive: str | os.PathLike, dest_dir: str | os.PathLike, *, flatten: bool = False
) -> Path:
    """Extract a tar (any compression) or zip archive into ``dest_dir``, atomically.

    Parameters
    ----------
    archive:
        ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz`` or ``.zip``.
    dest_dir:
        Target folder. Members are written to a temporary sibling folder which is renamed into
        place (or, when ``dest_dir`` already holds other archives' files, moved in file by file)
        and a marker ``.<archive name>.done`` is written last, so a half-extracted archive is
        never taken as done. When the marker exists, nothing is done.
    flatten:
        Put every file directly in ``dest_dir`` (the image archives of Paris6k nest images in
        per-landmark folders; the datasets expect them flat). Default False.

    Members with absolute paths or ``..`` components, links and device files are rejected with
    ``DownloadError`` and nothing is written to ``dest_dir``. Returns ``dest_dir``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    marker = done_marker(archive, dest_dir)
    if marker.exists():
        return dest_dir
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".extracting", dir=dest_dir.parent)
    )
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, flatten)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp, flatten)
        else:
            raise DownloadError(f"{archive}: not a tar or zip archive")
        (tmp / marker.name).write_text(json.dumps({"archive": str(archive)}) + "\n")
        try:
            os.rename(tmp, dest_dir)  # atomic when dest_dir does not exist yet
        except OSError:
            if not dest_dir.is_dir():
                raise
            _merge(tmp, dest_dir, marker.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir
