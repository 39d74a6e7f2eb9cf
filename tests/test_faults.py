"""Fault injection (issue 11): a full disk, a closed or full stdout, special files as outputs, and a
sweep killed by SIGTERM/SIGKILL with its child processes checked. Nothing may end in a traceback,
a lost file or a process left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gqa_cli.main import main
from intsim import GQAError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def gqa(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "gqa_cli", *map(str, argv)], env=ENV, cwd=kw.pop("cwd", REPO),
                          capture_output=kw.pop("capture", True), text=True, timeout=kw.pop("timeout", 300), **kw)


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- disk full -------------------------------------------------------------------------------------------

def test_disk_full_keeps_the_old_file_and_names_the_field(tmp_path, capsys, monkeypatch):
    import intsim.fileio as fileio

    out = tmp_path / "t.json"
    out.write_text("old contents")
    monkeypatch.setattr(fileio.os, "fsync", _enospc)      # the write reaches the disk and finds it full
    with pytest.raises(GQAError, match="^gqa_json: cannot write .*No space left.*free space"):
        fileio.atomic_write_text(out, "new", "gqa_json")
    rc, _, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", out)
    assert rc == 2 and "No space left" in err and "Traceback" not in err
    assert out.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]      # no temporary left behind


def test_disk_full_during_a_sweep_keeps_finished_rows(tmp_path, capsys, monkeypatch):
    import gqa_sweep.results as results
    from gqa_sweep import read_results, run_sweep

    spec = tmp_path / "s.toml"
    spec.write_text('functions = ["gelu"]\nentries = [2, 3, 4]\nmethods = ["uniform"]\nscales = "0:2"\n')
    out = tmp_path / "r.csv"
    run_sweep(spec, out, workers=0, progress=False, max_points=1)
    monkeypatch.setattr(results.os, "fsync", _enospc)
    rc, _, err = run(capsys, "sweep", spec, "-o", out, "--workers", "0", "-q")
    assert rc == 2 and "output: cannot write" in err and "No space left" in err
    monkeypatch.undo()
    assert len(read_results(out).rows) >= 1
    report = run_sweep(spec, out, workers=0, progress=False)
    assert report.complete


def test_real_full_tmpfs(tmp_path, capsys):
    """A 64 KiB tmpfs, where mounting one is allowed (root with CAP_SYS_ADMIN); skipped elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        (mnt / "filler").write_bytes(b"\0" * 60_000)
        out = mnt / "t.json"
        out.write_text("old")
        rc, _, err = run(capsys, "search", "gelu", "-n", "16", "--method", "uniform", "-q", "-o", out)
        assert rc == 2 and "No space left" in err
        assert out.read_text() == "old" and sorted(p.name for p in mnt.iterdir()) == ["filler", "t.json"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# --- stdout closed or full ---------------------------------------------------------------------------------

COMMANDS = {
    "search": ["search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", "{tmp}/t.json"],
    "eval": ["eval", "{table}"],
    "hw": ["hw", "{table}"],
    "sweep": ["sweep", "{spec}", "--list"],
    "sim": ["sim", "--options"],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    assert main(["search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", str(d / "table.json")]) == 0
    (d / "s.toml").write_text('functions = ["gelu"]\nentries = [2, 3]\nmethods = ["uniform"]\n')
    return d


def _argv(name, tmp, inputs):
    return [a.format(tmp=tmp, table=inputs / "table.json", spec=inputs / "s.toml") for a in COMMANDS[name]]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_closed_stdout_is_a_normal_end(tmp_path, inputs, name):
    r, w = os.pipe()
    os.close(r)                          # the reader is gone before the first line: every write is EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "gqa_cli", *_argv(name, tmp_path, inputs)], env=ENV,
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(w)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
    if name == "search":
        assert json.loads((tmp_path / "t.json").read_text())["function"] == "gelu"   # written regardless


def test_search_piped_into_head_writes_its_file(tmp_path):
    cmd = (f"{sys.executable} -m gqa_cli search gelu -n 4 --method uniform -q -o {tmp_path}/t.json | head -1; "
           "echo rc=${PIPESTATUS[0]}")
    p = subprocess.run(["bash", "-c", cmd], env=ENV, capture_output=True, text=True, timeout=300)
    assert "rc=0" in p.stdout and "Traceback" not in p.stderr, p.stderr
    assert (tmp_path / "t.json").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_full_stdout_is_a_normal_end(tmp_path, inputs):
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "gqa_cli", *_argv("search", tmp_path, inputs)], env=ENV,
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert (tmp_path / "t.json").is_file()


# --- special files as outputs --------------------------------------------------------------------------------

def _special_files(tmp_path):
    """A FIFO, and a character device node (a copy of /dev/null's numbers, in tmp_path) where allowed."""
    out = {}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out["fifo"] = fifo
    dev = tmp_path / "chardev"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        out["chardev"] = dev
    except (PermissionError, OSError):
        pass
    return out


@pytest.mark.parametrize("option", ["-o", "--gqa-json"])
def test_special_file_outputs_are_refused_and_kept(tmp_path, capsys, option):
    for kind, path in _special_files(tmp_path).items():
        mode = path.lstat().st_mode
        rc, _, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", option, path)
        assert rc == 2 and "only regular files" in err, (kind, err)
        assert path.lstat().st_mode == mode, f"{kind} was replaced"


def test_special_file_outputs_of_sweep_sim_plot_rtl(tmp_path, capsys, inputs):
    text = tmp_path / "s.txt"
    text.write_text("hello\n")
    for kind, path in _special_files(tmp_path).items():
        mode = path.lstat().st_mode
        for argv in (["sweep", inputs / "s.toml", "-o", path, "--workers", "0", "-q"],
                     ["sim", "--text", text, "--out", path], ["plot", inputs / "table.json", "-o", path],
                     ["rtl", inputs / "table.json", "-o", path]):
            rc, _, err = run(capsys, *argv)
            assert rc == 2 and "regular files" in err, (argv, err)
            assert path.lstat().st_mode == mode, f"{argv[0]} replaced the {kind}"


def test_directory_output_is_refused(tmp_path, capsys):
    rc, _, err = run(capsys, "search", "gelu", "-n", "4", "--method", "uniform", "-q", "-o", tmp_path)
    assert rc == 2 and "is a directory" in err


# --- a sweep killed: its children end with it ----------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _descendants(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_sweep_leaves_no_process_behind(tmp_path, sig):
    from gqa_sweep import read_results, run_sweep

    spec = tmp_path / "s.toml"      # GA points of a few seconds each: workers are busy when the kill comes
    spec.write_text('functions = ["gelu"]\nentries = [4, 5, 6, 7, 8, 9]\nmethods = ["ga"]\nscales = "0:3"\n'
                    "[ga]\npopulation = 16\ngenerations = 4000\ndp_seed = false\n")
    out = tmp_path / "r.csv"
    p = subprocess.Popen([sys.executable, "-m", "gqa_cli", "sweep", str(spec), "-o", str(out), "--workers", "2",
                          "-q"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:        # the forkserver, the resource tracker and 2 workers
            family = _descendants(p.pid)
            if len(family) >= 4:
                break
            time.sleep(0.2)
        assert len(family) >= 3, f"the sweep started only {len(family)} child processes"
        time.sleep(1.0)
        family |= _descendants(p.pid)
        p.send_signal(sig)
        p.wait(timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_running(c) for c in family):
            time.sleep(0.2)
        left = [c for c in family if _running(c)]
        assert not left, f"still running {20} s after {sig.name}: {left}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for c in family | _descendants(p.pid):    # whatever a failure left behind: ours, by pid
            try:
                os.kill(c, signal.SIGKILL)
            except OSError:
                pass
    read_results(out)                               # the file is intact: resume finishes the grid
    report = run_sweep(spec, out, workers=0, progress=False, max_points=0)
    assert report.points == 6


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_worker_is_a_clear_error_and_the_sweep_resumes(tmp_path):
    from gqa_sweep import read_results

    spec = tmp_path / "s.toml"
    spec.write_text('functions = ["gelu"]\nentries = [4, 5, 6, 7]\nmethods = ["ga"]\nscales = "0:3"\n'
                    "[ga]\npopulation = 16\ngenerations = 4000\ndp_seed = false\n")
    out = tmp_path / "r.csv"
    p = subprocess.Popen([sys.executable, "-m", "gqa_cli", "sweep", str(spec), "-o", str(out), "--workers", "2",
                          "-q"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline and not workers:   # the forkserver's children are the workers
            family = _descendants(p.pid)
            kids = _children()
            workers = [w for c in family for w in kids.get(c, [])]
            time.sleep(0.2)
        assert workers, "no worker started"
        time.sleep(1.0)
        os.kill(workers[0], signal.SIGKILL)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2 and "workers: a worker process died" in err and "Traceback" not in err, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for c in family:
            try:
                os.kill(c, signal.SIGKILL)
            except OSError:
                pass
    read_results(out)
