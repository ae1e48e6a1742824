"""Up-front checks before a long run: what the profile needs and what is missing.

``python -m regattn_lib.preflight --profile paper`` prints one line per requirement (GPU, disk
space, each dataset / weights file present or downloadable, ImageNet when training) and exits
non-zero if anything required is missing, before hours are spent. Offline profiles pass
without network. ``--import-from DIR`` (or ``$REGATTN_IMPORT_FROM``) first copies in missing
files found under DIR by name, once they match the manifest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .paths import data_root as resolve_data_root
from .profiles import get_profile

#: Disk the paper profile needs: Oxford+Paris (~5 GB), SfM-120k images (~20 GB), 100k
#: distractors (~15 GB), weights and caches.
PAPER_DISK_GB = 60


@dataclass
class Check:
    what: str
    ok: bool
    detail: str
    required: bool = True


def host_reachable(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether the host of ``url`` answers an HTTP HEAD (any HTTP status counts as reachable)."""
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return True, f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        return True, f"HTTP {e.code}"
    except Exception as e:  # DNS failure, refused, timeout
        return False, f"{type(e).__name__}: {e}"


#: Folders searched for files obtained another way (``os.pathsep``-separated).
IMPORT_ENV = "REGATTN_IMPORT_FROM"


def paper_checks(
    data_root: Path,
    device: str,
    train_imagenet: bool,
    network: bool = True,
    import_from: list[Path] | None = None,
) -> list[Check]:
    """Everything the paper profile needs, checked in order.

    A missing file found under one of ``import_from`` (by its file name, verified against the
    manifest) is copied into the data root first; see ``downloads.import_local``.
    """
    import torch

    from .datasets.downloads import DownloadError, import_local, load_manifest

    checks = []
    cuda = torch.cuda.is_available()
    checks.append(Check("GPU", cuda or device == "cpu",
                        torch.cuda.get_device_name(0) if cuda else "no CUDA device (pass --device cpu to run anyway, for days)"))  # fmt: skip
    data_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data_root).free / 1e9
    checks.append(
        Check(
            "disk space",
            free >= PAPER_DISK_GB,
            f"{free:.0f} GB free at {data_root}, {PAPER_DISK_GB} GB needed",
        )
    )
    files = load_manifest()
    wanted = ["gnd_oxford5k", "gnd_paris6k", "gnd_roxford5k", "gnd_rparis6k", "images_oxford5k",
              "images_paris6k_1", "images_paris6k_2", "caffe_resnet101_features", "official_attention",
              "sfm_db_retrieval-SfM-120k-whiten", "sfm120k_ims", "revisitop1m_list", "rpn_fasterrcnn_coco"]  # fmt: skip
    hosts: dict[str, tuple[bool, str]] = {}
    for key in wanted:
        e = files[key]
        dest = data_root / e["dest"]
        done = dest.is_file() or (e.get("extract_to") and (data_root / e["extract_to"]).is_dir())
        if done:
            checks.append(Check(key, True, f"present: {dest}"))
            continue
        if import_from:
            try:
                source = import_local(key, import_from, data_root)
            except (DownloadError, FileNotFoundError) as err:
                checks.append(Check(key, False, f"import failed: {err}"))
                continue
            if source is not None:
                checks.append(Check(key, True, f"imported from {source} -> {dest}"))
                continue
        host = urlparse(e["url"]).netloc
        if network and host not in hosts:
            hosts[host] = host_reachable(e["url"])
        ok, why = hosts.get(host, (False, "network check skipped"))
        checks.append(Check(key, ok, f"{'will download' if ok else 'MISSING and unreachable'}: {e['url']} -> {dest}"
                            + ("" if ok else f" ({why})")))  # fmt: skip
    imagenet = data_root / "train" / "imagenet"
    has_imagenet = (imagenet / "train").is_dir() and (imagenet / "val").is_dir()
    checks.append(Check("ImageNet (ILSVRC-2012) for training", has_imagenet,
                        f"{'present' if has_imagenet else 'absent'} at {imagenet}/{{train,val}}/<wnid>/*.JPEG"
                        + ("" if has_imagenet else "; only needed to train the regional-only attention (register at image-net.org)"),
                        required=train_imagenet))  # fmt: skip
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--train-imagenet", action="store_true")
    ap.add_argument("--no-network", action="store_true", help="do not probe the download hosts")
    ap.add_argument(
        "--import-from", action="append", type=Path, default=None, metavar="DIR",
        help=f"folder holding files obtained another way, copied in when verified (repeatable; "
        f"default ${IMPORT_ENV}, {os.pathsep!r}-separated)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.import_from is None:
        env = os.environ.get(IMPORT_ENV, "")
        args.import_from = [Path(p) for p in env.split(os.pathsep) if p]
    profile = get_profile(args.profile)
    if not profile.download:
        print(f"[preflight] profile {profile.name}: offline, nothing to download")
        return 0
    checks = paper_checks(
        resolve_data_root(args.data_root),
        args.device,
        args.train_imagenet,
        not args.no_network,
        args.import_from,
    )
    for c in checks:
        mark = "ok " if c.ok else ("MISSING" if c.required else "note")
        print(f"[preflight] {mark:7s} {c.what}: {c.detail}")
    missing = [c.what for c in checks if c.required and not c.ok]
    if missing:
        print(
            f"[preflight] profile {profile.name} cannot run: missing {', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    print(f"[preflight] profile {profile.name}: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
