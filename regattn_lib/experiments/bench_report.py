"""What every benchmark report records: the machine, the exact command, the written files.

Shared by the scripts in ``benchmarks/`` so that their JSON and Markdown reports name the
machine and the command the same way.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from regattn_lib.runtime.atomic import atomic_write_json, atomic_write_text
from regattn_lib.runtime.paths import REPO_ROOT


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when inside it (for reports), else as is.

    ``abspath``, not ``resolve``: the venv's python is a symlink out of the repository.
    """
    absolute = Path(os.path.abspath(path))
    return str(absolute.relative_to(REPO_ROOT)) if absolute.is_relative_to(REPO_ROOT) else str(path)


def command_line(script: str | os.PathLike, argv: Sequence[str]) -> str:
    """The exact command that ran ``script``, interpreter and script shown repository-relative."""
    return shlex.join([shown_path(sys.executable), shown_path(script), *argv])


def cpu_name() -> str:
    """CPU model (from /proc/cpuinfo) with the logical CPU and torch thread counts."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else :func:`cpu_name`."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def write_report(
    out_dir: Path,
    name: str,
    result: Mapping[str, Any],
    markdown: Callable[[Mapping[str, Any]], str],
) -> str:
    """Write ``<out_dir>/<name>.json`` and ``.md`` atomically; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    atomic_write_json(out_dir / f"{name}.json", result)
    atomic_write_text(out_dir / f"{name}.md", text)
    return text
