"""Checksummed, restricted unpickling of data pickles (the ground-truth ``gnd_*.pkl``)."""

from __future__ import annotations

import _compat_pickle
import os
import pickle
from pathlib import Path
from typing import Any

from regattn_lib.datasets.downloads import ChecksumError, hash_matches, lock_record_for_path
from regattn_lib.runtime.atomic import sha256_file


class UnsafePickleError(ValueError):
    """A pickle that asks for an object type outside the allowed plain-data set."""


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
        if not hash_matches(actual, expected):
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
