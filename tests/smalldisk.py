"""A small filesystem of its own (a tmpfs of a few MB, mounted by root) to fill and free: a full
disk for real, under the run folder of a search (tests/test_journal.py, tests/test_chaos.py and
the chaos benchmark)."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

FILL = ".disk-fill"


@dataclass
class SmallDisk:
    """A tmpfs of ``size_mb`` mounted on ``path``."""

    path: Path
    size_mb: int
    full: bool = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"cannot mount a {self.size_mb} MB tmpfs on {self.path} ({done.stderr.strip()}); "
                               f"a disk of its own needs root")

    def fill(self) -> int:
        """Take every free byte; how many were free."""
        stat = os.statvfs(self.path)
        fd = os.open(self.path / FILL, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        block = b"\0" * 2**16
        try:
            while os.write(fd, block):
                pass
        except OSError:   # ENOSPC: the disk is full
            pass
        finally:
            os.close(fd)
        self.full = True
        return stat.f_bavail * stat.f_frsize

    def free(self) -> None:
        (self.path / FILL).unlink(missing_ok=True)
        self.full = False

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
