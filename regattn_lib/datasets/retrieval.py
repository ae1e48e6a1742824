"""Retrieval test sets in cirtorch's layout, distractors, user folders and whitening images.

Layout (``<data_root>`` as in ``paths.data_root``)::

    <data_root>/test/<name>/gnd_<name>.pkl     imlist, qimlist, gnd (spec section 4)
    <data_root>/test/<name>/jpg/<image>.jpg    (roxford5k / rparis6k fall back to the jpg/ of
                                                oxford5k / paris6k: the same photos)
    <data_root>/distractors/revisitop1m/{revisitop1m.txt, jpg/}
    <data_root>/distractors/flickr100k/**/*.jpg  a local copy of Flickr100k (no longer published);
                                                with distractors="auto" it is used when present,
                                                else revisitop1m's first images stand in
    <data_root>/train/retrieval-SfM-120k/{ims/, retrieval-SfM-120k*.pkl}
    <data_root>/train/<name>/jpg/              any other whitening set
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regattn_lib.core.evaluate import protocol_gnd, supported_protocols
from regattn_lib.datasets import downloads as dl
from regattn_lib.datasets.archives import done_marker, extract_archive
from regattn_lib.datasets.imagenet import IMAGE_EXTENSIONS, list_images
from regattn_lib.datasets.manifest import manifest_entry
from regattn_lib.datasets.safe_pickle import safe_load_pickle
from regattn_lib.runtime.paths import data_root as resolve_data_root

#: The 20 Paris6k images the authors' code leaves out (corrupt files), spec section 5.
PARIS_BLACKLIST = (
    "paris_louvre_000136",
    "paris_louvre_000146",
    "paris_moulinrouge_000422",
    "paris_museedorsay_001059",
    "paris_notredame_000188",
    "paris_pantheon_000284",
    "paris_pantheon_000960",
    "paris_pantheon_000974",
    "paris_pompidou_000195",
    "paris_pompidou_000196",
    "paris_pompidou_000201",
    "paris_pompidou_000467",
    "paris_pompidou_000640",
    "paris_sacrecoeur_000299",
    "paris_sacrecoeur_000330",
    "paris_sacrecoeur_000353",
    "paris_triomphe_000662",
    "paris_triomphe_000833",
    "paris_triomphe_000863",
    "paris_triomphe_000867",
)
#: Downloadable sets -> the set whose jpg/ holds their photos (revisited sets reuse them).
IMAGE_HOME = {
    "oxford5k": "oxford5k",
    "roxford5k": "oxford5k",
    "paris6k": "paris6k",
    "rparis6k": "paris6k",
}
#: Manifest keys of each photo collection's archives.
IMAGE_ARCHIVES = {
    "oxford5k": ("images_oxford5k",),
    "paris6k": ("images_paris6k_1", "images_paris6k_2"),
}
#: Ground-truth keys holding database indices (remapped when images are removed).
INDEX_KEYS = ("ok", "good", "junk", "easy", "hard")
#: Suffixes accepted by ``load_folder_dataset`` (case-insensitive).
FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SFM_NAME = "retrieval-SfM-120k"
#: Distractor sets ``add_distractors`` accepts; "auto" picks Flickr100k's local copy if present.
DISTRACTOR_SETS = ("auto", "flickr100k", "revisitop1m")


@dataclass
class RetrievalDataset:
    """A retrieval benchmark: database and query image lists plus per-query ground truth.

    Attributes
    ----------
    name: dataset name, e.g. ``'roxford5k'``.
    root: folder holding ``gnd_<name>.pkl`` (and usually ``jpg/``).
    imlist, qimlist: database / query image names, without ``ext``.
    gnd: one dict per query (``bbx`` and 'ok' and/or 'easy', 'hard', 'junk'); empty when
        there is no ground truth (a user folder).
    kind: 'classic', 'revisited', 'both' (synthetic sets carry both) or 'none'.
    ext: suffix added to database names (default '.jpg'; '' when names carry it).
    image_dir: folder the names are relative to (default ``root / 'jpg'``).
    distractors: extra database images appended after ``imlist`` (indices continue).
    excluded: names removed from the original list (e.g. the Paris blacklist).
    notes: remarks to carry into result tables (e.g. a distractor stand-in).
    qbbxs: query boxes [x1, y1, x2, y2] or None; default: the ``bbx`` of each ``gnd`` entry.
    distractor_source: label of the distractor set, ``None`` without distractors.
    """

    name: str
    root: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, Any]]
    kind: str = "classic"
    ext: str = ".jpg"
    image_dir: Path | None = None
    distractors: list[Path] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    qbbxs: list[list[float] | None] | None = None
    distractor_source: str | None = None

    @property
    def images_dir(self) -> Path:
        return self.image_dir if self.image_dir is not None else self.root / "jpg"

    @property
    def db_paths(self) -> list[Path]:
        """Database image paths: ``imlist`` then the distractors."""
        d = self.images_dir
        return [d / f"{n}{self.ext}" for n in self.imlist] + list(self.distractors)

    @property
    def query_paths(self) -> list[Path]:
        d = self.images_dir
        return [d / f"{n}{self.ext}" for n in self.qimlist]

    @property
    def query_bbxs(self) -> list[list[float] | None]:
        """One [x1, y1, x2, y2] (original pixels) per query, ``None`` for an uncropped query."""
        if self.qbbxs is not None:
            return list(self.qbbxs)
        return [_bbx(g.get("bbx")) for g in self.gnd]

    @property
    def n_db(self) -> int:
        return len(self.imlist) + len(self.distractors)

    @property
    def n_queries(self) -> int:
        return len(self.qimlist)

    @property
    def protocols(self) -> list[str]:
        """Evaluation protocols the ground truth supports."""
        return supported_protocols(self.gnd)

    @property
    def label(self) -> str:
        """Name for tables, e.g. ``'roxford5k+revisitop1m[:100000]'``."""
        return self.name + (f"+{self.distractor_source}" if self.distractor_source else "")

    def gnd_for(self, protocol: str) -> list[dict[str, list[int]]]:
        """``{'ok', 'junk'}`` ground truth of 'classic', 'easy', 'medium' or 'hard'."""
        if protocol not in self.protocols:
            raise ValueError(
                f"{self.name}: protocol {protocol!r} not available (supported: {self.protocols})"
            )
        return protocol_gnd(self.gnd, protocol)


def _bbx(v: Any) -> list[float] | None:
    return None if v is None else [float(x) for x in v]


def _normalise_gnd(gnd: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Index lists as plain int lists and boxes as float lists (pickles may hold numpy)."""
    out = []
    for g in gnd:
        h = dict(g)
        for k in INDEX_KEYS:
            if k in h and h[k] is not None:
                h[k] = [int(i) for i in h[k]]
        if h.get("bbx") is not None:
            h["bbx"] = _bbx(h["bbx"])
        out.append(h)
    return out


def gnd_kind(gnd: Sequence[dict[str, Any]]) -> str:
    """'classic', 'revisited', 'both' or 'none' from the keys the ground truth carries."""
    p = supported_protocols(gnd)
    if "classic" in p and "hard" in p:
        return "both"
    return "classic" if "classic" in p else "revisited" if "hard" in p else "none"


def remove_images(
    imlist: Sequence[str], gnd: Sequence[dict[str, Any]], names: Iterable[str]
) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Drop ``names`` from ``imlist`` and renumber every index list of ``gnd`` accordingly.

    Indices of removed images disappear from the lists. Returns ``(imlist, gnd, removed)``
    where ``removed`` are the names actually found (in ``imlist`` order).
    """
    drop = set(names)
    new_index: dict[int, int] = {}
    kept: list[str] = []
    removed: list[str] = []
    for i, n in enumerate(imlist):
        if n in drop:
            removed.append(n)
        else:
            new_index[i] = len(kept)
            kept.append(n)
    out = []
    for g in gnd:
        h = dict(g)
        for k in INDEX_KEYS:
            if k in h and h[k] is not None:
                h[k] = [new_index[int(i)] for i in h[k] if int(i) in new_index]
        out.append(h)
    return kept, out, removed


# --- the standard sets -------------------------------------------------------------------------


def _how_to_get(name: str, root: Path) -> str:
    """The URLs and destinations of everything ``name`` needs."""
    g = manifest_entry(f"gnd_{name}")
    lines = [f"  {g['url']}\n    -> {root / g['dest']}"]
    home = IMAGE_HOME[name]
    for key in IMAGE_ARCHIVES[home]:
        e = manifest_entry(key)
        lines.append(f"  {e['url']}\n    -> extract its images flat into {root / e['extract_to']}/")
    return "\n".join(lines)


def _fetch_images(home: str, root: Path) -> None:
    for key in IMAGE_ARCHIVES[home]:
        e = manifest_entry(key)
        archive = dl.download_entry(key, root)
        extract_archive(archive, root / e["extract_to"], flatten=True)


def _missing(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if not p.is_file()]


def _missing_images_message(ds: RetrievalDataset, missing: list[Path], how: str) -> str:
    shown = "\n".join(f"  {p}" for p in missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (
        f"{ds.name}: {len(missing)} of {ds.n_db + ds.n_queries} images are missing from "
        f"{ds.images_dir}:\n{shown}{more}\n{how}"
    )


def load_retrieval_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    check_images: bool = True,
) -> RetrievalDataset:
    """Load a test set: 'oxford5k', 'paris6k', 'roxford5k', 'rparis6k' or a local folder.

    Parameters
    ----------
    name:
        A standard set, or any ``<data_root>/test/<name>/`` holding ``gnd_<name>.pkl`` and
        ``jpg/`` (e.g. the synthetic sets).
    data_root:
        Default ``paths.data_root()``.
    download:
        Fetch missing files of a standard set (gnd pickle; image archives extracted to
        ``test/oxford5k/jpg`` or ``test/paris6k/jpg``). Default False: raise
        ``FileNotFoundError`` listing the URLs and where to put them.
    check_images:
        Check that every database and query image exists (default True).

    For paris6k the 20 blacklisted images are removed from ``imlist`` and every index list of
    the ground truth is renumbered. The pickle is checked against the lock file (when recorded)
    and read with a restricted unpickler.
    """
    root_data = resolve_data_root(data_root)
    root = root_data / "test" / name
    gnd_path = root / f"gnd_{name}.pkl"
    standard = name in IMAGE_HOME
    if not gnd_path.is_file():
        if standard and download:
            dl.download_entry(f"gnd_{name}", root_data)
        elif standard:
            raise FileNotFoundError(
                f"{name}: ground truth {gnd_path} not found. Download (download=True) or fetch "
                f"by hand:\n{_how_to_get(name, root_data)}"
            )
        else:
            raise FileNotFoundError(
                f"no dataset {name!r}: expected {gnd_path} (a pickle with imlist, qimlist, gnd) "
                f"and images in {root / 'jpg'}/; downloadable sets: {', '.join(IMAGE_HOME)}"
            )
    sha = manifest_entry(f"gnd_{name}").get("sha256") if standard else None
    cfg = safe_load_pickle(gnd_path, expected_sha256=sha, lock_file=root_data / dl.LOCK_NAME)
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise ValueError(f"{gnd_path}: expected a dict with imlist, qimlist and gnd")
    imlist = [str(n) for n in cfg["imlist"]]
    qimlist = [str(n) for n in cfg["qimlist"]]
    gnd = _normalise_gnd(cfg["gnd"])
    if len(gnd) != len(qimlist):
        raise ValueError(f"{gnd_path}: {len(qimlist)} queries but {len(gnd)} gnd entries")
    excluded: list[str] = []
    if name == "paris6k":
        imlist, gnd, excluded = remove_images(imlist, gnd, PARIS_BLACKLIST)
    image_dir = root / "jpg"
    if standard and not image_dir.is_dir():
        image_dir = root_data / "test" / IMAGE_HOME[name] / "jpg"
    ds = RetrievalDataset(
        name=name,
        root=root,
        imlist=imlist,
        qimlist=qimlist,
        gnd=gnd,
        kind=gnd_kind(gnd),
        image_dir=image_dir,
        excluded=excluded,
    )
    if check_images:
        missing = _missing(ds.db_paths + ds.query_paths)
        if missing and standard and download:
            _fetch_images(IMAGE_HOME[name], root_data)
            missing = _missing(ds.db_paths + ds.query_paths)
        if missing:
            how = (
                f"Download (download=True) or fetch by hand:\n{_how_to_get(name, root_data)}"
                if standard
                else f"put the images of {gnd_path.name} in {ds.images_dir}/"
            )
            raise FileNotFoundError(_missing_images_message(ds, missing, how))
    return ds


# --- distractors -------------------------------------------------------------------------------


def _revisitop1m(base: Path, root: Path, n: int | None, download: bool) -> list[Path]:
    list_file = base / "revisitop1m.txt"
    entry = manifest_entry("revisitop1m_list")
    if not list_file.is_file():
        if not download:
            raise FileNotFoundError(
                f"revisitop1m list not found: {list_file}\n  {entry['url']}\n    -> {list_file}\n"
                "then the image archives (download=True fetches only those needed):\n"
                f"  {manifest_entry('revisitop1m_tar_001')['url'].replace('.1.', '.{1..100}.')}"
                f"\n    -> extract into {base / 'jpg'}/"
            )
        dl.download_entry("revisitop1m_list", root)
    names = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
    if n is not None:
        if n > len(names):
            raise ValueError(f"asked for {n} distractors but {list_file} lists {len(names)}")
        names = names[:n]
    paths = [base / "jpg" / nm for nm in names]
    missing = set(_missing(paths))
    # The list order need not follow the archives: fetch archives until all wanted images exist,
    # deleting each archive once extracted (the full set is hundreds of GB).
    i = 1
    while missing and download and i <= 100:
        key = f"revisitop1m_tar_{i:03d}"
        if not done_marker(root / manifest_entry(key)["dest"], base / "jpg").exists():
            arc = dl.download_entry(key, root)
            extract_archive(arc, base / "jpg")
            arc.unlink()
            missing = {p for p in missing if not p.is_file()}
        i += 1
    if missing:
        example = sorted(missing)[:3]
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} revisitop1m distractors are missing, e.g. "
            f"{', '.join(map(str, example))}; extract the archives "
            f"{manifest_entry('revisitop1m_tar_001')['url'].replace('.1.', '.{1..100}.')} "
            f"into {base / 'jpg'}/ (or pass download=True)"
        )
    return paths


def flickr100k_dir(data_root: str | os.PathLike | None = None) -> Path:
    """``<data_root>/distractors/flickr100k/``: where a local copy of Flickr100k goes (any
    image files, in any sub-folders); the set is no longer distributed."""
    return resolve_data_root(data_root) / "distractors" / "flickr100k"


def has_images(folder: Path) -> bool:
    """Whether ``folder`` holds at least one image file (recursive, hidden entries skipped)."""
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(
            not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            for f in filenames
        ):
            return True
    return False


def resolve_distractors(name: str, data_root: str | os.PathLike | None = None) -> str:
    """The distractor set ``name`` stands for: ``'auto'`` is ``'flickr100k'`` when a local copy
    exists at ``flickr100k_dir(data_root)`` (any image file, recursive), else
    ``'revisitop1m'`` (whose first ``n`` images then stand in for Flickr100k); other names are
    returned unchanged. Raises ``ValueError`` for a name not in ``DISTRACTOR_SETS``."""
    if name not in DISTRACTOR_SETS:
        raise ValueError(f"unknown distractor set {name!r}; use one of {DISTRACTOR_SETS}")
    if name != "auto":
        return name
    folder = flickr100k_dir(data_root)
    return "flickr100k" if folder.is_dir() and has_images(folder) else "revisitop1m"


def add_distractors(
    dataset: RetrievalDataset,
    name: str = "revisitop1m",
    n: int | None = None,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
) -> RetrievalDataset:
    """A copy of ``dataset`` with distractor images appended to its database.

    Parameters
    ----------
    dataset:
        The test set; it is not modified.
    name:
        ``'flickr100k'``: a local copy only, at ``<data_root>/distractors/flickr100k/`` (any
        image files, recursive, sorted; it is no longer distributed). ``'revisitop1m'``: the
        names of ``<data_root>/distractors/revisitop1m/revisitop1m.txt``, images in its
        ``jpg/``; with ``n`` it stands in for Flickr100k, which ``notes`` records. ``'auto'``
        (the paper's +100k): the Flickr100k copy when present, else the first ``n``
        revisitop1m images (``resolve_distractors``). ``distractor_source`` and ``notes`` say
        which set was used.
    n:
        Keep the first ``n`` distractors (default all).
    data_root:
        Default ``paths.data_root()``.
    download:
        revisitop1m only: fetch the list and as many image archives as needed (default False).
    """
    root = resolve_data_root(data_root)
    chosen = resolve_distractors(name, root)
    base = root / "distractors" / chosen
    notes = list(dataset.notes)
    if chosen == "flickr100k":
        paths = list_images(base) if base.is_dir() else []
        if not paths:
            raise FileNotFoundError(
                f"no Flickr100k images in {base}/: the set is no longer distributed, so only a "
                "local copy can be used. Put the images there, or use "
                "add_distractors(ds, 'revisitop1m', n=100_000) as a stand-in (and say so), or "
                "'auto' to take the local copy when present and the stand-in otherwise."
            )
        if n is not None:
            paths = paths[:n]
        head = f"flickr100k[:{n}]" if n is not None else "flickr100k"
        source = f"{head} (local copy at {base})"
        short = f", fewer than the {n} asked" if n is not None and len(paths) < n else ""
        notes.append(
            f"distractors: {len(paths)} Flickr100k images from the local copy at {base}{short}"
        )
    else:
        paths = _revisitop1m(base, root, n, download)
        source = f"revisitop1m[:{n}]" if n is not None else "revisitop1m"
        if name == "auto":
            source += " standing in for Flickr100k"
            notes.append(
                f"distractors: the first {len(paths)} revisitop1m images stand in for Flickr100k, "
                f"which is no longer distributed (no local copy at {flickr100k_dir(root)})"
            )
        elif n is not None:
            notes.append(
                f"distractors: the first {len(paths)} revisitop1m images stand in for "
                "Flickr100k, which is no longer distributed"
            )
    prev = dataset.distractor_source
    return dataclasses.replace(
        dataset,
        distractors=list(dataset.distractors) + paths,
        notes=notes,
        distractor_source=f"{prev}+{source}" if prev else source,
    )


# --- user folders ------------------------------------------------------------------------------


def parse_queries_file(
    path: str | os.PathLike, folder: str | os.PathLike
) -> tuple[list[str], list[list[float] | None]]:
    """Read lines ``<image path relative to folder> [x1 y1 x2 y2]``.

    Blank lines and lines starting with ``#`` are skipped; paths cannot contain spaces. Raises
    ``ValueError`` naming the file and line number for a malformed line, a bad box or an image
    that does not exist.
    """
    path, folder = Path(path), Path(folder)
    names: list[str] = []
    boxes: list[list[float] | None] = []
    for no, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tok = line.split()
        where = f"{path}, line {no}"
        if len(tok) not in (1, 5):
            raise ValueError(
                f"{where}: expected '<image> [x1 y1 x2 y2]', got {len(tok)} fields: {line!r}"
            )
        box = None
        if len(tok) == 5:
            try:
                box = [float(v) for v in tok[1:]]
            except ValueError:
                raise ValueError(f"{where}: box coordinates must be numbers: {line!r}") from None
            if not (box[2] > box[0] and box[3] > box[1]):
                raise ValueError(f"{where}: empty box, need x2 > x1 and y2 > y1: {line!r}")
        if not (folder / tok[0]).is_file():
            raise ValueError(f"{where}: image {tok[0]!r} not found in {folder}")
        names.append(tok[0])
        boxes.append(box)
    return names, boxes


def load_folder_dataset(
    folder: str | os.PathLike,
    queries_file: str | os.PathLike | None = None,
    name: str | None = None,
) -> RetrievalDataset:
    """A database made of every image under ``folder`` (jpg/jpeg/png/webp, recursive, hidden
    files skipped, sorted), with optional queries from ``queries_file`` (see
    ``parse_queries_file``). There is no ground truth: search works, evaluation does not.
    ``name`` defaults to the folder name."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    images = list_images(folder, FOLDER_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"no {'/'.join(FOLDER_EXTENSIONS)} images under {folder}")
    qnames: list[str] = []
    boxes: list[list[float] | None] = []
    if queries_file is not None:
        qnames, boxes = parse_queries_file(queries_file, folder)
    return RetrievalDataset(
        name=name or folder.name,
        root=folder,
        imlist=[p.relative_to(folder).as_posix() for p in images],
        qimlist=qnames,
        gnd=[],
        kind="none",
        ext="",
        image_dir=folder,
        qbbxs=boxes,
    )


# --- whitening images --------------------------------------------------------------------------


def cid2filename(cid: str, ims_root: str | os.PathLike) -> Path:
    """cirtorch's image path of a SfM-120k id: ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``."""
    return Path(ims_root) / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


def _sfm120k(root: Path, split: str, download: bool) -> list[Path]:
    base = root / "train" / SFM_NAME
    if split == "whiten":
        key, pkl = f"sfm_db_{SFM_NAME}-whiten", base / f"{SFM_NAME}-whiten.pkl"
    elif split in ("train", "val"):
        key, pkl = f"sfm_db_{SFM_NAME}", base / f"{SFM_NAME}.pkl"
    else:
        raise ValueError(f"SfM-120k split must be 'whiten', 'train' or 'val', not {split!r}")
    ims = base / "ims"
    ims_entry = manifest_entry("sfm120k_ims")
    how = (
        f"Download (download=True) or fetch by hand:\n  {manifest_entry(key)['url']}\n"
        f"    -> {pkl}\n  {ims_entry['url']}\n    -> extract into {ims}/"
    )
    if not pkl.is_file():
        if not download:
            raise FileNotFoundError(f"SfM-120k database {pkl} not found. {how}")
        dl.download_entry(key, root)
    db = safe_load_pickle(pkl, lock_file=root / dl.LOCK_NAME)
    cids = db["cids"] if split == "whiten" else db[split]["cids"]
    paths = [cid2filename(str(c), ims) for c in cids]
    missing = _missing(paths)
    if missing and download:
        extract_archive(dl.download_entry("sfm120k_ims", root), ims)
        missing = _missing(paths)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} SfM-120k images missing, e.g. {missing[0]}. {how}"
        )
    return paths


def whitening_images(
    name: str,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    folder: str | os.PathLike | None = None,
    split: str = "whiten",
) -> list[Path]:
    """Images to learn the PCA-whitening from.

    Parameters
    ----------
    name:
        ``'sfm120k'`` (or ``'retrieval-SfM-120k'``): cirtorch's SfM-120k, the substitute the
        authors endorse for their Landmarks PCA set; ``'landmarks'``: a user-supplied folder
        (``folder``), since the Landmarks URL lists have decayed; any other name: the images
        under ``<data_root>/train/<name>/jpg/`` (e.g. ``'synthetic-smoke-whiten'``).
    data_root:
        Default ``paths.data_root()``.
    download:
        SfM-120k only: fetch the database pickle and the image archive (default False).
    folder:
        The image folder for ``'landmarks'``.
    split:
        SfM-120k only. ``'whiten'`` (default): the ``cids`` of ``retrieval-SfM-120k-whiten.pkl``,
        the list cirtorch learns its whitening on; ``'train'`` / ``'val'``: that split of
        ``retrieval-SfM-120k.pkl``.

    Returns sorted image paths (SfM-120k: in the pickle's order).
    """
    root = resolve_data_root(data_root)
    if name in ("sfm120k", SFM_NAME):
        return _sfm120k(root, split, download)
    if name == "landmarks":
        if folder is None:
            raise FileNotFoundError(
                "the Landmarks whitening set is not downloadable (its URL lists have decayed): "
                "pass folder=<a folder of Landmarks images>, or use 'sfm120k'"
            )
        src = Path(folder)
    else:
        src = Path(folder) if folder is not None else root / "train" / name / "jpg"
    images = list_images(src) if src.is_dir() else []
    if not images:
        raise FileNotFoundError(
            f"no whitening images for {name!r} in {src}/ (expected image files there; "
            "'sfm120k' can be downloaded)"
        )
    return images
