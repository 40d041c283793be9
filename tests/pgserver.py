"""A throw-away PostgreSQL server of its own (initdb in a temporary folder, 127.0.0.1, a free port),
for the tests and the chaos benchmark that stop and restart the database under a search without
disturbing anything else that uses the shared test server."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers import free_port


@dataclass
class PrivatePostgres:
    """One PostgreSQL cluster: ``stop`` and ``start`` it at will; ``url`` names its database."""

    bindir: Path
    root: Path
    port: int
    database: str

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def run(self, *command: str) -> None:
        owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(owner + list(command), cwd="/", capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {done.stderr[-2000:]}")

    def start(self) -> None:
        self.run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.root / "data"), "-l", str(self.root / "log"),
                 "-w", "-t", "120")

    def stop(self) -> None:
        self.run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", "fast", "-w", "-t", "120")


@contextmanager
def private_postgres(database: str = "outage") -> Iterator[PrivatePostgres]:
    """Needs the PostgreSQL server binaries, which ``scripts/services.sh start`` installs."""
    initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not initdbs:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql; run scripts/services.sh start")
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="spikeprune-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(initdbs[-1].parent, root, port, database)
    try:
        pg.run(str(pg.bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
               "--locale=C")
        with open(root / "data" / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
                       f"fsync = off\nsynchronous_commit = off\n")
        pg.start()
        pg.run(str(pg.bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-qc",
               f"create database {database}", "postgres")
        yield pg
    finally:
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                       + [str(pg.bindir / "pg_ctl"), "stop", "-D", str(root / "data"), "-m", "immediate"],
                       cwd="/", capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
