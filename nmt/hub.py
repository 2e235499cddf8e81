"""Checkpoints on the Hugging Face Hub: resolve ``user/name[@revision]`` to a local folder, and push one.

Only safetensors checkpoints travel: downloads are limited to the known checkpoint files (a pickled
``*.bin``/``*.pt``... is never fetched) and pushes upload only those files. Every failure is raised as
a :class:`~nmt.errors.CheckpointError` with a message meant for the user.

This module deliberately imports neither torch nor the rest of ``nmt``. The usual Hub environment
variables apply (read by ``huggingface_hub`` when it is first imported): ``HF_TOKEN`` (private repos,
pushes), ``HF_HOME``/``HF_HUB_CACHE`` (the download cache), ``HF_HUB_OFFLINE=1`` (use the cache only),
``HF_ENDPOINT`` (another Hub).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, scan_cache_dir, snapshot_download
from huggingface_hub.errors import (
    CacheNotFound,
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from nmt.errors import CheckpointError

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors", "src.vocab", "tgt.vocab")
LEXICON_FILE = "lexicon.txt"  # a checkpoint's own lexicon for UNK replacement (config: decode.lexicon)
# Optional: the nearest-training-examples index (python -m nmt index; nmt.serving.neighbors).
INDEX_CONFIG, INDEX_ARRAYS, INDEX_SOURCES, INDEX_TARGETS = INDEX_FILES = (
    "index.json", "index.safetensors", "index.src.txt.gz", "index.tgt.txt.gz")
MASKS_FILE = "masks.safetensors"  # a pruned model's masks (nmt.training.prune)
TRACKED_FILE = "tracked.jsonl"  # a few validation sentences' greedy translation and attention per epoch (nmt.serving.tracked)
CHECKPOINT_FILES = (*REQUIRED_FILES, "metrics.jsonl", TRACKED_FILE, "README.md", LEXICON_FILE, *INDEX_FILES,
                    MASKS_FILE)  # what push uploads
DOWNLOAD_FILES = tuple(f for f in CHECKPOINT_FILES if f != "README.md")  # what loading reads
# A branch, tag or commit id: git's ref characters, without '..', '//', or a leading or trailing '/'.
_REVISION = re.compile(r"[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def parse_repo_ref(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """Split ``user/name@revision`` into ``(repo_id, revision)``, validating the repo id.

    ``revision`` (the argument) is used when ``name`` has no ``@``; giving both, differently, is an error.
    """
    repo_id, at, ref = name.strip().partition("@")
    if at and not ref:
        raise CheckpointError(f"{name!r}: empty revision after '@' (expected 'user/name@revision')")
    if at and revision is not None and revision != ref:
        raise CheckpointError(f"{name!r} names revision {ref!r} but revision={revision!r} was also given")
    if repo_id.count("/") != 1:
        raise CheckpointError(f"{name!r} is neither a local checkpoint folder nor a Hub repo id "
                              "(expected 'user/name' or 'user/name@revision')")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise CheckpointError(f"{name!r} is neither a local checkpoint folder nor a valid Hub repo id: {exc}") from None
    revision = ref if at else revision
    if revision is not None and (not _REVISION.fullmatch(revision) or ".." in revision or len(revision) > 255):
        raise CheckpointError(f"{name!r}: invalid revision {revision!r} (a branch, tag or commit id: letters, "
                              "digits, '.', '_', '-' and '/' between names, no '..')")
    return repo_id, revision


def resolve_checkpoint(name_or_path: str, revision: str | None = None, token: str | None = None,
                       max_bytes: dict[str, int] | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local checkpoint folder for ``name_or_path``: an existing directory, or a Hub repo downloaded to the cache.

    Hub repos are given as ``user/name`` or ``user/name@revision`` (a branch, tag or commit id), or with
    ``revision=``. The repo's file list is checked first: a repo holding a pickled checkpoint instead of
    ``model.safetensors``, or a file larger than its limit in ``max_bytes`` (file name -> bytes), is refused
    before anything is downloaded, and the download is of the commit that was checked. ``token``
    defaults to ``HF_TOKEN`` or the saved login; ``cache_dir`` to the Hub's cache. Offline
    (``HF_HUB_OFFLINE=1``, or the Hub unreachable), the cached copy is used if there is one.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{name_or_path} is a file, not a checkpoint folder")
    if name_or_path.startswith((".", "/", "~")) or path.is_absolute():
        raise CheckpointError(f"checkpoint folder {name_or_path} does not exist")
    repo_id, revision = parse_repo_ref(name_or_path, revision)
    try:
        commit = _check_remote_files(repo_id, revision, token, max_bytes or {})
        folder = Path(snapshot_download(repo_id, revision=commit or revision, allow_patterns=list(DOWNLOAD_FILES),
                                        token=token, cache_dir=cache_dir))
        if commit is not None and revision != commit:
            _remember_ref(folder, revision or constants.DEFAULT_REVISION, commit)
    except (httpx2.HTTPError, OSError, ValueError) as exc:  # Hub errors are OSErrors (HfHubHTTPError, offline...)
        raise _hub_error(exc, repo_id, revision, name_or_path) from exc

    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:  # only reachable from the cache (offline): the online listing checked this already
        raise CheckpointError(f"the cached copy of Hub repo {_where(repo_id, revision)} lacks {', '.join(missing)}")
    return folder


def _remember_ref(snapshot: Path, revision: str, commit: str) -> None:
    """Record in the cache that ``revision`` is ``commit`` (``refs/<revision>``, the cache's documented
    layout), as a download by that name would: the download was of the commit itself, the one whose
    files were checked, so that the repo cannot change between the check and the download."""
    refs = snapshot.parent.parent / "refs" / revision
    refs.parent.mkdir(parents=True, exist_ok=True)
    refs.write_text(commit)


def _where(repo_id: str, revision: str | None) -> str:
    return f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")


def _check_remote_files(repo_id: str, revision: str | None, token: str | None, max_bytes: dict[str, int]) -> str | None:
    """The commit to download, once its files are checked: a repo lacking checkpoint files, or with a
    file over its size limit, is refused. Offline or unreachable, None: the cache decides."""
    if constants.is_offline_mode():
        return None
    where = _where(repo_id, revision)
    api = HfApi(token=token)
    try:
        commit = api.model_info(repo_id, revision=revision).sha
        sizes = {entry.path: getattr(entry, "size", 0) or 0
                 for entry in api.list_repo_tree(repo_id, revision=commit or revision, recursive=True)}
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise
    except (OfflineModeIsEnabled, httpx2.TransportError, HfHubHTTPError) as exc:  # 5xx, unreachable...
        logger.info("cannot list the files of %s (%s); trying the local cache", where, exc)
        return None
    _check_listing(where, sizes, max_bytes)
    return commit


def _check_listing(where: str, sizes: dict[str, int], max_bytes: dict[str, int]) -> None:
    missing = [f for f in REQUIRED_FILES if f not in sizes]
    if missing:
        pickles = sorted(f for f in sizes if f.endswith(PICKLE_SUFFIXES))
        hint = ""
        if pickles:
            hint = (f"; it holds a pickled checkpoint ({', '.join(pickles)}), which nmt never loads "
                    "(pickles can run arbitrary code): only safetensors checkpoints are supported")
        raise CheckpointError(f"Hub repo {where} is not an nmt checkpoint: missing {', '.join(missing)}{hint}")
    too_big = [f"{name} ({sizes[name]:,} bytes, the limit is {max_bytes[name]:,})" for name in DOWNLOAD_FILES
               if name in sizes and name in max_bytes and sizes[name] > max_bytes[name]]
    if too_big:
        raise CheckpointError(f"Hub repo {where} was not downloaded: {', '.join(too_big)}")


def _hub_error(exc: Exception, repo_id: str, revision: str | None, name: str) -> CheckpointError:
    """Translate a ``huggingface_hub``/network exception into a CheckpointError with a human message."""
    where = _where(repo_id, revision)
    if isinstance(exc, RepositoryNotFoundError):  # includes gated repos and missing/invalid tokens
        return CheckpointError(f"Hub repo {repo_id!r} not found (or private: set HF_TOKEN); "
                               f"no local folder {name!r} either")
    if isinstance(exc, RevisionNotFoundError):
        return CheckpointError(f"revision {revision!r} not found in Hub repo {repo_id!r}")
    if isinstance(exc, LocalEntryNotFoundError):  # cache miss while offline/unreachable (IncompleteSnapshotError too)
        if constants.is_offline_mode():
            return CheckpointError(f"offline mode (HF_HUB_OFFLINE=1) and Hub repo {where} is not in the local "
                                   "cache: download it once while online")
        return CheckpointError(f"cannot reach the Hugging Face Hub and Hub repo {where} is not in the local cache")
    if isinstance(exc, EntryNotFoundError):
        return CheckpointError(f"a checkpoint file is missing from Hub repo {where}: {exc}")
    if isinstance(exc, (OfflineModeIsEnabled, httpx2.TransportError)):
        return CheckpointError(f"cannot reach the Hugging Face Hub for {where}: {exc}")
    if isinstance(exc, HfHubHTTPError):
        return CheckpointError(f"the Hugging Face Hub refused the download of {where}: {exc}")
    return CheckpointError(f"cannot download Hub repo {where}: {type(exc).__name__}: {exc}")


def push_checkpoint(model_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                    revision: str | None = None, commit_message: str | None = None) -> str:
    """Upload the checkpoint folder ``model_dir`` to the Hub model repo ``repo_id``; return the commit URL.

    The repo is created if needed (``private`` only applies then); ``revision`` is a branch, created from
    ``main`` if it does not exist. Only the checkpoint files (``CHECKPOINT_FILES``) are uploaded, and a folder
    holding pickles is refused. ``token`` defaults to ``HF_TOKEN`` or the saved login.
    """
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {model_dir} does not exist")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if missing:
        hint = f" (it holds {', '.join(pickles)}: pickled checkpoints are not supported)" if pickles else ""
        raise CheckpointError(f"{folder} is not an nmt checkpoint: missing {', '.join(missing)}{hint}")
    if pickles:
        raise CheckpointError(f"{folder} holds pickle files ({', '.join(pickles)}); remove them before pushing "
                              "(only safetensors checkpoints are shared)")
    root = folder.resolve()
    leaving = [f for f in CHECKPOINT_FILES if (folder / f).exists() and root not in (folder / f).resolve().parents]
    if leaving:
        raise CheckpointError(f"{folder}: {', '.join(leaving)} link{'s' * (len(leaving) == 1)} to a file outside the "
                              "folder; push only a folder whose files are its own")
    if repo_id.count("/") != 1:
        raise CheckpointError(f"{repo_id!r} is not a Hub repo id (expected 'user/name')")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise CheckpointError(f"{repo_id!r} is not a valid Hub repo id: {exc}") from None

    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 allow_patterns=list(CHECKPOINT_FILES),
                                 commit_message=commit_message or f"Upload nmt checkpoint {folder.name}")
    except OfflineModeIsEnabled:
        raise CheckpointError("cannot push in offline mode: unset HF_HUB_OFFLINE") from None
    except httpx2.TransportError as exc:
        raise CheckpointError(f"cannot reach the Hugging Face Hub to push {repo_id!r}: {exc}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if isinstance(exc, RepositoryNotFoundError) or status in (401, 403):
            raise CheckpointError(f"not allowed to push to Hub repo {repo_id!r}: set HF_TOKEN to a token with "
                                  f"write access ({exc})") from exc
        raise CheckpointError(f"the Hugging Face Hub refused the push to {repo_id!r}: {exc}") from exc
    except ValueError as exc:  # e.g. invalid metadata in README.md
        raise CheckpointError(f"cannot push {folder} to {repo_id!r}: {exc}") from exc
    return str(info.commit_url)


def prune_cache(cache_dir: str | Path, max_bytes: int, keep: set[str] = frozenset()) -> list[str]:
    """Delete the least recently used model repos from the Hub download cache ``cache_dir`` until it
    holds at most ``max_bytes`` (repos in ``keep`` stay); returns the deleted repo ids. A server that
    downloads whatever its visitors ask for would otherwise fill its disk; give it a cache of its own."""
    try:
        cache = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError, ValueError) as exc:  # (CacheNotFound: nothing downloaded yet)
        logger.debug("no Hub cache to prune (%s)", exc)
        return []
    total = cache.size_on_disk
    deleted, hashes = [], []
    for repo in sorted(cache.repos, key=lambda r: r.last_accessed):
        if total <= max_bytes:
            break
        if repo.repo_type != "model" or repo.repo_id in keep:
            continue
        hashes += [rev.commit_hash for rev in repo.revisions]
        total -= repo.size_on_disk
        deleted.append(repo.repo_id)
    if hashes:
        try:
            cache.delete_revisions(*hashes).execute()
        except OSError as exc:
            logger.warning("could not prune the Hub cache (%s)", exc)
            return []
        logger.info("pruned the Hub cache to %.0f MB: deleted %s", total / 1e6, ", ".join(deleted))
    return deleted
