"""File input and output, checked once for every command.

Output (:func:`check_writable`, :func:`atomic_write_bytes`): a temporary file beside the target,
then a rename over it, so an interrupted or failed run leaves either the old file or the new one,
never half of one. The one output-path check refuses, with the field named:

- a directory, a device, a FIFO or a socket (only regular files are ever written: renaming over
  ``/dev/null`` would replace the device with a file);
- a symlink is written through (its target is replaced); a dangling one whose directory exists
  creates its target;
- a name too long once the temporary suffix is added (``NAME_MAX`` of the directory);
- the same file given for two outputs of one command (:func:`check_outputs`).

An overwritten file keeps its permission bits; a new one gets ``0666 & ~umask`` (what ``open``
gives). A temporary file left by a killed writer (``.NAME.PID.*.tmp`` whose process is gone) is
removed by the next write of the same target. A full disk or any other OS failure while writing
is a :class:`GQAError` naming the field, and the target is left as it was.

Input (:func:`read_text`, :func:`read_json`, :func:`read_config_file`): a missing file, a file
that is not UTF-8, not valid JSON/TOML or nested too deeply is a :class:`GQAError`.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import GQAError

_TMP_SUFFIX = ".tmp"
_TMP_EXTRA = len(".") + 20 + len(".") + 8 + len(_TMP_SUFFIX)   # ".{pid}.{random}.tmp" at most, beyond ".NAME"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def output_path(path) -> Path:
    """The file a write of ``path`` replaces: symlinks followed (the link itself is kept)."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def check_writable(path, field: str = "output") -> Path:
    """Fail early, with the field named, if ``path`` cannot be written as a regular file.

    Returns the path to write (a symlink's target)."""
    if not str(path).strip():
        raise GQAError(field, "is an empty file name", "give a file name")
    p = output_path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise GQAError(field, f"the name {p.name[:40]}... is too long for the file system",
                           "choose a shorter name") from None
        raise GQAError(field, f"cannot inspect {p}: {exc.strerror}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = _kind(st.st_mode)
        fix = "give a file name" if stat.S_ISDIR(st.st_mode) else \
            "gqa writes only regular files; give a file path (it is left untouched)"
        raise GQAError(field, f"{p} is {what}", fix)
    if not parent.is_dir():
        raise GQAError(field, f"directory {parent} does not exist", "create it first or choose another path")
    if not os.access(parent, os.W_OK):
        raise GQAError(field, f"directory {parent} is not writable", "choose a writable location")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    need = len(os.fsencode(p.name)) + len(".") + _TMP_EXTRA
    if need > name_max:
        raise GQAError(field, f"the name {p.name[:40]}... ({len(os.fsencode(p.name))} bytes) is too long: its "
                       f"temporary file needs {need} bytes, this file system allows {name_max}",
                       f"shorten the name to at most {name_max - need + len(os.fsencode(p.name))} bytes")
    return p


def check_outputs(outputs: dict) -> dict:
    """Check every output of one command (``{field: path or None}``) and refuse one file given twice."""
    seen: dict = {}
    checked = {}
    for field, path in outputs.items():
        if not path:
            continue
        p = check_writable(path, field)
        key = os.path.realpath(p)
        if key in seen:
            raise GQAError(field, f"{path} is also given as {seen[key]}", "give each output its own file")
        seen[key] = field
        checked[field] = p
    return checked


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True     # someone else's process, or not a pid: leave its file alone
    return True


def clean_stale_temporaries(p: Path) -> list[Path]:
    """Remove ``.NAME.PID.*.tmp`` beside ``p`` whose writing process no longer exists."""
    removed = []
    prefix = f".{p.name}."
    try:
        names = os.listdir(p.parent if str(p.parent) else ".")
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        middle = name[len(prefix):-len(_TMP_SUFFIX)].split(".")
        if len(middle) != 2 or not middle[0].isdigit():
            continue
        if int(middle[0]) == os.getpid() or _pid_alive(int(middle[0])):
            continue
        q = p.parent / name
        try:
            q.unlink()
            removed.append(q)
        except OSError:
            pass
    return removed


def new_file_mode(p: Path) -> int:
    """An existing file's permission bits (kept on overwrite), else what a plain ``open`` gives."""
    try:
        st = os.stat(p)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def temporary_beside(p: Path) -> tuple[int, str]:
    """(fd, path) of a new temporary file beside ``p``, named so a later write can tell it is stale."""
    return tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=p.parent)


def os_error(field: str, p: Path, exc: OSError) -> GQAError:
    """A write that failed in the OS (disk full, quota, I/O error) as a GQAError naming the field."""
    fix = {errno.ENOSPC: "free space on that file system or choose another location",
           errno.EDQUOT: "free space within your quota or choose another location"}.get(
        exc.errno, "check the location and try again")
    return GQAError(field, f"cannot write {p}: {exc.strerror or exc} (the previous file, if any, is unchanged)", fix)


def user_cache_dir() -> Path:
    """Where gqa-sim keeps what it can recompute (GEMM backend choices, parsed GGUF indexes, serial
    numba kernels): ``GQA_CACHE_DIR``, else ``$XDG_CACHE_HOME/gqa-sim``, else ``~/.cache/gqa-sim``."""
    return Path(os.environ.get("GQA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "gqa-sim"))


def atomic_write_bytes(path, data: bytes, field: str = "output") -> Path:
    p = check_writable(path, field)
    clean_stale_temporaries(p)
    mode = new_file_mode(p)
    try:
        fd, tmp = temporary_beside(p)
    except OSError as exc:
        raise os_error(field, p, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise os_error(field, p, exc) from None
        raise
    return p


def atomic_write_text(path, text: str, field: str = "output") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), field)


def atomic_write_json(path, obj, field: str = "output") -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", field)


def read_text(path, field: str = "input", what: str = "file") -> str:
    """A UTF-8 text file's contents, or a GQAError naming the field (missing, not a file, not UTF-8)."""
    p = Path(path)
    if not p.is_file():
        raise GQAError(field, f"{p} does not exist or is not a file", f"give a {what}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise GQAError(field, f"cannot read {p}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GQAError(field, f"{p} is not a UTF-8 text file ({exc.reason} at byte {exc.start})",
                       "save it as UTF-8") from None


def parse(text: str, fmt: str, field: str, where: str):
    """``text`` parsed as ``fmt`` ('json' or 'toml'); a syntax error or too deep a nesting is a GQAError."""
    if fmt == "toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        loads, errors = tomllib.loads, (tomllib.TOMLDecodeError,)
    else:
        loads, errors = json.loads, (json.JSONDecodeError,)
    try:
        return loads(text)
    except errors as exc:
        detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise GQAError(field, f"{where} cannot be parsed: not valid {fmt.upper()}: {detail}") from None
    except RecursionError:
        raise GQAError(field, f"{where} is nested too deeply to parse", "flatten the file") from None


def read_json(path, field: str = "table") -> object:
    return parse(read_text(path, field, "JSON file"), "json", field, str(path))


def read_config_file(path, field: str = "--config") -> object:
    """A JSON file, or TOML with a ``.toml`` suffix, parsed."""
    p = Path(path)
    text = read_text(p, field, "JSON or TOML config file")
    return parse(text, "toml" if p.suffix == ".toml" else "json", field, str(p))
