"""The manifest of every remote file, and the mirror that can serve them.

Every remote file of the project is an entry of ``manifest.json`` (``load_manifest``); the
downloads themselves are ``downloads.download_entry``.

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

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from regattn_lib.runtime.paths import data_root as resolve_data_root

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
#: Environment variable: base URL of a mirror of every remote file (see the module docstring).
MIRROR_ENV = "REGATTN_MIRROR"
#: Environment variable: a JSON manifest whose entries replace the package's, key by key.
MANIFEST_ENV = "REGATTN_MANIFEST"
_URL_SCHEMES = ("http", "https", "file")


class ManifestError(ValueError):
    """A manifest file (the package's or ``$REGATTN_MANIFEST``) that cannot be used."""


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
