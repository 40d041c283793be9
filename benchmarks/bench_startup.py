"""How long the `spikeprune` command takes to answer --help and --version, against a bare Python.

Each command runs as a fresh process, interleaved with the others round by round (a burst of load
from elsewhere hits all alike); the table shows the median wall time of each and its ratio to
`python -c pass`. It also lists which heavy libraries each command imported: none should be, as
answering --help must not load torch, Ray or Optuna.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "ray", "optuna", "transformers", "numba", "pandas", "plotly", "sqlalchemy")
#: Runs the command's ``main`` in-process and prints the heavy modules it imported, for the table.
PROBE = ("import sys\nfrom spikeprune.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
         "sys.stdout = sys.__stdout__\nprint('IMPORTED', ','.join(m for m in {heavy!r} if m in sys.modules))")


def commands(python: str, spikeprune: str) -> dict[str, list[str]]:
    return {"python -c pass": [python, "-c", "pass"], "spikeprune --help": [spikeprune, "--help"],
            "spikeprune --version": [spikeprune, "--version"], "spikeprune search --help": [spikeprune, "search", "--help"]}


def heavy_imports(python: str, argv: list[str]) -> list[str]:
    probe = PROBE.format(argv=argv, heavy=HEAVY)
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("IMPORTED"))
    return [m for m in line.split(" ", 1)[1].split(",") if m]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks/bench_startup.py", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15, help="rounds (default 15)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/bench_startup.json"), help="JSON of the figures")
    args = p.parse_args(argv)
    python = sys.executable
    spikeprune = str(Path(python).with_name("spikeprune"))
    if not os.access(spikeprune, os.X_OK):
        sys.exit(f"error: no spikeprune command beside {python}; run this with the project's venv python")
    cmds = commands(python, spikeprune)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    names = list(cmds)
    for r in range(max(1, args.repeats)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            subprocess.run(cmds[name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    bare = statistics.median(times["python -c pass"])
    rows = {}
    print(f"{'command':28s} {'median s':>9s} {'vs python':>10s}  heavy imports")
    for name, argv_ in cmds.items():
        median = statistics.median(times[name])
        imported = [] if name.startswith("python") else heavy_imports(python, argv_[1:])
        rows[name] = {"median_s": median, "ratio": median / bare, "seconds": times[name], "heavy_imports": imported}
        print(f"{name:28s} {median:9.3f} {median / bare:9.2f}x  {', '.join(imported) or '-'}")
    result = {"repeats": args.repeats, "load_avg": list(os.getloadavg()), "commands": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
