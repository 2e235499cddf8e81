"""Careful file I/O: files an untrusted checkpoint provides, lines of text, outputs written atomically.

A checkpoint (a local folder or a Hub download) is untrusted, like a safetensors file: loading one
reads only regular files *inside its own folder*, each size-checked before it is read, and a parse
error never echoes what such a file holds. A Hub snapshot's files are symbolic links into the
repo's ``blobs/`` folder of the download cache; those links are the only ones allowed to leave.

Only ``\\n`` (with an optional ``\\r`` before it) ends a line here: ``str.splitlines`` also splits on
U+2028, form feeds, NEL, vertical tabs and lone carriage returns, which would shift the lines of a
vocabulary, a lexicon or a translated file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from nmt.errors import CheckpointError, DataError

KIB, MIB = 1024, 1024 * 1024
MAX_LEXICON_BYTES = 64 * MIB  # a lexicon, a checkpoint's or a user's


def checkpoint_file(folder: Path, name: str, what: str = "file") -> Path:
    """``folder/name``, where ``name`` (from a checkpoint's config, say) must be a plain relative path
    that stays inside ``folder``, also after following symbolic links. Does not check that it exists."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise CheckpointError(f"{folder}: the {what} {name!r} is not a file name inside the checkpoint folder")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or any(p in ("..", ".") for p in parts) or name.startswith("~"):
        raise CheckpointError(f"{folder}: the {what} {name!r} names a file outside the checkpoint folder; "
                              "a checkpoint may only refer to files inside its own folder")
    path = folder / name
    if path.exists() and not _inside(path.resolve(), _allowed_roots(folder)):
        raise CheckpointError(f"{folder}: the {what} {name!r} links to a file outside the checkpoint folder")
    return path


def _allowed_roots(folder: Path) -> list[Path]:
    """The folder, and for a Hub cache snapshot (``.../models--u--n/snapshots/<commit>/``) its repo's
    ``blobs/``, if that is a real folder beside ``snapshots/`` (not a link that could point anywhere)."""
    root = folder.resolve()
    roots = [root]
    blobs = root.parent.parent / "blobs"
    if root.parent.name == "snapshots" and blobs.is_dir() and not blobs.is_symlink():
        roots.append(blobs)
    return roots


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def read_capped(path: Path, limit: int, what: str = "file", error: type = CheckpointError) -> bytes:
    """The bytes of the regular file ``path``, refused (before reading) if larger than ``limit``."""
    try:
        if not path.is_file():  # a device (/dev/zero), a FIFO or a folder is never read
            raise error(f"{path}: the {what} is missing or not a regular file")
        size = path.stat().st_size
        if size > limit:
            raise error(f"{path}: the {what} is {size / MIB:.1f} MiB, over the limit of {limit / MIB:.1f} MiB")
        with open(path, "rb") as fh:
            data = fh.read(size + 1)  # (not limit + 1: read(n) allocates n bytes up front)
            if len(data) > size:  # it grew since stat: read on, up to just past the limit
                data += fh.read(limit + 1 - len(data))
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:  # (it grew while we read it)
        raise error(f"{path}: the {what} is over the limit of {limit / MIB:.1f} MiB")
    return data


def decode_lines(data: bytes, where: str, error: type = DataError) -> list[str]:
    """UTF-8 ``data`` cut into lines at ``\\n`` (a ``\\r`` before it dropped); a last line without
    ``\\n`` counts. Invalid UTF-8 is an error naming ``where`` and the line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, raw in enumerate(lines, start=1):
        try:
            out.append(raw.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as exc:
            raise error(f"{where}, line {number}: not valid UTF-8 ({exc.reason})") from None
    return out


@contextmanager
def atomic_output(path: str | Path, what: str = "output file") -> Iterator[IO[str]]:
    """A text file that appears at ``path`` only once it is completely written (a temporary sibling,
    renamed into place, with the mode the file has or a new file would get); on any error the temporary
    file is removed and ``path`` is left as it was. A symbolic link's target is the file replaced; a
    device or a FIFO (``/dev/null``, ``/dev/stdout``) is written to directly."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: the {what} is a folder; give a file name")
    if path.exists() and not path.is_file():
        with _opened(path, what) as fh:
            yield fh
        return
    path = path.resolve() if path.is_symlink() else path
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    except OSError as exc:
        raise DataError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None
    try:
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~current_umask())
    except OSError as exc:
        os.close(fd)
        _remove(tmp)
        raise DataError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise DataError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def _opened(path: Path, what: str) -> Iterator[IO[str]]:
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
    except OSError as exc:
        raise DataError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None


def current_umask() -> int:
    """The process's umask (files made by mkstemp/mkdtemp are private; the ones saved get the usual mode)."""
    mask = os.umask(0)  # (the only way to read it: set and restore)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
