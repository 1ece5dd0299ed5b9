"""How far the demo's figures move with the demo CLIP's pretraining seed and with the machine.

`measure_spread` runs the whole pipeline once per seed, each in its own git worktree of the current commit with
params.yaml's `demo.clip.seed` changed (a params list, not hand runs), collects every evaluated mIoU, and adds the
runs, labelled with this machine's CPU and the commit, to `demo_spread.json` (a run of the same machine and seed
replaces the old one). `demo_spread.md` is written from all of them: a column per run, and per artifact the spread
across seeds (max - min, the largest over the machines) and across machines (max - min, the largest over the seeds
run on more than one machine). A difference between two rows of the demo table means something only where it
exceeds both. Run it with `wsss demo-spread` (about one demo run of time per seed and job); on a second machine,
`wsss demo-spread --seed 0` adds that machine's figures to the committed report.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from wsss_core.store.atomic import atomic_file


def describe_machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This machine's CPU as "<model name> (<vendor>, <n> CPUs)": pinned training gives the same bits only where
    the float libraries take the same code paths, and MKL's depend on the vendor (wsss_core/pinned_cpu.py)."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    return f"{model} ({fields.get('vendor_id', 'unknown vendor')}, {os.cpu_count()} CPUs)"


def seeded_params(params_text: str, seed: int) -> str:
    """params.yaml with demo.clip.seed set to `seed` (everything else as given)."""
    params = yaml.safe_load(params_text)
    params.setdefault("demo", {}).setdefault("clip", {})["seed"] = seed
    return yaml.safe_dump(params, sort_keys=False)


def run_with_seed(repo: Path, seed: int, work: Path) -> dict[str, float]:
    """The mIoU of every evaluated artifact (metrics/<name>/metrics.json) of a `dvc repro` with pretraining seed
    `seed`, run in a fresh worktree of `repo`'s HEAD under `work`."""
    tree = work / f"seed_{seed}"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), "HEAD"], check=True)
    try:
        (tree / "params.yaml").write_text(seeded_params((repo / "params.yaml").read_text(), seed))
        # The stages must import the worktree's wsss_core, not the editable install of `repo`'s working tree
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
        }
        result = subprocess.run(["dvc", "repro"], cwd=tree, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"seed {seed}: dvc repro failed in {tree}:\n{result.stdout[-2000:]}{result.stderr}")
        return {
            path.parent.name: json.loads(path.read_text())["miou"]
            for path in sorted((tree / "metrics").glob("*/metrics.json"))
        }
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)


def _machines(runs: list[dict[str, Any]]) -> list[str]:
    """The machines of `runs`, in the order they first appear."""
    return list(dict.fromkeys(run["machine"] for run in runs))


def merge_runs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`old` and `new`, a run of `new` replacing the old run of its machine and seed; machines in the order they
    first ran, each one's seeds ascending."""
    fresh = {(run["machine"], run["seed"]): run for run in new}
    runs = [run for run in old if (run["machine"], run["seed"]) not in fresh] + new
    machines = _machines(old + new)
    return sorted(runs, key=lambda run: (machines.index(run["machine"]), run["seed"]))


def _largest_range(groups: list[list[float]]) -> float | None:
    """The largest max - min over the groups of two or more figures (None when there is none)."""
    ranges = [max(group) - min(group) for group in groups if len(group) > 1]
    return max(ranges) if ranges else None


def spread_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per artifact evaluated in every run: its figure per run, in the runs' order, and its spread across
    seeds (on one machine) and across machines (for one seed), each the largest found; None where not measured."""
    names = [name for name in runs[0]["miou"] if all(name in run["miou"] for run in runs)]
    machines = _machines(runs)
    seeds = sorted({run["seed"] for run in runs})
    rows = []
    for name in sorted(names):
        by_machine = [[run["miou"][name] for run in runs if run["machine"] == machine] for machine in machines]
        by_seed = [[run["miou"][name] for run in runs if run["seed"] == seed] for seed in seeds]
        rows.append(
            {
                "artifact": name,
                "miou": [run["miou"][name] for run in runs],
                "across_seeds": _largest_range(by_machine),
                "across_machines": _largest_range(by_seed),
            }
        )
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def spread_markdown(runs: list[dict[str, Any]]) -> str:
    machines = _machines(runs)
    letter = {machine: chr(ord("A") + i) for i, machine in enumerate(machines)}
    lines = [
        "# The demo's spread across pretraining seeds and machines",
        "",
        "mIoU % of every evaluated artifact, one full `dvc repro` per run (`wsss demo-spread`), each run on a machine"
        " (A, B, ...) with one `demo.clip.seed`. Across seeds: max - min over one machine's seeds; across machines:"
        " max - min over the machines that ran one seed; each the largest found.",
        "",
    ]
    for machine in machines:
        commits = sorted({run["commit"][:7] for run in runs if run["machine"] == machine})
        lines.append(f"- {letter[machine]}: {machine}, commit {', '.join(commits)}")
    header = " | ".join(f"{letter[run['machine']]} seed {run['seed']}" for run in runs)
    lines += [
        "",
        f"| artifact | {header} | across seeds | across machines |",
        "| --- | " + " | ".join("---" for _ in runs) + " | --- | --- |",
    ]
    for row in spread_rows(runs):
        figures = " | ".join(_percent(value) for value in row["miou"])
        spreads = f"{_percent(row['across_seeds'])} | {_percent(row['across_machines'])}"
        lines.append(f"| {row['artifact']} | {figures} | {spreads} |")
    return "\n".join(lines) + "\n"


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in a demo_spread.json (none if there is no such file)."""
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    if "runs" not in record:
        raise ValueError(f"{path}: no 'runs' (an older report without machines); move it away to start a new one")
    return record["runs"]


def measure_spread(
    repo: Path, seeds: list[int], out_dir: Path, jobs: int = 1, *, replace: bool = False
) -> list[dict[str, Any]]:
    """Run the pipeline once per seed (`jobs` at a time) on this machine, add the runs to `out_dir/demo_spread.json`
    (or replace its runs, `replace`), write `out_dir/demo_spread.md` from all of them and return them."""
    old = [] if replace else read_runs(out_dir / "demo_spread.json")
    git = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    commit = git.stdout.strip()
    machine = describe_machine()
    # Outside the repository: DVC would read a worktree's dvc.yaml files as stages of this one.
    with tempfile.TemporaryDirectory(prefix="wsss_demo_spread_") as work, ThreadPoolExecutor(max_workers=jobs) as pool:
        figures = list(pool.map(lambda seed: run_with_seed(repo, seed, Path(work)), seeds))
    new = [
        {"machine": machine, "commit": commit, "seed": seed, "miou": miou}
        for seed, miou in zip(seeds, figures, strict=True)
    ]
    runs = merge_runs(old, new)
    write_report(out_dir, runs)
    return runs


def write_report(out_dir: Path, runs: list[dict[str, Any]]) -> None:
    """`out_dir/demo_spread.json` (the runs and their rows) and `out_dir/demo_spread.md` (the table)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "demo_spread.md", "w") as handle:
        handle.write(spread_markdown(runs))
    with atomic_file(out_dir / "demo_spread.json", "w") as handle:
        handle.write(json.dumps({"runs": runs, "rows": spread_rows(runs)}, indent=1, sort_keys=True) + "\n")
