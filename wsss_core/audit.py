"""`wsss audit`: walk an artifact's provenance back to the dataset and check every recorded hash.

Each artifact records the sha256 of the upstream artifacts it read. Auditing re-hashes them, recursing into
their own provenance, so a seed map can be traced to its CAMs, its dataset index and the checkpoints used, and
any file changed after the fact (by hand, or by a stage run outside DVC) shows up as CHANGED.

Every artifact also carries a seal, the hash of its own content (`store/seal.py`); each node of the audit, the
artifact asked about included, is checked against its seal, so a change to the artifact itself is caught too.
Artifacts written before seals existed audit as UNSEALED, a note rather than a failure.

Recorded paths are relative to the project root (the directory stages run in), so they are resolved from the
nearest ancestor of the audited artifact that holds `dvc.yaml` or `.dvc/`, wherever `wsss audit` is run from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss_core.hashing import sha256_file, sha256_path
from wsss_core.store.dense import read_dense_attributes
from wsss_core.store.seal import CHANGED, verify_content, without_seal
from wsss_core.store.table import ArtifactError, read_parquet_provenance, read_table

PROVENANCE_FILE = "provenance.json"


def read_provenance(path: str | Path) -> dict[str, Any]:
    """Provenance of any artifact: a parquet table, a zarr group, or a directory with provenance.json."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return read_parquet_provenance(path)
    if path.is_file() and (path.parent / PROVENANCE_FILE).is_file():
        path = path.parent  # a file of a report directory, e.g. metrics.json
    if path.is_dir() and (path / "zarr.json").is_file():
        return read_dense_attributes(path)["provenance"]
    if path.is_dir() and (path / PROVENANCE_FILE).is_file():
        return without_seal(json.loads((path / PROVENANCE_FILE).read_text()))
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    raise ArtifactError(f"{path}: no provenance found (not a wsss artifact)")


@dataclass
class AuditNode:
    name: str
    path: str
    status: str  # OK, CHANGED (recorded hash or own seal), MISSING, ROOT
    stage: str = ""
    detail: str = ""
    children: list[AuditNode] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # seal, checkpoint and deep-content lines

    @property
    def ok(self) -> bool:
        own = self.status in ("OK", "ROOT") and not any(" CHANGED" in c or " MISSING" in c for c in self.checks)
        return own and all(child.ok for child in self.children)


def find_project_root(path: str | Path) -> Path:
    """The project an artifact belongs to: the nearest ancestor holding dvc.yaml or .dvc/, else the current
    directory. Recorded paths are relative to it."""
    start = Path(os.path.abspath(path)).parent
    for directory in (start, *start.parents):
        if (directory / "dvc.yaml").is_file() or (directory / ".dvc").is_dir():
            return directory
    return Path.cwd()


def _resolve(recorded: str | Path, project: Path) -> Path:
    """A recorded path on this machine: relative ones from the project root, absolute ones as they are."""
    recorded = Path(recorded)
    return recorded if recorded.is_absolute() else project / recorded


def _check_index_content(path: Path, project: Path) -> list[str]:
    """Deep check of a dataset index: re-hash every image and mask it lists."""
    table, provenance = read_table(path)
    recorded_root = provenance.get("details", {}).get("root", ".")
    root = _resolve(recorded_root, project)
    problems = []
    rows = table.select(["image_id", "image_path", "image_sha256", "mask_path", "mask_sha256"]).to_pylist()
    for row in rows:
        for kind in ("image", "mask"):
            relative, recorded = row[f"{kind}_path"], row[f"{kind}_sha256"]
            if relative is None:
                continue
            file = root / relative
            shown = (Path(recorded_root) / relative).as_posix()
            if not file.is_file():
                problems.append(f"{kind} {shown} MISSING")
            elif sha256_file(file) != recorded:
                problems.append(f"{kind} {shown} CHANGED")
    checked = f"{len(rows)} images re-hashed under {recorded_root}"
    return problems or [f"content: {checked}, all match"]


def _check_checkpoints(provenance: dict[str, Any], project: Path) -> list[str]:
    lines = []
    for name, record in sorted(provenance.get("checkpoints", {}).items()):
        checkpoint = record.get("checkpoint") if isinstance(record.get("checkpoint"), dict) else record
        if not isinstance(checkpoint, dict) or "sha256" not in checkpoint:
            lines.append(f"checkpoint {name}: {json.dumps(record, sort_keys=True)}")
            continue
        file, shown = _resolve(checkpoint["path"], project), checkpoint["path"]
        if not file.is_file():
            lines.append(f"checkpoint {name}: {shown} MISSING (recorded sha256 {checkpoint['sha256'][:12]})")
        elif sha256_file(file) != checkpoint["sha256"]:
            lines.append(f"checkpoint {name}: {shown} CHANGED")
        else:
            lines.append(f"checkpoint {name}: {shown} OK")
    return lines


def audit(
    path: str | Path,
    deep: bool = False,
    name: str = "artifact",
    recorded_sha: str | None = None,
    project: str | Path | None = None,
) -> AuditNode:
    """Audit `path` and, recursively, everything it was made from.

    `project` is the directory recorded upstream paths are relative to (default: `find_project_root(path)`).
    """
    path = Path(path)
    project = Path(project) if project is not None else find_project_root(path)
    return _audit(path, path.as_posix(), deep, name, recorded_sha, project)


def _audit(path: Path, shown: str, deep: bool, name: str, recorded_sha: str | None, project: Path) -> AuditNode:
    if not path.exists():
        return AuditNode(name, shown, "MISSING", detail=f"recorded sha256 {(recorded_sha or '')[:12]}")
    status = "ROOT"
    if recorded_sha is not None:
        actual = sha256_path(path)
        status = "OK" if actual == recorded_sha else "CHANGED"
    node = AuditNode(name, shown, status)
    if status == "CHANGED":
        node.detail = f"recorded {recorded_sha[:12]}, now {actual[:12]}"
    try:
        provenance = read_provenance(path)
    except ArtifactError as error:
        if recorded_sha is None:
            raise  # the artifact asked about must itself carry provenance
        node.detail = (node.detail + "; " if node.detail else "") + str(error)
        return node
    node.stage = provenance.get("stage", "?")
    content, content_detail = verify_content(path)
    if content == CHANGED:
        node.status = CHANGED
        node.detail = (node.detail + "; " if node.detail else "") + content_detail
    else:
        node.checks.append(f"seal: {content} ({content_detail})")
    details = provenance.get("details", {})
    if details:
        node.checks.append("details: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(details.items())))
    node.checks.append("params: " + json.dumps(provenance.get("params", {}), sort_keys=True))
    node.checks.extend(_check_checkpoints(provenance, project))
    if deep and path.suffix == ".parquet" and node.stage == "prepare":
        node.checks.extend(_check_index_content(path, project))
    for upstream_name, record in sorted(provenance.get("upstream", {}).items()):
        upstream = _resolve(record["path"], project)
        node.children.append(_audit(upstream, record["path"], deep, upstream_name, record["sha256"], project))
    return node


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def format_audit(node: AuditNode, prefix: str = "", last: bool = True, top: bool = True) -> list[str]:
    branch = "" if top else ("└── " if last else "├── ")
    stage = f" [{node.stage}]" if node.stage else ""
    detail = f" ({node.detail})" if node.detail else ""
    lines = [f"{prefix}{branch}{node.name}: {node.path} {node.status}{stage}{detail}"]
    inner = prefix + ("" if top else ("    " if last else "│   "))
    for check in node.checks:
        lines.append(f"{inner}{'│   ' if node.children else '    '}{check}")
    for i, child in enumerate(node.children):
        lines.extend(format_audit(child, inner, i == len(node.children) - 1, top=False))
    return lines
