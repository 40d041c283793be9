"""Safety: nothing unpickles, servers listen on loopback by default, exports stay inside their
folder, and study names cannot become paths."""
from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from spikeprune.cli import build_parser, main
from spikeprune.errors import SpikepruneError
from spikeprune.results._export import trial_dir
from spikeprune.search._settings import check_study_name
from spikeprune.search._storage import default_storage, open_storage

from helpers import free_port

REPO = Path(__file__).resolve().parents[1]
SKIP = {".venv", "build", "dist", ".git", "__pycache__", "runs"}


# ------------------------------------------------------------------------------- pickle
def project_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.py") if not SKIP & set(p.relative_to(REPO).parts))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_loads(source: str) -> list[str]:
    """What in ``source`` could unpickle: pickle-family imports and calls, torch.load without
    weights_only=True, yaml.load without a safe loader, np.load with allow_pickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {m}" for m in modules
                      if m.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal")]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"line {node.lineno}: {name}("
        if name.split(".")[-1] in ("read_pickle", "to_pickle") or name.startswith(("pickle.", "cloudpickle.")):
            found.append(where)
        elif name in ("torch.load",):
            safe = _keyword(node, "weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(where + " without weights_only=True")
        elif name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or not _dotted(loader).endswith(("SafeLoader", "CSafeLoader")):
                found.append(where + " without SafeLoader")
        elif name in ("np.load", "numpy.load"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(where + " with allow_pickle")
    return found


def test_the_scanner_catches_what_it_should():
    bad = ("import pickle\nimport cloudpickle as cp\nfrom joblib import load\ntorch.load(f)\n"
           "torch.load(f, weights_only=False)\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)\n"
           "np.load(f, allow_pickle=True)\ndf = pd.read_pickle(p)\n")
    assert len(unsafe_loads(bad)) == 9
    good = ("torch.load(f, weights_only=True)\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
            "np.load(f)\nnp.load(f, allow_pickle=False)\n# import pickle\nx = 'pickle.loads'\n")
    assert unsafe_loads(good) == []


def test_no_pickle_loading_anywhere_in_the_project():
    files = project_files()
    assert len(files) > 20 and any(p.name == "_driver.py" for p in files)
    found = {str(p.relative_to(REPO)): hits for p in files
             if p.name != "test_safety.py" and (hits := unsafe_loads(p.read_text(encoding="utf-8")))}
    assert not found, found


# -------------------------------------------------------------------------------- servers
def listening(pids: set[int] | None = None, port: int | None = None) -> list[str]:
    """Listening TCP addresses ("ip:port"), of the given processes or on the given port."""
    owners: dict[str, int] = {}
    if pids is not None:
        for pid in pids:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owners[target[8:-1]] = pid
            except OSError:  # the process ended meanwhile
                continue
    out = []
    for family in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{family}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            if (pids is not None and fields[9] not in owners) or (port is not None and int(hex_port, 16) != port):
                continue
            raw = bytes.fromhex(hex_ip)
            if family == "tcp":
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, raw)
            out.append(f"{ip}:{int(hex_port, 16)}")
    return out


def loopback(address: str) -> bool:
    return address.rsplit(":", 1)[0] in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


@pytest.mark.integration
def test_a_local_ray_cluster_listens_on_loopback_only():
    """Even when Ray was imported before the search, without any RAY_* variable set."""
    code = ("import ray, sys\n"
            "from spikeprune.search._cluster import ray_session\nfrom spikeprune.search._settings import SearchSettings\n"
            "with ray_session(SearchSettings(prepared='', workers=1)):\n"
            "    print('up', flush=True)\n"
            "    sys.stdin.readline()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")  # quiet, no token file: not binding
    ray = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert ray.stdout.readline().strip() == "up"
        addresses = listening(process_tree(ray.pid))
    finally:
        ray.stdin.close()
        ray.wait(timeout=120)
    assert len(addresses) >= 3  # GCS, raylet, object manager at least
    assert all(loopback(a) for a in addresses), addresses


@pytest.mark.integration
def test_the_dashboard_listens_on_loopback_by_default(tmp_path):
    assert build_parser().parse_args(["dashboard", "st"]).host == "127.0.0.1"
    optuna.create_study(storage=open_storage(default_storage(tmp_path, "st")), study_name="st")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "spikeprune", "dashboard", "st", "--run-dir", str(tmp_path),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not listening(port=port):
            assert server.poll() is None, "the dashboard exited"
            assert time.monotonic() < deadline, "the dashboard did not start listening in 120 s"
            time.sleep(0.1)
        assert all(loopback(a) for a in listening(port=port)), listening(port=port)
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.integration
def test_the_test_database_listens_on_loopback_only(postgres_url):
    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    addresses = listening(port=port)
    assert addresses and all(loopback(a) for a in addresses), addresses
    script = (REPO / "scripts" / "services.sh").read_text()
    assert "PG_HOST=127.0.0.1" in script and "listen_addresses = '$PG_HOST'" in script


# -------------------------------------------------------------------------------- exports
def frozen(number: int) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(values=[0.5, 1.0])
    trial.number = number
    return trial


def test_export_folders_stay_inside_the_output_folder(tmp_path):
    out = tmp_path / "export"
    assert trial_dir(out, frozen(3)) == (out / "trial-00003").resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out.mkdir()
    (out / "trial-00007").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SpikepruneError, match="is outside .*; remove the symlink or pick another output folder"):
        trial_dir(out, frozen(7))
    (out / "trial-00008").symlink_to("../elsewhere/../..")
    with pytest.raises(SpikepruneError, match="is outside"):
        trial_dir(out, frozen(8))


def test_export_through_a_symlink_writes_nothing_outside(tmp_path, capsys):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    study = optuna.create_study(storage=open_storage(default_storage(run, "st")), study_name="st",
                                directions=["maximize", "minimize"])
    study.set_user_attr("spikeprune", {"task": "sst2", "energy": "float45nm",
                                       "objectives": [{"name": "metric", "direction": "maximize"},
                                                      {"name": "sops", "direction": "minimize"}]})
    study.add_trial(optuna.trial.create_trial(values=[0.5, 100.0], user_attrs={"compression": {"heads": 1}}))
    (run / "out").mkdir()
    (run / "out" / "trial-00000").symlink_to(outside, target_is_directory=True)
    code = main(["export", "st", "--trial", "0", "--run-dir", str(run), "--out", str(run / "out"),
                 "--prepared", str(tmp_path / "unused")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: export folder") and "remove the symlink" in err
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------------------- study names
@pytest.mark.parametrize("name", ["../x", "..", ".", "", "a" * 65, "a/b", "/abs", "a\\b", "x\n", "na me", "ü"])
def test_study_names_that_could_become_paths_are_refused(name, tmp_path):
    with pytest.raises(SpikepruneError, match="use 1-64 letters, digits, '-', '_' or '.'"):
        check_study_name(name)
    with pytest.raises(SpikepruneError):
        default_storage(tmp_path / "runs", name)
    assert not (tmp_path / "runs").exists()


def test_a_bad_study_name_on_the_command_line_touches_nothing(tmp_path, capsys):
    for command in (["report", "../../escape", "--run-dir", str(tmp_path / "runs")],
                    ["status", "../escape", "--run-dir", str(tmp_path / "runs")]):
        assert main(command) == 2
        assert capsys.readouterr().err.startswith("error: study name")
    assert list(tmp_path.iterdir()) == []


def test_good_study_names_pass():
    for name in ("sst2-joint", "a" * 64, "v1.2_final"):
        assert check_study_name(name) == name
