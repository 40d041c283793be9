"""Search drivers run as separate processes (`python -m spikeprune search ...`), as users run
them: the reliability and cluster tests start several at once and wait for all of them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 400.0


def start(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """``spikeprune search`` with ``args``, from the repository, output captured (or appended to
    ``log``, for drivers that run longer than a pipe's buffer holds)."""
    out = subprocess.PIPE if log is None else open(log, "a")
    try:
        return subprocess.Popen([sys.executable, "-m", "spikeprune", "search", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True)
    finally:
        if log is not None:
            out.close()


def finish(*drivers: subprocess.Popen, code: int = 0, timeout: float = DEADLINE_S) -> list[str]:
    """Wait for the drivers (killing any still running after ``timeout``); each must exit with
    ``code`` and no traceback. Their stdout."""
    try:
        outputs = [d.communicate(timeout=timeout) for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                d.kill()
                d.wait()
    for d, (out, err) in zip(drivers, outputs):
        assert d.returncode == code and "Traceback" not in err, (d.returncode, err[-3000:])
    return [out for out, _ in outputs]
