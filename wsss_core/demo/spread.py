"""How far the demo's figures move with the demo CLIP's pretraining seed.

`measure_spread` runs the whole pipeline once per seed, each in its own git worktree of the current commit with
params.yaml's `demo.clip.seed` changed (a params list, not hand runs), collects every evaluated mIoU, and writes
`demo_spread.md` (one row per evaluated artifact: each seed's figure, the mean and the spread, max - min) and
`demo_spread.json`. A difference between two rows of the demo table means something only where it exceeds their
spreads. Run it with `wsss demo-spread` (about one demo run of time per seed and job).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from wsss_core.store.atomic import atomic_file

SPREAD_FILES = ("demo_spread.md", "demo_spread.json")


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


def spread_rows(results: dict[int, dict[str, float]]) -> list[dict]:
    """One row per artifact evaluated under every seed: its figures by seed, mean and spread (max - min)."""
    seeds = sorted(results)
    names = [name for name in results[seeds[0]] if all(name in results[seed] for seed in seeds)]
    rows = []
    for name in names:
        values = [results[seed][name] for seed in seeds]
        rows.append(
            {
                "artifact": name,
                "miou": dict(zip(seeds, values, strict=True)),
                "mean": sum(values) / len(values),
                "spread": max(values) - min(values),
            }
        )
    return rows


def spread_markdown(results: dict[int, dict[str, float]]) -> str:
    seeds = sorted(results)
    lines = [
        "# The demo's spread across pretraining seeds",
        "",
        "mIoU % of every evaluated artifact, one full `dvc repro` per `demo.clip.seed` (`wsss demo-spread`).",
        "",
        "| artifact | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | spread (max - min) |",
        "| --- | " + " | ".join("---" for _ in seeds) + " | --- | --- |",
    ]
    for row in spread_rows(results):
        figures = " | ".join(f"{100 * row['miou'][seed]:.1f}" for seed in seeds)
        lines.append(f"| {row['artifact']} | {figures} | {100 * row['mean']:.1f} | {100 * row['spread']:.1f} |")
    return "\n".join(lines) + "\n"


def measure_spread(repo: Path, seeds: list[int], out_dir: Path, jobs: int = 1) -> dict[int, dict[str, float]]:
    """Run the pipeline once per seed (`jobs` at a time) and write `out_dir/demo_spread.{md,json}`."""
    # Outside the repository: DVC would read a worktree's dvc.yaml files as stages of this one.
    with tempfile.TemporaryDirectory(prefix="wsss_demo_spread_") as work, ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = pool.map(lambda seed: run_with_seed(repo, seed, Path(work)), seeds)
        figures = dict(zip(seeds, runs, strict=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "demo_spread.md", "w") as handle:
        handle.write(spread_markdown(figures))
    with atomic_file(out_dir / "demo_spread.json", "w") as handle:
        handle.write(json.dumps({"seeds": seeds, "rows": spread_rows(figures)}, indent=1, sort_keys=True) + "\n")
    return figures
