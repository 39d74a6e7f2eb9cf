"""The results file: a checksummed, append-only CSV tied to its spec.

Two comment lines (``# gqa-sim sweep v1 spec_sha256=...`` and the normalised spec as JSON), the
column header, then one row per finished point, appended as it finishes (one ``write`` of a whole
line, flushed and fsynced, under an exclusive lock on the file). Every row ends with a CRC-32 of
the rest of its line, so a line torn by a crash is recognised and ignored.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from intsim import GQAError

from .grid import MODEL_AXES, columns
from .spec import SWEEP_VERSION, load_spec, one_line, spec_hash

MAGIC = "# gqa-sim sweep v"
INT_COLUMNS = {"index", "entries", "in_bits", "slope_bits", "slope_frac", "icpt_bits", "icpt_frac", "clipped",
               "llm_tokens"}

TEXT_COLUMNS = {"key", "function", "format", "method", "minilm_config", "llm_config", "scales", "error", "table",
                "minilm_note", "llm_note"}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if hasattr(v, "item"):          # numpy scalars
        return _fmt(v.item())
    return one_line(v) if isinstance(v, str) else str(v)


def _csv_line(values) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode('utf-8')):08x}"


def format_row(cols: list[str], point: dict, result: dict) -> str:
    """One results line (with its newline): the columns' values and a CRC-32 of them."""
    values = {"index": point["index"], "key": point["key"], "function": point["function"],
              "entries": point["entries"], "format": point["format"], "method": point["method"], **result}
    for axis in MODEL_AXES:
        if point.get(axis):
            values[f"{axis}_config"] = point[axis]["config"]
    body = _csv_line([_fmt(values.get(c)) for c in cols])
    return f"{body},{_crc(body)}\n"


def _header_lines(spec: dict, cols: list[str]) -> list[str]:
    return [f"{MAGIC}{SWEEP_VERSION} spec_sha256={spec_hash(spec)}",
            "# spec=" + json.dumps(spec, sort_keys=True, separators=(",", ":")),
            _csv_line([*cols, "crc"])]


@dataclass
class ResultsFile:
    """What a results file holds: its spec hash, the spec, columns and the valid rows (raw strings)."""

    path: Path
    spec_sha256: str
    spec: dict
    columns: list[str]
    rows: list[dict]
    torn: int = 0            # lines that failed their CRC or column count (a crash mid-write)
    ends_with_newline: bool = True
    tail_quote_open: bool = False   # the unterminated last line stops inside a quoted CSV field


def read_results(path) -> ResultsFile:
    """Parse a results file; rows as dicts of strings, first occurrence of each key, file order."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise GQAError("results", f"cannot read {p}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise GQAError("results", f"{p} is not a gqa-sim sweep results file (not UTF-8 text)",
                       "choose another output file; this one is left untouched") from None
    lines = text.split("\n")
    if len(lines) < 4 or not lines[0].startswith(MAGIC) or not lines[1].startswith("# spec="):
        raise GQAError("results", f"{p} is not a gqa-sim sweep results file (no '{MAGIC}N' header)",
                       "choose another output file; this one is left untouched")
    head = lines[0][len(MAGIC):].split()
    if not head or head[0] != str(SWEEP_VERSION) or len(head) < 2 or not head[1].startswith("spec_sha256="):
        raise GQAError("results", f"{p} was written by another sweep format ({lines[0]!r})",
                       f"this gqa-sim writes v{SWEEP_VERSION}; choose another output file")
    try:
        spec = json.loads(lines[1][len("# spec="):])
    except json.JSONDecodeError:
        raise GQAError("results", f"{p}: the spec line is damaged") from None
    cols = next(csv.reader([lines[2]]))
    if not cols or cols[-1] != "crc":
        raise GQAError("results", f"{p}: the column header is damaged")
    cols = cols[:-1]
    rows, seen, torn = [], set(), 0
    body = lines[3:]
    complete = body[:-1]                        # the last element follows the final newline ('' when complete)
    if body[-1] != "":
        torn += 1                               # an unterminated last line: a write cut short
    for line in complete:
        if not line:
            continue
        cut = line.rfind(",")
        if cut < 0 or _crc(line[:cut]) != line[cut + 1:]:
            torn += 1
            continue
        vals = next(csv.reader([line[:cut]]))
        if len(vals) != len(cols):
            torn += 1
            continue
        row = dict(zip(cols, vals))
        if row["key"] in seen:
            continue
        seen.add(row["key"])
        rows.append(row)
    return ResultsFile(p, head[1][len("spec_sha256="):], spec, cols, rows, torn, data.endswith(b"\n"),
                       body[-1].count('"') % 2 == 1)


def typed_row(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if k in TEXT_COLUMNS:
            out[k] = v
        elif v == "":
            out[k] = None
        elif k in INT_COLUMNS:
            out[k] = int(v)
        else:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def load_results(path, spec=None) -> list[dict]:
    """The finished points of a results file in grid order, values typed (``None``: not applicable).

    With ``spec`` (a path, dict or canonical spec), a file written by another spec is refused.
    """
    res = read_results(path)
    if spec is not None:
        want = spec_hash(load_spec(spec))
        if want != res.spec_sha256:
            raise GQAError("results", f"{res.path} holds results of a different spec "
                           f"(sha256 {res.spec_sha256[:12]}, expected {want[:12]})")
    return sorted((typed_row(r) for r in res.rows), key=lambda r: r["index"])


def table_from_row(row: dict, function: str | None = None):
    """The :class:`intsim.PWLTable` a results row describes (its ``table`` column)."""
    from intsim import PWLDatapath, PWLTable

    if not row.get("table"):
        raise GQAError("table", f"point {row.get('key')} has no table ({row.get('error') or 'not recorded'})")
    t = json.loads(row["table"])
    return PWLTable(function=function or row["function"], domain=tuple(t["domain"]),
                    datapath=PWLDatapath(**t["datapath"]), scales=t["scales"], breakpoints=t["breakpoints"],
                    slopes=t["slopes"], intercepts=t["intercepts"],
                    provenance={"method": row.get("method"), "sweep_key": row.get("key")})


class _Appender:
    """Append whole lines to the results file: one write per line, flush + fsync, an exclusive lock held."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            import fcntl
        except ImportError:   # not POSIX: no lock
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise GQAError("output", f"another sweep is writing to {path}", "wait for it or choose another -o") \
                from None

    def write(self, line: str) -> None:
        from intsim.fileio import os_error

        data = line.encode("utf-8")
        try:
            n = os.write(self.fd, data)
            while n < len(data):           # a regular file takes it whole; be safe anyway
                n += os.write(self.fd, data[n:])
            os.fsync(self.fd)
        except OSError as exc:             # disk full: finished rows stay, a torn one fails its CRC
            raise os_error("output", self.path, exc) from None

    def close(self) -> None:
        os.close(self.fd)              # releases the lock


def _create(path: Path, header: list[str]) -> None:
    """Create the results file with its header, atomically, unless it exists (never overwritten)."""
    from intsim.fileio import clean_stale_temporaries, new_file_mode, os_error, temporary_beside

    clean_stale_temporaries(path)
    try:
        fd, tmp = temporary_beside(path)
    except OSError as exc:
        raise os_error("output", path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write("\n".join(header) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, new_file_mode(path))      # what a plain open() gives, not mkstemp's 0600
        try:
            os.link(tmp, path)          # fails if the file appeared meanwhile: nothing is replaced
        except FileExistsError:
            pass
        except OSError:                 # no hard links on this filesystem
            if not path.exists():
                os.replace(tmp, path)
    except OSError as exc:              # disk full, quota: the field named, nothing half-made kept
        raise os_error("output", path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_existing(p: Path, spec: dict) -> ResultsFile | None:
    """The results already in ``p`` (None: no file yet), refusing a file of another spec."""
    if not p.exists() or p.stat().st_size == 0:
        return None
    res = read_results(p)
    want = spec_hash(spec)
    if res.spec_sha256 != want:
        raise GQAError("output", f"{p} holds results of a different spec (spec sha256 {res.spec_sha256[:12]}, "
                       f"this spec {want[:12]})", "give another -o, or delete the file to start over; "
                       "it is left untouched")
    if res.columns != columns(spec):
        raise GQAError("output", f"{p}: its columns differ from this spec's", "give another -o")
    return res


def open_results(path, spec: dict) -> tuple[_Appender, set[str], ResultsFile]:
    """Create or reopen ``path`` for ``spec``: (appender holding the lock, keys already finished, contents)."""
    from intsim.fileio import check_writable

    p = check_writable(path, "output")
    if check_existing(p, spec) is None:
        if p.exists():
            p.unlink()                  # an empty file (a crash before the header): nothing to lose
        _create(p, _header_lines(spec, columns(spec)))
    app = _Appender(p)
    try:
        res = check_existing(p, spec)  # read again under the lock
        if not res.ends_with_newline:   # isolate a torn last line; it fails its CRC and is ignored.
            # A line cut inside a quoted field (the table's JSON) is closed first, so Python's csv
            # module reads it as one short row rather than joining it with the next one
            app.write(('"' if res.tail_quote_open else "") + "\n")
    except BaseException:
        app.close()
        raise
    return app, {r["key"] for r in res.rows}, res
