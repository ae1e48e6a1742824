"""Up-front checks before a long run: the device, then what the profile needs and what is missing.

``python -m regattn_lib.experiments.preflight --profile P --device D`` (``run_all.sh`` calls it before the
first notebook):

1. The device, for every profile: ``--device cuda`` (or ``cuda:N``, or any other accelerator)
   without a usable device stops here with one line on stderr and exit status 1, before any
   notebook starts; ``--device auto`` and ``cpu`` never fail for the GPU.
2. Profiles that download (paper): one line per requirement, exit status 1 if anything
   required is missing:

   - each manifest file the profile needs (gnd pickles, image archives, SfM-120k whitening
     database and images, the distractors, backbone weights, the authors' attention, the RPN
     weights): present, imported from ``--import-from`` folders, or downloadable. A file is
     downloadable only when its own URL (through ``$REGATTN_MIRROR`` when set) answers 2xx/206
     to a HEAD request, or to a ``GET`` of ``Range: bytes=0-0`` when HEAD is refused; a 404 is
     "missing", not reachable. The manifest is the merged one (``$REGATTN_MANIFEST``).
   - disk: what is still to download and extract, from the manifest's ``approx_bytes`` /
     ``extracted_bytes`` (kept archives count; revisitop1m archives are deleted once extracted,
     so one at a time counts), plus the descriptor caches not yet written. A rerun with
     everything present needs about nothing.
   - memory for the whitening pass (fp64 mean and covariance), against ``MemAvailable``.
   - ImageNet, when the profile trains on it (or ``--train-imagenet``).
   - what the profile downloads in all (the manifest's estimates, whatever is present) and a
     rough time for the downloads and the backbone passes (``time_estimate``).

Offline profiles need no network and only get the device check.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from regattn_lib.experiments.profiles import Profile, get_profile, load_overrides
from regattn_lib.runtime.environment import env_number
from regattn_lib.runtime.paths import data_root as resolve_data_root

#: Folders searched for files obtained another way (``os.pathsep``-separated).
IMPORT_ENV = "REGATTN_IMPORT_FROM"
#: revisitop1m: 1,001,001 images in 100 archives (revisitop's paper and download script).
REVISITOP1M_IMAGES = 1_001_001
REVISITOP1M_ARCHIVES = 100
#: Database + query images of the standard test sets (spec section 4; Paris less its blacklist).
TEST_SET_IMAGES = {
    "oxford5k": 5063 + 55,
    "paris6k": 6392 + 55,
    "roxford5k": 4993 + 70,
    "rparis6k": 6322 + 70,
}
#: Descriptor vectors cached per test-set image: ablation (3 heads), RPN (3), state of the art
#: (6), scale study (2 heads x 7 levels), whitening study (~3): ~30, rounded up.
DESCRIPTORS_PER_TEST_IMAGE = 32
#: Per distractor image: the 6 state-of-the-art heads, for the Oxford and the Paris table.
DESCRIPTORS_PER_DISTRACTOR = 12
#: Images of SfM-120k's ``train`` and ``val`` splits (Radenovic et al., TPAMI 2018: 551 and
#: 162 3D models).
SFM120K_SPLIT_IMAGES = {"train": 91_642, "val": 6_403}
#: Images of cirtorch's retrieval-SfM-120k-whiten list, approximately (the time estimate's
#: whitening pass; the pipeline's 2.4M regional vectors at L = 3 are ~26 per image).
SFM120K_WHITEN_IMAGES = 92_000
#: The whitening pass's process besides its matrices: Python, torch, the backbone, decoded images.
PROCESS_BASE_BYTES = 2 << 30
#: Regional vectors of one extraction batch (16 images x ~30 regions at L = 3).
WHITENING_BATCH_VECTORS = 16 * 32
_UA = {"User-Agent": "regattn/0.1 preflight (+urllib)"}
#: Assumed for the time estimate, not measured here (no GPU was available): ResNet-101 in fp32 at
#: 1024 px on one current datacenter GPU, decoding included; the paper's own time column says
#: 0.095 s per image on a 2018 GPU. ``$REGATTN_IMAGES_PER_S`` replaces it.
ASSUMED_IMAGES_PER_S = 30.0
#: Assumed download speed of the time estimate; ``$REGATTN_DOWNLOAD_MBPS`` (MB/s) replaces it.
ASSUMED_DOWNLOAD_BYTES_PER_S = 20e6
#: A test image through the backbone and the RPN (the RPN study), in backbone passes.
RPN_PASS_COST = 1.5


@dataclass
class Check:
    """One line of the report: ``required`` checks that are not ``ok`` stop the run."""

    what: str
    ok: bool
    detail: str
    required: bool = True


# --- device ------------------------------------------------------------------------------------


def device_check(device: str) -> Check:
    """Whether ``device`` can run the notebooks.

    ``"auto"`` and ``"cpu"`` are always ok (auto falls back to the CPU). ``"cuda"`` /
    ``"cuda:N"`` need ``torch.cuda.is_available()``, the index to exist and a tiny tensor
    operation to succeed on it (a broken driver fails here, not in notebook 01). Any other
    torch device string gets the tiny operation.
    """
    import torch

    if device == "cpu":
        return Check("device", True, "cpu")
    if device == "auto":
        if torch.cuda.is_available():
            return Check("device", True, f"auto -> cuda ({torch.cuda.get_device_name(0)})")
        return Check("device", True, "auto -> cpu (no CUDA device)")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        return Check(
            "device", False, f"--device {device}: not a device ({e}); use auto, cpu or cuda"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA device or driver found"
            )
            return Check(
                "device",
                False,
                f"--device {device}: no usable CUDA GPU ({why}; "
                "torch.cuda.is_available() is False). Use --device auto or cpu.",
            )
        count = torch.cuda.device_count()
        if (dev.index or 0) >= count:
            return Check("device", False, f"--device {device}: only {count} CUDA device(s)")
    try:
        torch.ones(1, device=dev).add_(1).cpu()
    except Exception as e:  # driver/runtime errors come in many types
        first = (str(e).strip().splitlines() or [""])[0]
        return Check(
            "device", False, f"--device {device}: not usable ({type(e).__name__}: {first})"
        )
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return Check("device", True, f"{device} ({name})")


# --- reachability ------------------------------------------------------------------------------


class _KeepMethod(urllib.request.HTTPRedirectHandler):
    """Follow redirects without turning a HEAD into a GET of the whole file."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()
        return new


def url_status(url: str, timeout: float = 10.0) -> tuple[str, str]:
    """Whether the file at ``url`` itself answers: ``('ok' | 'missing' | 'error' |
    'unreachable', detail)``.

    HEAD first; when HEAD is refused (any HTTP error but 404/410), a ``GET`` of
    ``Range: bytes=0-0``. 2xx or 206 is ``'ok'``; 404 and 410 are ``'missing'``; another HTTP
    status is ``'error'``; no HTTP answer at all (DNS, refused, timeout) is ``'unreachable'``.
    ``file:`` URLs (a local mirror) are ok when the file exists.
    """
    if urlsplit(url).scheme == "file":
        path = Path(url2pathname(urlsplit(url).path))
        return ("ok", "local file") if path.is_file() else ("missing", f"no file {path}")
    opener = urllib.request.build_opener(_KeepMethod)
    refused = ""
    for method, extra in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        req = urllib.request.Request(url, headers={**_UA, **extra}, method=method)
        try:
            with opener.open(req, timeout=timeout) as r:
                status = getattr(r, "status", None) or 200
                if 200 <= status < 300:
                    return "ok", f"HTTP {status} to {method}{refused}"
                return "error", f"HTTP {status} to {method}"
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in (404, 410):
                return "missing", f"HTTP {e.code} {e.reason}"
            if method == "GET":
                return "error", f"HTTP {e.code} {e.reason} to GET bytes=0-0{refused}"
            refused = f" (HEAD refused: HTTP {e.code})"
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
            reason = getattr(e, "reason", None) or e
            return "unreachable", f"{type(e).__name__}: {reason}"
    raise AssertionError("unreachable code")  # pragma: no cover


# --- what a profile needs ----------------------------------------------------------------------


@dataclass
class Item:
    """A manifest file the profile needs and what remains to be done for it."""

    key: str
    entry: dict[str, Any]
    dest: Path
    done: bool  # present (or extracted): nothing left to do
    fetch_bytes: int  # still to download
    extract_bytes: int  # still to extract
    state: str  # for the report


def _placed_by_hand(folder: Path) -> bool:
    """An extraction folder holding images but no ``.<archive>.done`` marker at all: a copy
    put there another way, taken as complete (the dataset loaders check each image)."""
    from regattn_lib.datasets.retrieval import has_images

    if not folder.is_dir() or any(folder.glob(".*.done")):
        return False
    return has_images(folder)


def item_state(key: str, entry: dict[str, Any], root: Path) -> Item:
    """What is left for manifest entry ``key`` under ``root``: download (less a ``.part``
    already fetched) and, for an archive, extraction."""
    from regattn_lib.datasets.archives import done_marker

    dest = root / entry["dest"]
    part = dest.with_name(dest.name + ".part")
    approx = int(entry.get("size") or entry.get("approx_bytes") or 0)
    to_fetch = (
        0 if dest.is_file() else max(0, approx - (part.stat().st_size if part.is_file() else 0))
    )
    if entry.get("extract_to"):
        folder = root / entry["extract_to"]
        # a hand-placed copy counts for the test sets and SfM; revisitop1m archives are chosen
        # from the images actually missing (distractor_plan)
        by_hand = entry.get("keep_archive", True) and _placed_by_hand(folder)
        if done_marker(dest, folder).exists() or by_hand:
            return Item(key, entry, dest, True, 0, 0, f"present: extracted in {folder}")
        extract = int(entry.get("extracted_bytes") or approx)
        if dest.is_file():
            return Item(key, entry, dest, False, 0, extract, f"downloaded, to be extracted: {dest}")
        return Item(key, entry, dest, False, to_fetch, extract, "")
    if dest.is_file():
        return Item(key, entry, dest, True, 0, 0, f"present: {dest}")
    return Item(key, entry, dest, False, to_fetch, 0, "")


def profile_keys(profile: Profile) -> list[str]:
    """Manifest keys of every file ``profile`` needs except the distractors: the test sets'
    gnd pickles and image archives, the SfM-120k whitening database and images (and its
    training database where the profile learns attention by metric learning), the backbone's
    weights, the authors' attention (``train.source == 'official'``), the RPN's weights."""
    from regattn_lib.datasets.retrieval import IMAGE_ARCHIVES, IMAGE_HOME, SFM_NAME
    from regattn_lib.models.backbone_weights import WEIGHTS

    keys: list[str] = []
    for name in dict.fromkeys(profile.datasets + profile.revisited):
        if name in IMAGE_HOME:
            keys += [f"gnd_{name}", *IMAGE_ARCHIVES[IMAGE_HOME[name]]]
    if profile.whitening_set in ("sfm120k", SFM_NAME):
        keys += [f"sfm_db_{SFM_NAME}-whiten", "sfm120k_ims"]
    if profile.metric.enabled and profile.synthetic is None:  # metric learning on SfM-120k
        keys += [f"sfm_db_{SFM_NAME}", "sfm120k_ims"]
    if profile.backbone in WEIGHTS:
        keys.append(WEIGHTS[profile.backbone])
    if profile.train.source == "official":
        keys.append("official_attention")
    if profile.rpn == "coco":
        keys.append("rpn_fasterrcnn_coco")
    return list(dict.fromkeys(keys))


def distractor_plan(profile: Profile, root: Path) -> tuple[list[str], list[Check], int]:
    """(manifest keys, report lines, number of distractor images) for the profile's distractors.

    With revisitop1m, the archives holding the wanted images are unknown until the archives are
    opened: the estimate takes the first ``ceil(missing / 10,010)`` archives not yet extracted,
    which is right when the list follows the archives' order. Revisitop documents no order
    (its own script fetches all 100), so the loader may need more; the report says so.
    """
    from regattn_lib.datasets.archives import done_marker
    from regattn_lib.datasets.imagenet import list_images
    from regattn_lib.datasets.manifest import manifest_entry
    from regattn_lib.datasets.retrieval import flickr100k_dir, resolve_distractors

    name, n = profile.distractors, profile.n_distractors
    if name is None:
        return [], [], 0
    chosen = resolve_distractors(name, root)
    if chosen == "flickr100k":
        folder = flickr100k_dir(root)
        found = len(list_images(folder)) if folder.is_dir() else 0
        ok = found > 0
        detail = (
            f"Flickr100k, local copy at {folder}: {found} images"
            if ok
            else f"no Flickr100k copy at {folder}/ (it is no longer distributed): put the "
            "images there, or use distractors='auto' for the revisitop1m stand-in"
        )
        return [], [Check("distractors", ok, detail)], min(found, n or found)
    wanted = n if n is not None else REVISITOP1M_IMAGES
    base = root / "distractors" / "revisitop1m"
    list_file = base / "revisitop1m.txt"
    if list_file.is_file():
        with open(list_file) as f:
            names = list(islice((ln.strip() for ln in f if ln.strip()), wanted))
        if len(names) < wanted:
            detail = f"{list_file} lists {len(names)} images, {wanted} wanted"
            return ["revisitop1m_list"], [Check("distractors", False, detail)], wanted
        missing = sum(not (base / "jpg" / nm).is_file() for nm in names)
    else:
        missing = wanted
    per_archive = REVISITOP1M_IMAGES / REVISITOP1M_ARCHIVES
    todo = []
    if missing:
        count = math.ceil(missing / per_archive)
        for i in range(1, REVISITOP1M_ARCHIVES + 1):
            key = f"revisitop1m_tar_{i:03d}"
            if len(todo) == count:
                break
            if not done_marker(root / manifest_entry(key)["dest"], base / "jpg").exists():
                todo.append(key)
    stand_in = " standing in for Flickr100k" if name == "auto" else ""
    where = f" (no local copy at {flickr100k_dir(root)})" if name == "auto" else ""
    detail = f"revisitop1m[:{wanted}]{stand_in}{where}: {missing} of {wanted} images missing"
    if todo:
        detail += (
            f"; counting archives {todo[0][-3:]}..{todo[-1][-3:]} (~{per_archive:,.0f} images "
            "each, assuming the list follows the archives' order: the loader fetches further "
            "archives if not)"
        )
    keys = ["revisitop1m_list", *todo]
    return keys, [Check("distractors", True, detail, required=False)], wanted


# --- disk and memory ---------------------------------------------------------------------------


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:  # vanished meanwhile
                pass
    return total


def _channels(profile: Profile) -> int:
    return 1280 if profile.backbone == "efficientnet-lite0" else 2048


def metric_cache_images(profile: Profile) -> int:
    """Images of SfM-120k a profile's metric learning pools (``metric_plan.sfm_pools``): per
    split, at most ``2 * query_size + pool_size``. 0 for profiles without it (offline ones
    train on their small synthetic split)."""
    m = profile.metric
    if not m.enabled or profile.synthetic is not None:
        return 0
    return sum(min(n, 2 * m.query_size + m.pool_size) for n in SFM120K_SPLIT_IMAGES.values())


def metric_cache_bytes(profile: Profile) -> int:
    """The metric-learning cache of a profile that trains on SfM-120k (``metric_plan.sfm_pools``):
    per split, at most ``2 * query_size + pool_size`` images, each kept as 2R + 1 fp32 rows of
    C channels (R: the R-MAC grid of a 4:3 image at the profile's ``levels``, 70 at L = 5).
    0 for profiles without it (offline ones cache their small synthetic split)."""
    from regattn_lib.core.regions import rmac_regions

    rows = 2 * len(rmac_regions(768, 1024, profile.levels)) + 1
    return 4 * _channels(profile) * rows * metric_cache_images(profile)


def cache_bytes_needed(profile: Profile, root: Path, n_distractors: int) -> int:
    """Descriptor caches still to be written: a rough count of cached fp32 vectors (see
    ``DESCRIPTORS_PER_TEST_IMAGE`` / ``..._PER_DISTRACTOR``) and the metric-learning cache
    (twice ``metric_cache_bytes``: its shards and the file assembled from them, until the
    shards are removed), less what ``<root>/cache/<profile>`` already holds."""
    test = sum(
        TEST_SET_IMAGES.get(n, 0) for n in dict.fromkeys(profile.datasets + profile.revisited)
    )
    vectors = test * DESCRIPTORS_PER_TEST_IMAGE + n_distractors * DESCRIPTORS_PER_DISTRACTOR
    # the metric cache's shards and its assembled file are on disk together for a moment
    total = 4 * _channels(profile) * vectors + 2 * metric_cache_bytes(profile)
    return max(0, total - folder_bytes(root / "cache" / profile.name))


def disk_need(items: Sequence[Item]) -> tuple[int, int]:
    """(download bytes, extracted bytes) still needed; archives the code deletes after
    extraction (``keep_archive: false``) are on disk one at a time."""
    kept = [i for i in items if i.entry.get("keep_archive", True)]
    dropped = [i for i in items if not i.entry.get("keep_archive", True)]
    fetch = sum(i.fetch_bytes for i in kept) + max((i.fetch_bytes for i in dropped), default=0)
    return fetch, sum(i.extract_bytes for i in items)


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def mem_available(meminfo: str | os.PathLike = "/proc/meminfo") -> int | None:
    """``MemAvailable`` in bytes from ``/proc/meminfo``, ``None`` where there is none."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def whitening_memory_bytes(
    channels: int = 2048, batch_vectors: int = WHITENING_BATCH_VECTORS
) -> int:
    """Rough peak memory of the whitening pass: fp64 covariance sum, its eigenvectors and a
    work copy (3 x C x C x 8 bytes), one batch of regional vectors (fp32 and an fp64 copy),
    plus ``PROCESS_BASE_BYTES`` for the process itself."""
    return 3 * channels * channels * 8 + batch_vectors * channels * 12 + PROCESS_BASE_BYTES


def memory_check(profile: Profile, meminfo: str | os.PathLike = "/proc/meminfo") -> Check:
    channels = 1280 if profile.backbone == "efficientnet-lite0" else 2048
    need = whitening_memory_bytes(channels)
    have = mem_available(meminfo)
    what = (
        f"the whitening pass needs ~{need / 1e9:.1f} GB ({channels}x{channels} fp64 "
        f"covariance and eigenvectors, a batch, the process)"
    )
    if have is None:
        return Check("memory", True, f"MemAvailable unknown (no {meminfo}); {what}", False)
    return Check("memory", have >= need, f"{have / 1e9:.1f} GB available (MemAvailable); {what}")


# --- the checks --------------------------------------------------------------------------------


_IMPORT_NOTE = {
    None: "sha256 recorded (no published checksum)",
    "hash prefix": "hash prefix checked, sha256 recorded",
    "lock file": "verified against the lock file's record",
    "manifest": "verified against the manifest's sha256",
}


def profile_checks(
    profile: Profile,
    data_root: Path,
    train_imagenet: bool = False,
    network: bool = True,
    import_from: Sequence[Path] | None = None,
    timeout: float = 10.0,
) -> list[Check]:
    """Every file, the disk, the memory and ImageNet for ``profile``, checked in order (see
    the module docstring). A missing file found under one of ``import_from`` (by its file
    name, verified against the manifest or the lock file) is copied into the data root first."""
    from regattn_lib.datasets.downloads import DownloadError, checksum_source, import_local
    from regattn_lib.datasets.manifest import describe_url, load_manifest, resolve_url

    root = resolve_data_root(data_root)
    files = load_manifest()
    dkeys, checks, n_distractors = distractor_plan(profile, root)
    items = [item_state(k, files[k], root) for k in profile_keys(profile) + dkeys]
    hosts: dict[str, str] = {}  # host -> why it did not answer at all
    for it in items:
        url = it.entry["url"]
        if it.done or it.state:
            checks.append(Check(it.key, True, it.state))
            continue
        if import_from:
            known = checksum_source(it.key, root)
            try:
                source = import_local(it.key, import_from, root)
            except (DownloadError, FileNotFoundError) as err:
                checks.append(Check(it.key, False, f"import failed: {err}"))
                continue
            if source is not None:
                checks.append(
                    Check(
                        it.key, True, f"imported from {source} -> {it.dest}, {_IMPORT_NOTE[known]}"
                    )
                )
                it.fetch_bytes = 0
                if it.entry.get("extract_to"):
                    continue
                it.done, it.extract_bytes = True, 0
                continue
        fetched = resolve_url(url)
        what = f"{describe_url(url, fetched)} -> {it.dest}"
        host = urlsplit(fetched).netloc
        if not network:
            checks.append(Check(it.key, False, f"MISSING, not checked (--no-network): {what}"))
        elif host in hosts:
            checks.append(Check(it.key, False, f"MISSING and unreachable ({hosts[host]}): {what}"))
        else:
            status, why = url_status(fetched, timeout)
            if status == "unreachable":
                hosts[host] = why
            label = {
                "ok": "will download",
                "missing": f"MISSING ({why} at {fetched})",
                "error": f"MISSING ({why} at {fetched})",
                "unreachable": f"MISSING and unreachable ({why})",
            }[status]
            checks.append(Check(it.key, status == "ok", f"{label}: {what}"))
    fetch, extract = disk_need(items)
    caches = cache_bytes_needed(profile, root, n_distractors)
    need = fetch + extract + caches
    free = shutil.disk_usage(_existing(root)).free
    metric = metric_cache_bytes(profile)
    metric_note = (
        f", of which the metric-learning regions of SfM-120k {metric / 1e9:.1f} GB at most, "
        "twice that while their shards are assembled"
        if metric
        else ""
    )
    n_files, total_fetch, total_extract = profile_download_bytes(profile, root)
    checks.append(
        Check(
            "downloads",
            True,
            f"profile {profile.name} downloads {n_files} files, about {total_fetch / 1e9:.1f} GB "
            f"({total_extract / 1e9:.1f} GB extracted) by the manifest's estimates; "
            f"{fetch / 1e9:.1f} GB of it still to fetch",
            required=False,
        )
    )
    checks.append(
        Check(
            "disk space",
            free >= need,
            (
                f"{free / 1e9:.1f} GB free at {root}; {need / 1e9:.1f} GB needed for what is missing "
                f"(downloads {fetch / 1e9:.1f} GB, extracted {extract / 1e9:.1f} GB, descriptor caches "
                f"{caches / 1e9:.1f} GB{metric_note}; sizes from the manifest's approx_bytes)"
            ),
        )
    )
    checks.append(memory_check(profile))
    checks.append(time_estimate(profile, fetch))
    imagenet = root / "train" / "imagenet"
    has_imagenet = (imagenet / "train").is_dir() and (imagenet / "val").is_dir()
    trains = profile.train.source == "train" and profile.train.train_set == "imagenet"
    if profile.train.train_set is None:  # trains nothing (paper-quick)
        return checks
    checks.append(
        Check(
            "ImageNet (ILSVRC-2012) for training",
            has_imagenet,
            f"{'present' if has_imagenet else 'absent'} at {imagenet}/{{train,val}}/<wnid>/*.JPEG"
            + (
                ""
                if has_imagenet
                else "; only needed to train the regional-only attention (register at image-net.org)"
            ),
            required=train_imagenet or trains,
        )
    )
    return checks


def profile_download_bytes(profile: Profile, root: Path | None = None) -> tuple[int, int, int]:
    """(files, download bytes, extracted bytes) of everything ``profile`` downloads from an empty
    data root, by the manifest's own estimates (``approx_bytes`` / ``extracted_bytes``); the
    distractor archives as ``distractor_plan`` counts them."""
    from regattn_lib.datasets.manifest import load_manifest

    files = load_manifest()
    root = Path(root) if root is not None else Path("/nonexistent-data-root")
    dkeys = distractor_plan(profile, root)[0] if profile.distractors else []
    keys = profile_keys(profile) + dkeys
    fetch = sum(int(files[k].get("approx_bytes") or files[k].get("size") or 0) for k in keys)
    extract = sum(int(files[k].get("extracted_bytes") or 0) for k in keys)
    return len(keys), fetch, extract


def backbone_passes(profile: Profile) -> tuple[float, str]:
    """Rough number of test-size backbone passes of the whole series (images x passes, a
    whitening image counted by its area against a test image) and how it was counted.

    Test sets: one pass for every head of the series (``studies.describe_series``: the regional
    heads, the global baselines and the whitening table's), the RPN's share of it on the classic
    sets (``RPN_PASS_COST`` - 1);
    distractors: one pass; whitening: two passes (the regional vectors, then the baselines'
    global ones) over the whitening images at their size; SfM-120k's metric-learning images
    (``metric_cache_images``) one pass. Training is estimated by notebook 02.
    """
    test = sum(
        TEST_SET_IMAGES.get(n, 0) for n in dict.fromkeys(profile.datasets + profile.revisited)
    )
    classic = sum(TEST_SET_IMAGES.get(n, 0) for n in profile.datasets)
    distractors = (profile.n_distractors or 0) if profile.distractors else 0
    if profile.whitening_set == "crosswise":
        partners = {b for _, b in profile.whitening_partners}
        white, what = sum(TEST_SET_IMAGES.get(n, 0) for n in partners), "crosswise"
    elif profile.whitening_set in ("sfm120k", "retrieval-SfM-120k"):
        white, what = SFM120K_WHITEN_IMAGES, "SfM-120k"
    else:
        white, what = 0, profile.whitening_set
    area = (profile.whitening_image_size / profile.image_size) ** 2
    metric = metric_cache_images(profile)
    passes = test + classic * (RPN_PASS_COST - 1) + distractors + 2 * white * area + metric
    detail = (
        f"{test:,} test images ({classic:,} of them with the RPN), {distractors:,} distractors, "
        f"2 x {white:,} whitening images ({what}) at {profile.whitening_image_size} px"
    )
    if metric:
        detail += f", {metric:,} SfM-120k images for metric learning at {profile.image_size} px"
    return passes, detail


def time_estimate(profile: Profile, fetch_bytes: int) -> Check:
    """A rough wall time for the downloads still to do and the backbone passes (a note, never
    required), from ``ASSUMED_IMAGES_PER_S`` / ``ASSUMED_DOWNLOAD_BYTES_PER_S`` or the
    ``$REGATTN_IMAGES_PER_S`` / ``$REGATTN_DOWNLOAD_MBPS`` the user measured."""
    ips = env_number("REGATTN_IMAGES_PER_S", ASSUMED_IMAGES_PER_S, float) or ASSUMED_IMAGES_PER_S
    mbps = ASSUMED_DOWNLOAD_BYTES_PER_S / 1e6
    bps = (env_number("REGATTN_DOWNLOAD_MBPS", mbps, float) or mbps) * 1e6  # 0: the assumption
    passes, detail = backbone_passes(profile)
    compute = passes / ips
    download = fetch_bytes / bps
    train = ""
    if profile.train.train_set is not None:
        train = "; plus the training of notebook 02 when its set is present (it states its own)"
    return Check(
        "time estimate",
        True,
        f"about {(compute + download) / 60:.0f} min on one GPU: downloads {download / 60:.0f} min "
        f"at {bps / 1e6:.0f} MB/s, backbone ~{passes:,.0f} image passes at {ips:g} img/s "
        f"({compute / 60:.0f} min; {detail}); speeds assumed, not measured: set "
        f"REGATTN_IMAGES_PER_S / REGATTN_DOWNLOAD_MBPS to yours{train}",
        required=False,
    )


def paper_checks(
    data_root: Path,
    device: str,
    train_imagenet: bool,
    network: bool = True,
    import_from: Sequence[Path] | None = None,
) -> list[Check]:
    """The device check and ``profile_checks`` of the paper profile."""
    return [device_check(device)] + profile_checks(
        get_profile("paper"), data_root, train_imagenet, network, import_from
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--train-imagenet", action="store_true")
    ap.add_argument(
        "--overrides",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML/JSON profile overrides, as run_all.sh --overrides",
    )
    ap.add_argument("--no-network", action="store_true", help="do not probe the download URLs")
    ap.add_argument(
        "--import-from",
        action="append",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder holding files obtained another way, copied in when verified (repeatable; "
        f"default ${IMPORT_ENV}, {os.pathsep!r}-separated)",
    )
    args = ap.parse_args(argv)
    if args.import_from is None:
        env = os.environ.get(IMPORT_ENV, "")
        args.import_from = [Path(p) for p in env.split(os.pathsep) if p]
    overrides = load_overrides(args.overrides) if args.overrides is not None else None
    profile = get_profile(args.profile, overrides)
    device = device_check(args.device)
    if not device.ok:  # one line, before anything else, for every profile
        print(f"[preflight] {device.detail}", file=sys.stderr)
        return 1
    if not profile.download:
        print(
            f"[preflight] profile {profile.name}: offline, nothing to download; "
            f"device {device.detail}"
        )
        return 0
    checks = [device] + profile_checks(
        profile,
        resolve_data_root(args.data_root),
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
