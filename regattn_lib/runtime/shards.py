"""The one resumable sharded writer: long work saved in units, each unit's file written
atomically as soon as it is done, so an interrupted run loses at most the unit in hand.

Extraction keeps one shard per range of images and head, the whitening pass one checkpoint of
its statistics, the photo index one shard per batch of files. ``ShardStore`` is the folder they
write to: it names, lists, saves (atomically), loads and clears the shards. Without a folder it
keeps them in memory (extraction without a cache), so callers have one code path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from regattn_lib.runtime.atomic import atomic_torch_save

#: Units of work per shard when nothing else is said; ``$REGATTN_SHARD_IMAGES`` overrides it
#: where the callers read it (``runtime.environment.env_number``).
SHARD_IMAGES = 500


class ShardStore:
    """A folder of ``<name>.pt`` shards (``folder=None``: kept in memory).

    ``save`` writes a shard atomically (a reader never sees half a shard, an interrupted write
    leaves the previous one); ``load`` reads it back (tensors, lists and dicts only:
    ``weights_only=True``); ``names`` lists the finished shards in name order; ``clear`` removes
    the folder once the caller has stored the assembled result.
    """

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = None if folder is None else Path(folder)
        self._memory: dict[str, Any] = {}

    def path(self, name: str) -> Path | None:
        """Where shard ``name`` lives, ``None`` in memory."""
        return None if self.folder is None else self.folder / f"{name}.pt"

    def has(self, name: str) -> bool:
        f = self.path(name)
        return name in self._memory if f is None else f.is_file()

    def names(self) -> list[str]:
        """The finished shards' names, sorted."""
        if self.folder is None:
            return sorted(self._memory)
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.pt"))

    def save(self, name: str, payload: Any) -> None:
        f = self.path(name)
        if f is None:
            self._memory[name] = payload
        else:
            atomic_torch_save(f, payload)

    def load(self, name: str) -> Any:
        f = self.path(name)
        if f is None:
            return self._memory[name]
        return torch.load(f, map_location="cpu", weights_only=True)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for name in self.names():
            yield name, self.load(name)

    def discard(self, name: str) -> None:
        """Remove one shard, and any temporary file a killed save left beside it."""
        f = self.path(name)
        if f is None:
            self._memory.pop(name, None)
            return
        f.unlink(missing_ok=True)
        for stale in f.parent.glob(f".{f.name}.*.tmp"):
            stale.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every shard (the folder itself)."""
        self._memory.clear()
        if self.folder is not None and self.folder.is_dir():
            shutil.rmtree(self.folder, ignore_errors=True)
