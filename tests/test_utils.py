"""Tests of `kidneyseg.utils`: the spawn-only process pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kidneyseg.utils import process_pool

#: Changed in the parent by the test; a forked worker would inherit the change, a spawned one
#: imports this module afresh.
_MARK = "fresh"


def _mark() -> str:
    return _MARK


def test_process_pool_starts_fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "_MARK", "parent")
    with process_pool(2) as pool:
        assert [f.result() for f in [pool.submit(_mark), pool.submit(_mark)]] == ["fresh"] * 2
        assert list(pool.map(abs, [-1, 2])) == [1, 2]


def test_process_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        process_pool(0)


#: A pool owner: one worker busy in a long task, one idle after a quick one; each records its
#: pid as a file name in the folder given as argv[1].
_POOL_OWNER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from kidneyseg.utils import process_pool

    def record(folder, seconds):
        (Path(folder) / str(os.getpid())).touch()
        time.sleep(seconds)

    if __name__ == "__main__":
        with process_pool(2) as pool:
            busy = pool.submit(record, sys.argv[1], 120)
            while len(os.listdir(sys.argv[1])) < 1:
                time.sleep(0.05)
            pool.submit(record, sys.argv[1], 0)
            busy.result()
    """
)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")
def test_pool_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    script, pids = tmp_path / "owner.py", tmp_path / "pids"
    script.write_text(_POOL_OWNER, encoding="utf-8")
    pids.mkdir()
    owner = subprocess.Popen([sys.executable, str(script), str(pids)], cwd=tmp_path)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(workers) < 2 and time.monotonic() < deadline and owner.poll() is None:
            time.sleep(0.05)
            workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2, f"workers did not start (owner exit code {owner.poll()})"
        time.sleep(0.3)  # the quick worker back waiting for work
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 5
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for pid in workers:  # never leave a stray worker behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
