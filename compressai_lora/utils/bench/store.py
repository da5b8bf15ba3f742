"""The run's per-job results in one file: ``OUTPUT/records.jsonl``.

eval_model writes one JSON file per image and rate point, the anchors one per
image and codec; that is what they resume from.  A long run (whole images)
outlives the machine it started on, so the bench also keeps every such file
in one ``records.jsonl`` (one line per file, sorted by path): ``pack`` after
each domain and when interrupted, ``unpack`` before it resumes.  Keep that
file (in git, say) and the same command resumes anywhere, or rebuilds the
report with ``--report-only``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import write_bytes, write_json
from .errors import BenchError

__all__ = ["RECORDS", "pack", "unpack"]

RECORDS = "records.jsonl"
#: the run's own outputs, rebuilt from the records
_OUTPUTS = ("results.json", "subset.json")


def _job_files(output: Path) -> list[Path]:
    """The per-job JSON files under ``output`` (not the crops' folder)."""
    files = []
    for path in sorted(output.rglob("*.json")):
        rel = path.relative_to(output)
        if rel.parts[0] == "images" or str(rel) in _OUTPUTS:
            continue
        files.append(path)
    return files


def _read(output: Path) -> dict[str, Any]:
    """The records kept so far: relative path -> JSON content."""
    path = output / RECORDS
    if not path.is_file():
        return {}
    records = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
            records[str(rec["file"])] = rec["data"]
        except (ValueError, KeyError, TypeError) as err:
            raise BenchError(
                f"{path} line {n} is not a record ({err}): fix or move the file"
            ) from None
    return records


def pack(output: Path) -> int:
    """Merge the per-job files into ``records.jsonl`` (a file wins over its
    older record); the number of records."""
    records = _read(output)
    for path in _job_files(output):
        try:
            records[path.relative_to(output).as_posix()] = json.loads(path.read_text())
        except ValueError:  # a file written by hand or cut short: not a result
            continue
    lines = [
        json.dumps({"file": f, "data": records[f]}, separators=(",", ":"))
        for f in sorted(records)
    ]
    write_bytes(output / RECORDS, "".join(x + "\n" for x in lines).encode())
    return len(records)


def unpack(output: Path) -> int:
    """Write back the recorded files that are missing; how many."""
    written = 0
    for rel, data in _read(output).items():
        path = output / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BenchError(f"{output / RECORDS}: {rel} is outside the output")
        if path.exists():
            continue
        write_json(path, data)
        written += 1
    return written
