"""File I/O shared by every command: atomic file and folder writes (a reader sees the old file or folder or the
complete new one, never half of one) and YAML read safely (`safe_load`: no tags that run code) into a mapping."""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from search.errors import MedSAMixError


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it, and setting
    it even briefly races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(temp_path)` (what it returns, e.g. `Path.write_text`'s count, is ignored) on a temporary file
    beside `path`, then rename it over `path`.

    The file gets the mode any tool would give it (0o666 less the umask), not mkstemp's 0o600. On any failure the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    temp_path = Path(temp)
    try:
        write(temp_path)
        temp_path.chmod(0o666 & ~_umask())
        with open(temp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return path


def require_file(path: Path, what: str, error: type[MedSAMixError]) -> Path:
    """`path` if it is a file; else `error` saying whether it is missing or a folder (e.g. "checkpoint X is a
    folder, not a file"), so a user who gave a folder is not told that it does not exist."""
    if path.is_file():
        return path
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    raise error(f"{what} {path} does not exist")


def yaml_mapping(text: str, source: str, expected: str, error: type[MedSAMixError]) -> dict[str, Any]:
    """The mapping a YAML document holds; `error(one sentence)` for bad syntax or another kind of document.

    `expected` names the keys the caller wants (for the message), e.g. "base, models and groups"."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(problem, "problem", None) or "invalid syntax"
        raise error(f"{source} is not valid YAML{line}: {reason}") from None
    if not isinstance(data, dict):
        raise error(f"{source} must be a YAML mapping with {expected}; found {type(data).__name__}")
    return data


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def atomic_write_dir(path: str | Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Call `write(temp_folder)` on a hidden temporary folder beside `path`, then move it to `path`.

    An existing `path` raises FileExistsError unless `replace`; then the two folders are exchanged in one step
    where the system allows it (Linux), else the old one is moved aside first (a reader may briefly find neither),
    and the old one is deleted. On any failure the temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        temp.chmod(0o777 & ~_umask())  # mkdtemp's 0o700 would hide the folder from a service running as another user
        write(temp)
        for file in temp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        if not path.exists():
            os.rename(temp, path)  # fails if `path` appeared meanwhile: never merges into another folder
        elif not replace:
            raise FileExistsError(path)
        elif not _exchange(temp, path):
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rename(path, aside / path.name)
            try:
                os.rename(temp, path)
            except BaseException:
                os.rename(aside / path.name, path)
                shutil.rmtree(aside, ignore_errors=True)
                raise
            temp = aside
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(temp, ignore_errors=True)  # the old folder, after an exchange or a move aside
    return path
