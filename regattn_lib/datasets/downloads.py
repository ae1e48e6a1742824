"""Resumable, verified downloads; safe archive extraction; checksummed, restricted unpickling.

Every remote file of the project is an entry of ``manifest.json`` (``load_manifest``) and is
fetched with ``download_entry(key, data_root)``. No project in the field publishes checksums
(spec section 5), so a file whose hash is not in the manifest is recorded (size + sha256) in the
data root's lock file ``<data_root>/downloads.lock.json`` on its first complete download and
checked against that record from then on. A file that fails a check is moved aside to a
quarantine folder, never silently used or overwritten.

Manifest entry fields
    ``url`` (canonical address), ``dest`` (path relative to the data root), ``sha256`` and
    ``size`` (``null`` = unknown: recorded in the lock file), ``sha256_prefix`` (the hash prefix
    a torch-hub style file name carries), ``extract_to`` (archives: folder they are extracted
    into), ``keep_archive`` (archives: whether the code keeps the archive after extracting it;
    default true), ``approx_bytes`` and ``extracted_bytes`` (approximate download size and
    size once extracted, used by the preflight's disk estimate), ``note`` (what the file is
    and where the sizes come from).

Environment variables
    ``REGATTN_MIRROR=<base url>``
        Fetch every http(s) file from a mirror instead of its canonical host: the URL fetched
        is ``<base>/<host><path>`` of the canonical URL (``mirror_path``), e.g. canonical
        ``http://cmp.felk.cvut.cz/cnnimageretrieval/data/test/oxford5k/gnd_oxford5k.pkl`` is
        fetched from ``<base>/cmp.felk.cvut.cz/cnnimageretrieval/data/test/oxford5k/
        gnd_oxford5k.pkl``. A mirror is therefore a folder tree with one sub-folder per host,
        served over http(s) or read directly (``file:///path/to/mirror``). A server that
        honours ``Range`` requests lets interrupted downloads resume; one that does not (e.g.
        ``python -m http.server``) works, but an interrupted file restarts from zero. Lock-file
        records stay keyed by the canonical URL, so switching mirrors keeps each file's
        identity; errors name both URLs.
    ``REGATTN_MANIFEST=<file>``
        A JSON file ``{"files": {key: entry, ...}}`` whose entries replace the package's
        entries key by key (whole entries, not single fields) and may add keys; e.g. a test
        fixture supplies the sha256 and size of its miniature files this way. Give an absolute
        path: a relative one is taken from the current folder, which differs between the
        notebooks and the command line. A missing or malformed file raises ``ManifestError``
        naming it.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import http.client
import json
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ..io_utils import atomic_write_json, sha256_file
from ..paths import data_root as resolve_data_root

#: Name of the lock file kept at the data root.
LOCK_NAME = "downloads.lock.json"
MANIFEST_PATH = Path(__file__).with_name("manifest.json")
#: Environment variable: base URL of a mirror of every remote file (see the module docstring).
MIRROR_ENV = "REGATTN_MIRROR"
#: Environment variable: a JSON manifest whose entries replace the package's, key by key.
MANIFEST_ENV = "REGATTN_MANIFEST"
#: HTTP statuses worth retrying (server-side or rate limiting); every other 4xx is final.
RETRY_STATUSES = frozenset({408, 425, 429})
CHUNK = 1 << 16
_URL_SCHEMES = ("http", "https", "file")


class DownloadError(RuntimeError):
    """A download that failed for good, naming the URL (and file, for a bad checksum)."""


class ChecksumError(DownloadError):
    """A file whose size or sha256 differs from the manifest or the lock file record."""


class ManifestError(ValueError):
    """A manifest file (the package's or ``$REGATTN_MANIFEST``) that cannot be used."""


class UnsafePickleError(ValueError):
    """A pickle that asks for an object type outside the allowed plain-data set."""


class _Restart(Exception):
    """Internal: the partial file cannot be resumed; start again from byte zero."""


class _ShortRead(OSError):
    """Internal: the connection ended before the announced length arrived."""


# --- manifest --------------------------------------------------------------------------------


def _check_entry(source: Path, key: str, entry: Any) -> None:
    """Raise ``ManifestError`` naming ``source`` and ``key`` for an unusable entry."""
    where = f"{source}: entry {key!r}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where} must be an object, got {type(entry).__name__}")
    url, dest = entry.get("url"), entry.get("dest")
    if not isinstance(url, str) or urlsplit(url).scheme not in _URL_SCHEMES:
        raise ManifestError(f"{where}: 'url' must be an http(s) or file URL, got {url!r}")
    if not isinstance(dest, str) or not dest:
        raise ManifestError(f"{where}: 'dest' must be a path relative to the data root")
    parts = PurePosixPath(dest).parts
    if PurePosixPath(dest).is_absolute() or ".." in parts:
        raise ManifestError(f"{where}: 'dest' {dest!r} must stay inside the data root")
    for field in ("sha256", "sha256_prefix"):
        v = entry.get(field)
        if v is not None and not (isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{6,64}", v)):
            raise ManifestError(f"{where}: {field!r} must be null or a hex digest, got {v!r}")
    for field in ("size", "approx_bytes", "extracted_bytes"):
        v = entry.get(field)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ManifestError(f"{where}: {field!r} must be null or a byte count, got {v!r}")


def _read_manifest_file(path: Path) -> dict[str, dict[str, Any]]:
    """The checked ``files`` mapping of one manifest file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"manifest file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read manifest file {path}: {e}") from e
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ManifestError(f'{path}: expected a JSON object {{"files": {{key: entry, ...}}}}')
    for key, entry in files.items():
        _check_entry(path, key, entry)
    return files


def manifest_override() -> Path | None:
    """The file named by ``$REGATTN_MANIFEST``, or ``None`` when it is unset or empty."""
    value = os.environ.get(MANIFEST_ENV, "").strip()
    return Path(value).expanduser() if value else None


def load_manifest() -> dict[str, dict[str, Any]]:
    """All manifest entries: key -> {'url', 'dest' (relative to the data root), 'sha256',
    'size', ...}; unknown hashes and sizes are ``None``.

    The package's ``manifest.json``, with the entries of ``$REGATTN_MANIFEST`` (when set)
    replacing it key by key; raises ``ManifestError`` naming a missing or malformed file.
    """
    files = _read_manifest_file(MANIFEST_PATH)
    override = manifest_override()
    if override is not None:
        files.update(_read_manifest_file(override))
    return files


def manifest_entry(key: str) -> dict[str, Any]:
    """One manifest entry by key (e.g. ``'gnd_roxford5k'``); ``KeyError`` lists the keys."""
    files = load_manifest()
    if key not in files:
        shown = ", ".join(k for k in sorted(files) if not k.startswith("revisitop1m_tar_"))
        raise KeyError(f"no manifest entry {key!r}; known: {shown}, revisitop1m_tar_001..100")
    return dict(files[key], key=key)


def entry_path(key: str, data_root: str | os.PathLike | None = None) -> Path:
    """``<data_root>/<dest>`` of manifest entry ``key``."""
    return resolve_data_root(data_root) / manifest_entry(key)["dest"]


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


# --- mirror ----------------------------------------------------------------------------------


def mirror_path(url: str) -> str:
    """The path ``<host><path>`` under which a mirror serves the canonical ``url``.

    E.g. ``'https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz'`` ->
    ``'www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz'``. A port, when the
    URL has one, stays part of the host (``host:port``); a query string is kept.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"only http(s) URLs with a host can be mirrored, not {url!r}")
    host = parts.netloc.rsplit("@", 1)[-1]  # never carry credentials into a mirror path
    return host + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def mirror_base() -> str | None:
    """``$REGATTN_MIRROR`` without trailing slashes, or ``None`` when unset or empty."""
    base = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    if not base:
        return None
    if urlsplit(base).scheme not in _URL_SCHEMES:
        raise ValueError(
            f"{MIRROR_ENV}={base!r} is not an http(s) or file URL (e.g. http://host:8000 or "
            "file:///srv/mirror)"
        )
    return base


def resolve_url(url: str) -> str:
    """The URL actually fetched for the canonical ``url``: ``<$REGATTN_MIRROR>/<host><path>``
    when a mirror is set and ``url`` is http(s), else ``url`` itself."""
    base = mirror_base()
    if base is None or urlsplit(url).scheme not in ("http", "https"):
        return url
    return f"{base}/{mirror_path(url)}"


def describe_url(url: str, fetched: str | None = None) -> str:
    """``url``, plus the mirror URL it is fetched from when that differs (for messages)."""
    fetched = resolve_url(url) if fetched is None else fetched
    return url if fetched == url else f"{url} (via mirror {fetched})"


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


def _hash_matches(actual: str, expected: str) -> bool:
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
        if not _hash_matches(actual_sha, sha)
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


def _check_member(archive: Path, name: str) -> PurePosixPath:
    """Reject absolute names and ``..`` components (path traversal)."""
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


def _extract_tar(archive: Path, root: Path, flatten: bool) -> None:
    seen: set[str] = set()
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            rel = _check_member(archive, m.name)
            if m.isdir():
                if not flatten:
                    _target(root, rel, False, seen).mkdir(parents=True, exist_ok=True)
                continue
            if not m.isfile():
                # Links and device files could point outside the folder; image archives have none.
                raise DownloadError(f"{archive}: refusing member {m.name!r} (not a regular file)")
            out = _target(root, rel, flatten, seen)
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None  # regular files always have data
            with src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)


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


# --- pickles ---------------------------------------------------------------------------------

#: (module, name) pairs a ground-truth pickle may reference: plain containers and numpy arrays.
SAFE_GLOBALS = frozenset(
    {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float")}
    | {("builtins", n) for n in ("complex", "str", "bytes", "bytearray", "bool", "slice")}
    | {("collections", "OrderedDict"), ("_codecs", "encode")}
    | {
        (mod, name)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {(mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")}
    | {("numpy", "ndarray"), ("numpy", "dtype")}
)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f: Any, source: Path):
        # latin1 lets Python 2 pickles of numpy arrays load (their raw bytes are py2 str).
        super().__init__(f, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # protocol <= 2 pickles name Python 2's modules (e.g. __builtin__.bytes for an empty
        # numpy array); check the names Python 3 will actually import (no Python 3 module has
        # a Python 2 name, so mapping every pickle is safe)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: the pickle asks for {module}.{name}, which is not allowed; only "
            "dicts, lists, strings, numbers and numpy arrays are accepted in data pickles"
        )


def safe_load_pickle(
    path: str | os.PathLike,
    expected_sha256: str | None = None,
    lock_file: str | os.PathLike | None = None,
) -> Any:
    """Unpickle a data file (e.g. ``gnd_<name>.pkl``) after checking its hash.

    Parameters
    ----------
    path:
        The pickle.
    expected_sha256:
        Hash (or >= 6 digit prefix) to check, e.g. from the manifest; ``None``: the lock file
        record of this path is used when there is one.
    lock_file:
        Default ``<data_root>/downloads.lock.json``.

    A file with neither (a local dataset made by hand) is read without a hash check; the
    restricted unpickler, which only builds containers, strings, numbers and numpy arrays, is
    what keeps a tampered pickle from running code. Raises ``ChecksumError`` on a hash
    mismatch and ``UnsafePickleError`` naming the file for any other object type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle not found: {path}")
    expected, source = expected_sha256, "the given hash"
    if expected is None:
        rec = lock_record_for_path(path, lock_file)
        if rec is not None:
            expected = rec["sha256"]
            source = f"the lock file record of {rec['url']}"
    if expected is not None:
        actual = sha256_file(path)
        if not _hash_matches(actual, expected):
            raise ChecksumError(
                f"{path}: sha256 {actual} differs from {source} ({expected}); not unpickled"
            )
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # truncated or garbage files raise many types
            raise UnsafePickleError(f"{path}: cannot read the pickle: {e}") from e
