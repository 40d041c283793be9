"""Session fixtures shared by the tests: GLUE data, PostgreSQL, Chromium and a local Ray."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"

# Set before anything imports transformers or ray (both read them at import): there is no
# internet, so any Hugging Face hub access must fail fast; Ray must bind to 127.0.0.1 (not the
# machine's external address), send no usage stats and write no auth token (docs/DESIGN.md §8).
os.environ.update(
    HF_HUB_OFFLINE="1",
    RAY_USAGE_STATS_ENABLED="0",
    RAY_AUTH_MODE="disabled",
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
)


@functools.cache
def _services_env() -> dict[str, str]:
    """Start PostgreSQL and install chromium if needed (scripts/services.sh, idempotent) and
    return the variables it exports, so the URL and paths are defined in one place."""
    for command in ("start", "env"):
        done = subprocess.run(["bash", str(SERVICES), command], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"`bash {SERVICES} {command}` failed:\n{done.stderr}", pytrace=False)
    exports = (shlex.split(line)[1] for line in done.stdout.splitlines() if line.startswith("export "))
    return dict(item.split("=", 1) for item in exports)


def _service_setting(name: str) -> str:
    """The value of `name` from the environment (set by `make test`), else from services.sh."""
    return os.environ.get(name) or _services_env()[name]


#: Fixtures that start a service: a test that uses one must be marked ``integration``.
SERVICES_FIXTURES = ("ray_local", "postgres_url", "chromium_path")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run a test that starts a service without the ``integration`` mark, so that
    ``make test-fast`` (``-m "not integration"``) never starts one."""
    unmarked = [item.nodeid for item in items if set(SERVICES_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError(f"mark these tests @pytest.mark.integration (they use {', '.join(SERVICES_FIXTURES)}): "
                                + ", ".join(unmarked))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The GLUE data (classic download layout): $SPIKEPRUNE_GLUE_DIR, else ../shared/glue."""
    path = Path(os.environ.get("SPIKEPRUNE_GLUE_DIR") or REPO.parent / "shared" / "glue")
    if not path.is_dir():
        pytest.fail(
            f"GLUE data not found at {path}: set SPIKEPRUNE_GLUE_DIR to the folder holding SST-2/, CoLA/, ...",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the test database ($SPIKEPRUNE_TEST_POSTGRES_URL, else the private
    cluster that scripts/services.sh starts on 127.0.0.1:55432). Shared by all tests: use
    unique study names."""
    return _service_setting("SPIKEPRUNE_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """Debian's chromium, for headless browser tests ($SPIKEPRUNE_CHROMIUM, else installed by
    scripts/services.sh). Run it with --headless --no-sandbox --disable-gpu (we are root) and
    --disable-background-networking, as there is no internet."""
    path = Path(_service_setting("SPIKEPRUNE_CHROMIUM"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"chromium not found at {path}: run `bash scripts/services.sh start`", pytrace=False)
    return path


@pytest.fixture(scope="session")
def ray_local() -> Iterator[str]:
    """A private local Ray instance (2 CPUs, no dashboard, on 127.0.0.1) for the whole session;
    yields its address for code that connects with --ray-address. Starting it takes ~5-10 s."""
    import ray

    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=512 * 2**20,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory, glue_dir) -> Path:
    """A prepared base of the ``tiny`` preset on SST-2 (seconds), shared by every test that
    needs a real teacher, student and importance scores."""
    from spikeprune.training._prepare import prepare

    return prepare("sst2", glue_dir, tmp_path_factory.mktemp("prepared"), preset="tiny")


@pytest.fixture
def small_disk(tmp_path) -> Iterator["SmallDisk"]:
    """A 4 MB filesystem of its own at ``tmp_path / "disk"`` (tests/smalldisk.py), to fill for real."""
    from smalldisk import SmallDisk

    if os.geteuid() != 0:
        pytest.fail("a filesystem of its own needs root to mount (tests/smalldisk.py)", pytrace=False)
    disk = SmallDisk(tmp_path / "disk", 4)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()
