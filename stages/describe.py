"""describe stage: ExCEL's attribute bank for one run (`describe.runs.<name>`) -> artifacts/descriptions_<name>/.

The descriptions come from the run's source: `file` (the YAML or JSON file in `reads`) or `openai` (an
OpenAI-compatible chat-completions server; its key from the environment variable named by openai.api_key_env, never
from params). They are prefixed, encoded with the CLIP text encoder of models.clip and clustered with KMeans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from wsss_core.stage import run_stage

app = typer.Typer(add_completion=False)


@app.command()
def main(
    name: str = typer.Argument(..., help="a key of describe.runs"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params"),
    index_dir: Path = typer.Option(Path("artifacts/index"), help="the index whose class names are described"),
    out: Path = typer.Option(None, help="default: artifacts/descriptions_<name>"),
    device: str = typer.Option(None, help="overrides describe.device (auto: CUDA when present)"),
) -> None:
    def body(params: dict[str, Any], log: dict[str, Any]) -> None:
        from wsss_core.drivers.describe import describe_classes
        from wsss_core.params import require_entry

        require_entry(params, "describe.runs", name)
        if device is not None:
            params["describe"]["device"] = device
        split = params["dataset"]["train_split"]
        target = out if out is not None else Path("artifacts") / f"descriptions_{name}"
        log.update(describe_classes(name, index_dir / f"{split}.parquet", target, params))
        log["artifacts"] = {"descriptions": str(target)}

    run_stage(f"describe_{name}", body, params_file)


if __name__ == "__main__":
    app()
