"""The Train tab's Multi30k data: the local folder (``$NMT_DATA``), else the public copy on the Hub.

:func:`multi30k_folder` returns a folder holding ``train.{src,tgt}.gz`` and ``val.{src,tgt}.gz`` for a
direction: the local folder when it has them; otherwise, unless offline (``HF_HUB_OFFLINE=1``), the public
dataset ``bentrevett/multi30k`` (English and German only) downloaded once with ``huggingface_hub`` and
converted into that layout in a cache of its own (``$NMT_HUB_DATA_DIR``, default ``~/.cache/nmt-app/data``)::

    <cache>/hub/                    huggingface_hub's download cache (train.jsonl, val.jsonl)
    <cache>/multi30k-hub/           train.{de,en}.gz, val.{de,en}.gz, source.json (repo, commit)

The repo's file list is read first and a file over :data:`MAX_FILE_BYTES` is refused before anything is
downloaded; the commit that was checked is the one downloaded. Every line must be a JSON object with
non-empty string ``"en"`` and ``"de"`` of at most :data:`MAX_CHARS` characters (whitespace, line breaks
included, is collapsed to single spaces, so the converted files stay line-aligned); a bad line is a
:class:`~nmt.errors.DataError` naming the file and line. The converted folder is written to a temporary
folder and renamed into place, so it is complete or absent, and reused next time without the network.
Thread-safe: concurrent callers (two visitors starting jobs at once) download once.

Like :mod:`nmt.hub`, this imports neither torch nor the rest of ``nmt`` (huggingface_hub only when a
download is needed); the usual Hub variables apply (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from nmt.errors import DataError

logger = logging.getLogger(__name__)

DATA_ENV, CACHE_ENV = "NMT_DATA", "NMT_HUB_DATA_DIR"
DEFAULT_CACHE = Path("~/.cache/nmt-app/data")
DATASET = "bentrevett/multi30k"
HUB_LANGUAGES = ("de", "en")  # the Hub copy has no French
SPLITS = {"train": "train.jsonl", "val": "val.jsonl"}  # local split name -> file in the dataset repo
MAX_FILE_BYTES = 64 * 2**20  # the real train.jsonl is about 4.6 MB
MAX_CHARS = 1000  # per sentence (Multi30k's longest are about 300)
FOLDER_NAME = "multi30k-hub"

_LOCK = threading.Lock()


def cache_dir() -> Path:
    """``$NMT_HUB_DATA_DIR``, else ``~/.cache/nmt-app/data``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def missing_files(folder: Path, src: str, tgt: str) -> list[str]:
    """The files of the direction ``src``-``tgt`` that ``folder`` lacks (``[]``: it is usable)."""
    return [f"{split}.{lang}.gz" for split in SPLITS for lang in (src, tgt)
            if not (Path(folder) / f"{split}.{lang}.gz").is_file()]


def multi30k_folder(src: str, tgt: str, local: str | Path | None = None, cache: str | Path | None = None,
                    download: bool = True) -> Path:
    """A folder with ``train.{src,tgt}.gz`` and ``val.{src,tgt}.gz``: ``local`` (default ``$NMT_DATA``) when it
    has them, else the Hub copy (cached in ``cache``, default :func:`cache_dir`), downloaded if needed.

    ``download=False`` only checks that the data could be had: it returns the local folder or the cached
    copy, and raises for what a download could not fix (offline, a French direction); for a Hub copy not yet
    downloaded it returns the folder it will be in. Raises :class:`DataError` with a message for the user.
    """
    local = Path(local if local is not None else os.environ.get(DATA_ENV) or _default_local()).expanduser()
    missing = missing_files(local, src, tgt)
    if not missing:
        return local
    where = (f"Training needs the Multi30k data, and {', '.join(missing)} "
             f"{'is' if len(missing) == 1 else 'are'} not in {local}")
    unsupported = sorted({src, tgt} - set(HUB_LANGUAGES))
    if unsupported:
        raise DataError(f"{where}. The public copy on the Hugging Face Hub ({DATASET}) has English and German "
                        f"only (no {', '.join(unsupported)}): set {DATA_ENV} to the folder holding "
                        "train.{de,en,fr}.gz and val.{de,en,fr}.gz.")
    target = Path(cache if cache is not None else cache_dir()).expanduser() / FOLDER_NAME
    if not missing_files(target, src, tgt):
        return target
    if _offline():
        raise DataError(f"{where}, and offline (HF_HUB_OFFLINE=1) the public copy ({DATASET} on the Hugging Face "
                        f"Hub) cannot be downloaded: set {DATA_ENV} to the folder holding train.{{de,en,fr}}.gz "
                        "and val.{de,en,fr}.gz, or start the app online once.")
    if not download:
        return target
    with _LOCK:  # a second caller waits, then finds the folder the first one wrote
        if missing_files(target, src, tgt):
            _download(target, where)
    return target


def _default_local() -> Path:
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "multi30k"  # = catalog.DEFAULT_DATA


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _download(target: Path, where: str) -> None:
    """Download the dataset's files (sizes checked first), convert them, rename the result to ``target``."""
    import httpx2
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    root = target.parent
    try:
        api = HfApi()
        commit = api.dataset_info(DATASET).sha
        sizes = {entry.path: getattr(entry, "size", 0) or 0
                 for entry in api.list_repo_tree(DATASET, repo_type="dataset", revision=commit, recursive=True)}
        absent = [name for name in SPLITS.values() if name not in sizes]
        if absent:
            raise DataError(f"{where}, and the Hub dataset {DATASET} lacks {', '.join(absent)}.")
        too_big = [f"{name} ({sizes[name]:,} bytes, the limit is {MAX_FILE_BYTES:,})" for name in SPLITS.values()
                   if sizes[name] > MAX_FILE_BYTES]
        if too_big:
            raise DataError(f"{where}, and the Hub dataset {DATASET} was not downloaded: {', '.join(too_big)}.")
        files = {split: Path(hf_hub_download(DATASET, name, repo_type="dataset", revision=commit,
                                             cache_dir=root / "hub"))
                 for split, name in SPLITS.items()}
    except DataError:
        raise
    except RepositoryNotFoundError as exc:
        raise DataError(f"{where}, and the Hub dataset {DATASET} was not found: {exc}") from exc
    except (OfflineModeIsEnabled, httpx2.TransportError) as exc:
        raise DataError(f"{where}, and the Hugging Face Hub cannot be reached to download {DATASET} ({exc}): set "
                        f"{DATA_ENV} to the folder holding train.{{de,en,fr}}.gz and val.{{de,en,fr}}.gz.") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise DataError(f"{where}, and downloading {DATASET} from the Hugging Face Hub failed: "
                        f"{type(exc).__name__}: {exc}") from exc

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=root))
    try:
        for split, path in files.items():
            count = convert(path, tmp, split)
            logger.info("converted %s %s: %d pairs", DATASET, path.name, count)
        (tmp / "source.json").write_text(json.dumps({"repo": DATASET, "repo_type": "dataset", "commit": commit}))
        if target.exists():  # an incomplete leftover (another process writes complete folders only)
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if missing_files(target, *HUB_LANGUAGES):  # not another process's complete copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(path: Path, folder: Path, split: str) -> int:
    """``path`` (JSON lines ``{"en": ..., "de": ...}``) into ``folder/{split}.de.gz`` and ``{split}.en.gz``;
    returns the number of pairs. A bad line raises a DataError naming it (``folder`` then holds partial files)."""
    count = 0
    with contextlib.ExitStack() as stack:
        outs = {lang: stack.enter_context(gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8"))
                for lang in HUB_LANGUAGES}
        try:
            lines = stack.enter_context(open(path, encoding="utf-8"))
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                pair = _pair(line, number, path.name)
                for lang in HUB_LANGUAGES:
                    outs[lang].write(pair[lang] + "\n")
                count += 1
        except UnicodeDecodeError as exc:
            raise DataError(f"{DATASET} {path.name} is not UTF-8 text: {exc}") from None
    if not count:
        raise DataError(f"{DATASET} {path.name} holds no sentence pairs")
    return count


def _pair(line: str, number: int, name: str) -> dict[str, str]:
    where = f"{DATASET} {name} line {number}"
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DataError(f"{where} is not a JSON object with \"en\" and \"de\"")
    pair = {}
    for lang in HUB_LANGUAGES:
        text = value.get(lang)
        if not isinstance(text, str):
            raise DataError(f"{where}: \"{lang}\" is {'missing' if text is None else 'not a string'}")
        text = " ".join(text.split())  # no line break may split a sentence in two
        if not text:
            raise DataError(f"{where}: \"{lang}\" is empty")
        if len(text) > MAX_CHARS:
            raise DataError(f"{where}: \"{lang}\" has {len(text):,} characters (the limit is {MAX_CHARS:,})")
        pair[lang] = text
    return pair
