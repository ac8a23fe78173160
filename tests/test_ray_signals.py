"""Ctrl-C, SIGTERM and kill -9 on a Ray tag run (`emolabel tag --engine ray`, and tag_file with a RayEngine from
a plain script), in real subprocesses with the tiny model. No Ray in this process (test_ray.py
starts one per module): each run starts its own, and the tests wait on files and processes, never
on a clock (PATIENCE is a hang safety net)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PATIENCE

pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install 'emolabel[ray]'")
psutil = pytest.importorskip("psutil")  # the run's Ray processes
pytestmark = pytest.mark.slow

WORDS = ["i feel so happy today", "i am scared and nervous", "love you", "this is bad", "amazed", "i hate it"]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))


@pytest.fixture(scope="module")
def slow_input(tmp_path_factory):
    """Enough rows at --chunk-rows 64 that the job is still labelling when the signal comes."""
    path = tmp_path_factory.mktemp("slow") / "big.parquet"
    pq.write_table(pa.table({"text": [f"{WORDS[i % len(WORDS)]} {i}" for i in range(200_000)]}), path)
    return path


def start_tag(src: Path, out: Path, model: Path, log: Path, new_session: bool = False,
              library: bool = False) -> subprocess.Popen:
    """`emolabel tag SRC -o OUT --engine ray` (or its tag_file call with a RayEngine in a plain Python script)
    in the background; stderr to `log` (a pipe nobody reads while we wait could fill and stall the run)."""
    env = dict(os.environ)
    env.pop("EMOLABEL_MODEL", None)
    script = ("import sys, emolabel; from emolabel.ray_engine import RayEngine; "
              "emolabel.tag_file([sys.argv[1]], sys.argv[2], model=sys.argv[3], engine=RayEngine(workers=1), chunk_rows=64)")
    args = (["-c", script, str(src), str(out), str(model)] if library else
            ["-m", "emolabel", "tag", str(src), "-o", str(out), "--engine", "ray", "--workers", "1",
             "--model", str(model), "--chunk-rows", "64"])
    with open(log, "wb") as err:
        return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=err, env=env,
                                start_new_session=new_session, cwd=Path(__file__).resolve().parents[1])


def wait_until(proc: subprocess.Popen, out: Path, log: Path, when: str) -> set:
    """Until the run is "labelling" (a part file is in its temporary folder: Ray is up, the actor
    labels, the writers write) or "starting" (Ray's GCS server runs: ray.init is under way); then
    the run's processes so far (the driver's descendants: Ray's GCS, raylet, agents, workers)."""
    end = time.monotonic() + PATIENCE
    procs: set = set()
    while time.monotonic() < end:
        assert proc.poll() is None, f"the run ended before it was interrupted:\n{log.read_text()}"
        with contextlib.suppress(psutil.Error):
            procs |= set(psutil.Process(proc.pid).children(recursive=True))
        if when == "starting":
            with contextlib.suppress(psutil.Error):
                if any(p.name() == "gcs_server" for p in procs):
                    return procs
        elif any(any(tmp.iterdir()) for tmp in out.parent.glob(f"{out.name}.emolabel-tmp-*")):
            with contextlib.suppress(psutil.Error):
                procs |= set(psutil.Process(proc.pid).children(recursive=True))
            return procs
        time.sleep(0.1)
    raise AssertionError(f"not {when} within {PATIENCE}s:\n{log.read_text()}")


def still_running(procs: set, driver: int, patience: float = PATIENCE) -> list[str]:
    """The processes of `procs`, and any naming the Ray session of the `driver` pid (its GCS,
    raylet, monitors: /tmp/ray/session_<time>_<pid>), still running after up to `patience`
    seconds (zombies count as gone)."""
    session = re.compile(rf"/session_[\d_-]+_{driver}(/|$)")
    end = time.monotonic() + patience
    while True:
        alive = []
        for p in procs | set(psutil.process_iter()):
            with contextlib.suppress(psutil.Error):
                if p in procs or any(session.search(arg) for arg in p.cmdline()):
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{p.pid} {p.name()}")
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.5)


@pytest.mark.parametrize("sig,code,to,when", [
    pytest.param(signal.SIGINT, 130, "group", "labelling", id="ctrl-c"),
    pytest.param(signal.SIGTERM, 143, "pid", "labelling", id="kill"),
    pytest.param(signal.SIGTERM, 143, "pid", "starting", id="kill-during-ray-init"),
    pytest.param(signal.SIGINT, 130, "group", "starting", id="ctrl-c-during-ray-init"),
])
def test_a_signal_exits_128_plus_it_and_leaves_no_output_and_no_ray_process(tiny_model, slow_input, tmp_path,
                                                                             sig, code, to, when):
    """Ctrl-C (SIGINT to the terminal's process group), `kill` (SIGTERM to the pid), and a kill
    while Ray starts: the local engine's exit code and line, no traceback and no C++ stack dump, no
    temporary folder, and none of the run's Ray processes left running. (It was exit 1 "The Ray job
    ... failed: SIGINT"; exit 15 after a C++ stack dump; during ray.init exit 15, or, where Ray's
    start-up code caught it, exit 0 with every row labelled.) SIGTERM to the whole group is not
    here: Ray's raylet gets it too, and the driver's Ray core may end the process first (exit 1),
    a race (ray_adapter.signals_kept)."""
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    proc = start_tag(slow_input, out, tiny_model, log, new_session=to == "group")
    procs = wait_until(proc, out, log, when)
    os.killpg(proc.pid, sig) if to == "group" else proc.send_signal(sig)
    assert proc.wait(PATIENCE) == code, log.read_text()
    err = log.read_text()
    assert err.splitlines()[-1] == (f"Interrupted ({sig.name}). Nothing was written to {out}. "
                                    "Run the same command again to start over."), err
    assert "Traceback" not in err and "*** SIG" not in err and "logging.cc" not in err, err
    assert not out.exists() and siblings(out) == []
    assert still_running(procs, proc.pid) == []


def test_ctrl_c_from_python_is_a_keyboard_interrupt_after_the_same_cleanup(tiny_model, slow_input, tmp_path):
    """From Python the engine keeps the caller's handlers (ray_adapter.signals_kept): with Python's
    default, Ctrl-C is Ray's and Python's KeyboardInterrupt, raised after the CLI's cleanup (no
    temporary folder, none of the run's Ray processes left)."""
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    proc = start_tag(slow_input, out, tiny_model, log, new_session=True, library=True)
    procs = wait_until(proc, out, log, "labelling")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(PATIENCE) == -signal.SIGINT, log.read_text()  # how Python ends on an uncaught KeyboardInterrupt
    assert log.read_text().rstrip().splitlines()[-1] == "KeyboardInterrupt", log.read_text()
    assert not out.exists() and siblings(out) == []
    assert still_running(procs, proc.pid) == []


def test_kill_9_leaves_a_temp_folder_the_next_run_removes_and_ray_stops_by_itself(tiny_model, slow_input, tmp_path):
    """kill -9 cannot clean up: the temporary folder stays until the next run to that output, which
    removes it because its owner (host and pid in the name) is dead; Ray's processes of the killed
    run end by themselves (Ray's fate sharing: about a minute for its agents, measured)."""
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    proc = start_tag(slow_input, out, tiny_model, log)
    procs = wait_until(proc, out, log, "labelling")
    proc.kill()
    proc.wait(PATIENCE)
    stale = siblings(out)
    assert len(stale) == 1 and f"-{proc.pid}-" in stale[0]
    small = tmp_path / "small.csv"
    small.write_text("text\ni feel happy\ni am scared\n")
    r = subprocess.run([sys.executable, "-m", "emolabel", "tag", str(small), "-o", str(out), "--engine", "ray",
                        "--workers", "1", "--model", str(tiny_model)], capture_output=True, text=True,
                       timeout=PATIENCE, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert siblings(out) == [] and pq.read_table(out).num_rows == 2
    assert still_running(procs, proc.pid) == []


def test_only_a_dead_runs_temp_folder_is_removed(tmp_path):
    from emolabel.outputs import remove_stale_temp_folders, temp_folder

    out = tmp_path / "out"
    mine = Path(temp_folder(str(out)))  # this (live) process's
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = Path(str(mine).replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-"))
    elsewhere = tmp_path / f"out.emolabel-tmp-otherhost-{int(dead.stdout)}-0123abcd"
    old_style = tmp_path / "out.emolabel-tmp-0123456789ab"  # before the owner was in the name: unknown
    other_output = tmp_path / gone.name.replace("out.", "out2.", 1)
    for d in (mine, gone, elsewhere, old_style, other_output):
        d.mkdir()
        (d / "part.parquet").write_bytes(b"x")
    assert remove_stale_temp_folders(str(out)) == [str(gone)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(d.name for d in (mine, elsewhere, old_style,
                                                                                   other_output))
