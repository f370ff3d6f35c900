"""Atomic file and directory writes: a crash never leaves a half-written file that later steps trust.

Every write goes to a temporary name in the target's own directory (so the rename never crosses a filesystem), is
fsynced, then renamed over the target. Temporary names carry the writer's pid, so the next writer can tell a dead
writer's leftovers (:func:`remove_stale_temps`) from a live one's. Files and directories get the modes the umask
gives (``tempfile`` alone would make them 0600/0700).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# `.<name>.<pid>.<hex>.tmp` (files) and `.<name>.staging.<pid>.<hex>` / `.<name>.old.<hex>` (directories).
_TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_STAGING_DIR = re.compile(r"^\.(?P<name>.+)\.staging\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+$")
_OLD_DIR = re.compile(r"^\.(?P<name>.+)\.old\.[0-9a-f]{8}$")
STALE_UNNAMED_SECONDS = 3600.0


def _temp_name(path: Path, kind: str = "") -> Path:
    middle = f".{kind}" if kind else ""
    suffix = "" if kind else ".tmp"
    return path.parent / f".{path.name}{middle}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``mode`` ``"wb"`` or ``"w"``, text in ``encoding``, default
    UTF-8); on a clean exit fsync it and rename it over ``path``; on any error (a full disk included) remove it,
    leaving the previous ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding or "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        cause = next((e for e in exception_chain(error) if isinstance(e, OSError)), None)
        if isinstance(error, Exception) and cause is not None and cause.filename is None and cause.errno is not None:
            # A write to a handle names no file (torch.save even wraps it): name the target.
            raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from error
        raise


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _fsync_path(path: Path) -> None:
    """fsync a file, or a directory to persist a rename (best effort: not every filesystem lets one be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def check_writable(directory: str | Path, probe_bytes: int = 256 * 1024) -> Path:
    """Create ``directory`` and write (then remove) a ``probe_bytes`` file in it, so that a full or read-only
    disk is reported at once, as an ``OSError`` naming the path and the errno, before loggers write their files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".dsum_write_check"
    try:
        with atomic_open(probe, "wb") as handle:
            handle.write(b"\0" * probe_bytes)
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, os.strerror(error.errno), str(directory)) from error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return directory


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove what killed writers left in ``directory`` (only target ``name``'s leftovers when given): temporary
    files and staging directories of writers whose process is gone (same machine), and old directories a swap did
    not get to delete. Returns the paths removed; a missing directory has none."""
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_FILE.match(entry.name) or _STAGING_DIR.match(entry.name) or _OLD_DIR.match(entry.name)
        if match is None or (name is not None and match.group("name") != name):
            continue
        pid = match.groupdict().get("pid")
        if pid is not None and _pid_alive(int(pid)):
            continue  # a live writer's (or the pid was reused: left for a later run)
        if _OLD_DIR.match(entry.name):
            target = directory / match.group("name")
            if not target.exists():  # a swap killed half-way: this is the only copy left; put it back
                with contextlib.suppress(OSError):
                    os.replace(entry, target)
                continue
        elif pid is None:
            # A staging name without a pid (older dsum): only when too old to be in use.
            try:
                if time.time() - entry.stat().st_mtime < STALE_UNNAMED_SECONDS:
                    continue
            except OSError:
                continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """`atomic_write_text` of pretty-printed JSON (UTF-8, Korean kept readable)."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def atomic_write_dir(target: str | Path, fill: Callable[[Path], Any]) -> Path:
    """Build a directory with `fill(tmp_dir)` beside `target`, then swap it into place: readers see either the old
    complete directory or the new one (the old one is deleted only after the new one is in place)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)
    staging = _temp_name(target, "staging")
    staging.mkdir(mode=0o777)  # the umask applies
    try:
        fill(staging)
        for root, _dirs, files in os.walk(staging):  # every file and directory durable before the swap
            for file in files:
                _fsync_path(Path(root) / file)
            _fsync_path(Path(root))
        (staging / ".complete").write_text("ok\n")
        old = target.parent / f".{target.name}.old.{uuid.uuid4().hex[:8]}"
        moved = target.exists()
        if moved:
            os.replace(target, old)
        try:
            os.replace(staging, target)
        except BaseException:
            if moved:
                os.replace(old, target)  # put the previous version back
            raise
        _fsync_path(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def is_complete_dir(path: str | Path) -> bool:
    """Whether `path` was finished by `atomic_write_dir`."""
    return (Path(path) / ".complete").is_file()
