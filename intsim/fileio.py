"""Atomic file output: write a temporary file beside the target, then rename it over.

An interrupted or failed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import GQAError


def check_writable(path, field: str = "output") -> Path:
    """Fail early, with the field named, if ``path`` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise GQAError(field, f"{p} is a directory", "give a file name")
    if not parent.is_dir():
        raise GQAError(field, f"directory {parent} does not exist", "create it first or choose another path")
    if not os.access(parent, os.W_OK):
        raise GQAError(field, f"directory {parent} is not writable", "choose a writable location")
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes, field: str = "output") -> Path:
    p = check_writable(path, field)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 & ~umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def atomic_write_text(path, text: str, field: str = "output") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), field)


def atomic_write_json(path, obj, field: str = "output") -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", field)


def read_json(path, field: str = "table") -> object:
    p = Path(path)
    if not p.is_file():
        raise GQAError(field, f"{p} does not exist or is not a file")
    try:
        with open(p, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise GQAError(field, f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except UnicodeDecodeError:
        raise GQAError(field, f"{p} is not a UTF-8 text file") from None
