"""Resumable, verified downloads of the manifest's files.

Every remote file of the project is an entry of the manifest (``manifest.load_manifest``) and
is fetched with ``download_entry(key, data_root)``. No project in the field publishes checksums
(spec section 5), so a file whose hash is not in the manifest is recorded (size + sha256) in the
data root's lock file ``<data_root>/downloads.lock.json`` on its first complete download and
checked against that record from then on. A file that fails a check is moved aside to a
quarantine folder, never silently used or overwritten. ``$REGATTN_MIRROR`` (see ``manifest``)
makes every http(s) file come from a mirror.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from regattn_lib.datasets.manifest import describe_url, manifest_entry, resolve_url
from regattn_lib.runtime.atomic import atomic_write_json, sha256_file
from regattn_lib.runtime.paths import data_root as resolve_data_root

#: Name of the lock file kept at the data root.
LOCK_NAME = "downloads.lock.json"
#: HTTP statuses worth retrying (server-side or rate limiting); every other 4xx is final.
RETRY_STATUSES = frozenset({408, 425, 429})
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download that failed for good, naming the URL (and file, for a bad checksum)."""


class ChecksumError(DownloadError):
    """A file whose size or sha256 differs from the manifest or the lock file record."""


class _Restart(Exception):
    """Internal: the partial file cannot be resumed; start again from byte zero."""


class _ShortRead(OSError):
    """Internal: the connection ended before the announced length arrived."""


def download_entry(key: str, data_root: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Download manifest entry ``key`` to ``<data_root>/<dest>`` with its known hash and size.

    A ``sha256_prefix`` (the hash prefix that torch hub style file names carry) is checked when
    no full hash is known. The lock file is ``<data_root>/downloads.lock.json`` of the same
    data root (default ``paths.data_root()``); the URL goes through ``$REGATTN_MIRROR`` when
    set. Other keyword arguments go to ``download``.
    """
    entry = manifest_entry(key)
    root = resolve_data_root(data_root)
    kwargs.setdefault("lock_file", root / LOCK_NAME)
    return download(
        entry["url"],
        root / entry["dest"],
        sha256=entry.get("sha256") or entry.get("sha256_prefix"),
        size=entry.get("size"),
        **kwargs,
    )


def checksum_source(key: str, data_root: str | os.PathLike | None = None) -> str | None:
    """What a file of entry ``key`` is checked against: ``'manifest'`` (a full sha256),
    ``'lock file'`` (a record of an earlier download or import), ``'hash prefix'`` (only the
    name's prefix), or ``None`` (nothing: the first copy's hash gets recorded)."""
    entry = manifest_entry(key)
    if _is_full(entry.get("sha256")):
        return "manifest"
    if lock_record(entry["url"], resolve_data_root(data_root) / LOCK_NAME) is not None:
        return "lock file"
    if entry.get("sha256") or entry.get("sha256_prefix"):
        return "hash prefix"
    return None


def import_local(
    key: str,
    folders: Sequence[str | os.PathLike],
    data_root: str | os.PathLike | None = None,
) -> Path | None:
    """Copy manifest entry ``key`` from a local folder to ``<data_root>/<dest>``, verified.

    For files obtained another way (a copy on a shared disk, a colleague's mirror, the authors'
    weights shipped beside a checkout): the first file under ``folders`` (searched recursively,
    in order) with the entry's file name is checked against the manifest's hash and size (or,
    without them, the lock file's record of an earlier copy), then copied atomically and
    recorded in the lock file like a download: a file without any known hash has its sha256
    recorded there (``checksum_source`` tells beforehand). Returns the source file, or
    ``None`` when no folder has it. An existing destination is left alone (``None``). A
    source that fails the check raises ``ChecksumError`` naming it and is never modified.
    """
    entry = manifest_entry(key)
    root = resolve_data_root(data_root)
    dest = root / entry["dest"]
    if dest.exists():
        return None
    name = Path(entry["dest"]).name
    source = None
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"import folder {folder} does not exist (for {key!r})")
        hits = sorted(p for p in folder.rglob(name) if p.is_file())
        if hits:
            source = hits[0]
            break
    if source is None:
        return None
    lock = root / LOCK_NAME
    sha = entry.get("sha256") or entry.get("sha256_prefix")
    actual_size, digest, problem, _ = _check(entry["url"], source, sha, entry.get("size"), lock)
    if problem:
        raise ChecksumError(
            f"{source} is not manifest entry {key!r}: {problem}; nothing was copied to {dest}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".import")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)
    _record(lock, entry["url"], dest, actual_size, digest)
    return source


# --- lock file -------------------------------------------------------------------------------


def default_lock_file(data_root: str | os.PathLike | None = None) -> Path:
    """``<data_root>/downloads.lock.json`` (data root as in ``paths.data_root``)."""
    return resolve_data_root(data_root) / LOCK_NAME


def _read_lock(lock_file: Path) -> dict[str, dict[str, Any]]:
    if not lock_file.exists():
        return {}
    try:
        with open(lock_file) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DownloadError(f"cannot read the download lock file {lock_file}: {e}") from e


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock file between processes (POSIX only)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: best effort without a mutex
        yield
        return
    with open(lock_file.with_name(lock_file.name + ".mutex"), "a") as m:
        fcntl.flock(m, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(m, fcntl.LOCK_UN)


def lock_record(url: str, lock_file: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The recorded ``{'path', 'size', 'sha256', 'recorded'}`` of ``url``, or ``None``."""
    lf = Path(lock_file) if lock_file is not None else default_lock_file()
    return _read_lock(lf).get(url)


def lock_record_for_path(
    path: str | os.PathLike, lock_file: str | os.PathLike | None = None
) -> dict[str, Any] | None:
    """The lock record whose recorded path is ``path`` (resolved), or ``None``."""
    lf = Path(lock_file) if lock_file is not None else default_lock_file()
    target = str(Path(path).resolve())
    for url, rec in _read_lock(lf).items():
        if rec.get("path") == target:
            return dict(rec, url=url)
    return None


def _record(lock_file: Path, url: str, path: Path, size: int, digest: str) -> None:
    with _locked(lock_file):
        data = _read_lock(lock_file)
        old = data.get(url, {})
        same = (old.get("path"), old.get("size"), old.get("sha256"))
        if same == (str(path.resolve()), size, digest):
            return  # already recorded: keep the first date
        data[url] = {
            "path": str(path.resolve()),
            "size": size,
            "sha256": digest,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(lock_file, data)


# --- verification ----------------------------------------------------------------------------


def _is_full(digest: str | None) -> bool:
    return digest is not None and len(digest) == 64


def hash_matches(actual: str, expected: str) -> bool:
    """Full digests must be equal; a shorter expected value is a prefix (torch hub names)."""
    expected = expected.lower()
    if len(expected) < 6 or not re.fullmatch(r"[0-9a-f]+", expected):
        raise ValueError(f"not a sha256 hex digest or prefix (>= 6 hex digits): {expected!r}")
    return actual.startswith(expected) if len(expected) < 64 else actual == expected


def _check(
    url: str, path: Path, sha256: str | None, size: int | None, lock_file: Path
) -> tuple[int, str, str | None, bool]:
    """Check ``path`` against the caller's hash (full or prefix) and size, and, unless that
    hash is a full digest, against the lock record of ``url`` too.

    Returns (size, sha256, problem or ``None``, whether a full digest was checked).
    """
    rec = None if _is_full(sha256) else _read_lock(lock_file).get(url)
    expected = [(sha256, "the manifest")] if sha256 else []
    if rec:
        expected.append((rec["sha256"], f"the lock file {lock_file}"))
    exp_size, size_source = size, "the manifest"
    if exp_size is None and rec:
        exp_size, size_source = rec.get("size"), f"the lock file {lock_file}"
    actual_size = path.stat().st_size
    actual_sha = sha256_file(path)
    problems = [
        f"{source} expects sha256 {sha}"
        for sha, source in expected
        if not hash_matches(actual_sha, sha)
    ]
    if exp_size is not None and actual_size != int(exp_size):
        problems.insert(0, f"{size_source} expects {exp_size} bytes")
    problem = None
    if problems:
        problem = f"it has sha256 {actual_sha} ({actual_size} bytes) but " + " and ".join(problems)
    return actual_size, actual_sha, problem, any(_is_full(s) for s, _ in expected)


def quarantine(path: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Move ``path`` to ``<dest>.quarantine/<dest name>.<timestamp>`` and return the new path."""
    path = Path(path)
    dest = Path(dest) if dest is not None else path
    qdir = dest.with_name(dest.name + ".quarantine")
    qdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = qdir / f"{dest.name}.{stamp}"
    n = 1
    while target.exists():
        target = qdir / f"{dest.name}.{stamp}.{n}"
        n += 1
    os.replace(path, target)
    return target


def _verify(
    url: str,
    path: Path,
    dest: Path,
    sha256: str | None,
    size: int | None,
    lock_file: Path,
) -> tuple[int, str, bool]:
    """Check ``path`` against the given hash/size and the lock record (see ``_check``).

    Returns (size, sha256, known) where ``known`` says whether a full sha256 was checked (else
    the caller records the file). On a mismatch the file is quarantined and ``ChecksumError``
    raised.
    """
    actual_size, actual_sha, problem, known = _check(url, path, sha256, size, lock_file)
    if problem:
        moved = quarantine(path, dest)
        raise ChecksumError(
            f"checksum mismatch for {describe_url(url)}: file {dest}: {problem}; "
            f"the file was moved to {moved}. Run again to fetch a fresh copy; if the server's "
            f"file really changed, delete its entry from {lock_file}."
        )
    return actual_size, actual_sha, known


# --- download --------------------------------------------------------------------------------


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(start, total) from 'bytes start-end/total' or 'bytes */total' (``None`` if absent)."""
    if not value:
        return None, None
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value.strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch_once(url: str, part: Path, timeout: float, progress: bool, label: str) -> None:
    """One HTTP request for ``url`` appending to (or restarting) ``part``; ``label`` names
    the file in messages (the canonical URL, and the mirror's)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "regattn/0.1 (+urllib)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # Range past the end: complete already if the server's total is our size.
            _, total = _content_range(e.headers.get("Content-Range"))
            e.close()
            if total == offset:
                return
            raise _Restart from e
        raise
    with resp:
        status = getattr(resp, "status", None) or 200
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None else None
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                raise _Restart
            mode = "ab"
        elif status == 200:
            # The server ignored Range (or none was sent): start from byte zero.
            offset, mode, total = 0, "wb", length
        else:
            raise DownloadError(f"{label}: unexpected HTTP status {status}")
        got = 0
        from tqdm.auto import tqdm

        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[: -len(".part")],
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if length is not None and got < length:
        raise _ShortRead(f"connection closed after {got} of {length} bytes")


def _fetch(
    url: str,
    part: Path,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
    label: str | None = None,
) -> None:
    """Fetch ``url`` into ``part``, resuming and retrying transient failures with exponential
    backoff. ``label`` names the file in messages (default ``url``)."""
    label = label or url
    attempt, restarts = 0, 0
    while True:
        try:
            _fetch_once(url, part, timeout, progress, label)
            return
        except _Restart:
            part.unlink(missing_ok=True)
            restarts += 1
            if restarts > retries + 1:
                raise DownloadError(f"{label}: the server keeps refusing to resume") from None
            continue
        except urllib.error.HTTPError as e:
            if not (e.code >= 500 or e.code in RETRY_STATUSES):
                raise DownloadError(f"download of {label} failed: HTTP {e.code} {e.reason}") from e
            err: Exception = e
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
            err = e
        if attempt >= retries:
            raise DownloadError(
                f"download of {label} failed after {attempt + 1} attempts: {err}; "
                f"the partial file {part} is kept and a rerun resumes it"
            ) from err
        time.sleep(backoff * 2**attempt)
        attempt += 1


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    lock_file: str | os.PathLike | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resumably, and verify it.

    Parameters
    ----------
    url:
        Canonical http(s) (or file) URL. With ``$REGATTN_MIRROR`` set, an http(s) URL is
        fetched from ``resolve_url(url)`` instead; the lock record stays keyed by ``url``.
    dest:
        Final path. Bytes go to ``<dest>.part`` first; an existing ``.part`` is resumed with an
        HTTP Range request (a server answering 200 instead of 206 restarts it from zero).
    sha256:
        Expected hex digest, or a prefix of at least 6 hex digits. Unless it is a full digest,
        the file is also checked against the lock file record of ``url``, and the first
        complete download creates that record (size and full sha256).
    size:
        Expected size in bytes, ``None`` if unknown.
    lock_file:
        JSON record of sizes and hashes; default ``<data_root>/downloads.lock.json``.
    retries:
        Retries after the first attempt on network errors, 5xx, 408 and 429 (default 3); other
        HTTP errors (404, 403, ...) fail at once.
    backoff:
        First retry delay in seconds, doubled each retry (default 0.5).
    timeout:
        Socket timeout in seconds (default 60).
    progress:
        Show a tqdm progress bar (default True).

    An existing ``dest`` that verifies is returned without any network access. A failed check
    moves the file to ``<dest>.quarantine/`` and raises ``ChecksumError`` (a ``DownloadError``)
    naming the URL (and the mirror's), the file and both hashes.
    """
    dest = Path(dest)
    lock = Path(lock_file) if lock_file is not None else default_lock_file()
    if dest.exists():
        n, digest, known = _verify(url, dest, dest, sha256, size, lock)
        if not known:
            # Trust on first use: a file placed by hand is recorded like a first download.
            _record(lock, url, dest, n, digest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fetched = resolve_url(url)
    _fetch(fetched, part, retries, backoff, timeout, progress, describe_url(url, fetched))
    n, digest, known = _verify(url, part, dest, sha256, size, lock)
    os.replace(part, dest)
    if not known:
        _record(lock, url, dest, n, digest)
    return dest


# --- archives --------------------------------------------------------------------------------
