"""`wsss audit`: walk an artifact's provenance back to the dataset and check every recorded hash.

Each artifact records the sha256 of the upstream artifacts it read. Auditing re-hashes them, recursing into
their own provenance, so a seed map can be traced to its CAMs, its dataset index and the checkpoints used, and
any file changed after the fact (by hand, or by a stage run outside DVC) shows up as CHANGED.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss_core.hashing import sha256_file, sha256_path
from wsss_core.store.dense import read_dense_attributes
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
        return json.loads((path / PROVENANCE_FILE).read_text())
    if not path.exists():
        raise ArtifactError(f"{path}: not found")
    raise ArtifactError(f"{path}: no provenance found (not a wsss artifact)")


@dataclass
class AuditNode:
    name: str
    path: str
    status: str  # OK, CHANGED, MISSING, ROOT
    stage: str = ""
    detail: str = ""
    children: list[AuditNode] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # checkpoint and deep-content lines

    @property
    def ok(self) -> bool:
        own = self.status in ("OK", "ROOT") and not any(" CHANGED" in c or " MISSING" in c for c in self.checks)
        return own and all(child.ok for child in self.children)


def _check_index_content(path: Path) -> list[str]:
    """Deep check of a dataset index: re-hash every image and mask it lists."""
    table, provenance = read_table(path)
    root = Path(provenance.get("details", {}).get("root", "."))
    problems = []
    rows = table.select(["image_id", "image_path", "image_sha256", "mask_path", "mask_sha256"]).to_pylist()
    for row in rows:
        for kind in ("image", "mask"):
            relative, recorded = row[f"{kind}_path"], row[f"{kind}_sha256"]
            if relative is None:
                continue
            file = root / relative
            if not file.is_file():
                problems.append(f"{kind} {file} MISSING")
            elif sha256_file(file) != recorded:
                problems.append(f"{kind} {file} CHANGED")
    checked = f"{len(rows)} images re-hashed under {root}"
    return problems or [f"content: {checked}, all match"]


def _check_checkpoints(provenance: dict[str, Any]) -> list[str]:
    lines = []
    for name, record in sorted(provenance.get("checkpoints", {}).items()):
        checkpoint = record.get("checkpoint") if isinstance(record.get("checkpoint"), dict) else record
        if not isinstance(checkpoint, dict) or "sha256" not in checkpoint:
            lines.append(f"checkpoint {name}: {json.dumps(record, sort_keys=True)}")
            continue
        file = Path(checkpoint["path"])
        if not file.is_file():
            lines.append(f"checkpoint {name}: {file} MISSING (recorded sha256 {checkpoint['sha256'][:12]})")
        elif sha256_file(file) != checkpoint["sha256"]:
            lines.append(f"checkpoint {name}: {file} CHANGED")
        else:
            lines.append(f"checkpoint {name}: {file} OK")
    return lines


def audit(path: str | Path, deep: bool = False, name: str = "artifact", recorded_sha: str | None = None) -> AuditNode:
    """Audit `path` and, recursively, everything it was made from."""
    path = Path(path)
    if not path.exists():
        return AuditNode(name, path.as_posix(), "MISSING", detail=f"recorded sha256 {(recorded_sha or '')[:12]}")
    status = "ROOT"
    if recorded_sha is not None:
        actual = sha256_path(path)
        status = "OK" if actual == recorded_sha else "CHANGED"
    node = AuditNode(name, path.as_posix(), status)
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
    details = provenance.get("details", {})
    if details:
        node.checks.append("details: " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(details.items())))
    node.checks.append("params: " + json.dumps(provenance.get("params", {}), sort_keys=True))
    node.checks.extend(_check_checkpoints(provenance))
    if deep and path.suffix == ".parquet" and node.stage == "prepare":
        node.checks.extend(_check_index_content(path))
    for upstream_name, record in sorted(provenance.get("upstream", {}).items()):
        node.children.append(audit(record["path"], deep, upstream_name, record["sha256"]))
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
