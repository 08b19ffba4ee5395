"""A MetaSchedule tuning database directory shared by tuners and builds, keyed by target.

TVM's JSONDatabase matches records by workload only: a schedule tuned for one
CPU would be applied to another. Here every target gets its own sub-folder,

    DIR/<target name>-<hash of the TVM target dict>/
        target.json                   the target it was tuned for
        database_workload.json        TVM JSONDatabase files
        database_tuning_record.json
        .lock                         flock: writers exclusive, readers shared

and a build looks only in its own target's folder. Tuners never write the shared
files while tuning: each tunes into a private JSONDatabase and merges it in under
the exclusive lock when done, so two tuners sharing one DIR at once cannot
interleave half-written lines.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from ..ir.errors import BuildError
from .targets import ResolvedTarget

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def target_key(target: ResolvedTarget) -> str:
    digest = hashlib.sha256(json.dumps(target.tvm, sort_keys=True).encode()).hexdigest()[:12]
    return f"{target.name}-{digest}"


def target_dir(db_dir: str | os.PathLike, target: ResolvedTarget) -> Path:
    return Path(db_dir) / target_key(target)


@contextlib.contextmanager
def locked(folder: Path, exclusive: bool):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def json_database(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(path_workload=str(folder / WORKLOADS), path_tuning_record=str(folder / RECORDS),
                                    allow_missing=True)


def load_for(db_dir: str | os.PathLike, target: ResolvedTarget):
    """The records tuned for `target` as an in-memory database, or None when `db_dir`
    has none for it. BuildError when `db_dir` is not a tuning database."""
    root = Path(db_dir)
    if not root.is_dir():
        raise BuildError(f"tuning database {root} does not exist (create it with `onnxforge tune ... --db {root}`)")
    folder = target_dir(root, target)
    if not (folder / RECORDS).is_file():
        return None
    from tvm.s_tir import meta_schedule as ms

    memory = ms.database.MemoryDatabase()
    try:
        with locked(folder, exclusive=False):
            stored = json_database(folder)
            for record in stored.get_all_tuning_records():
                memory.commit_workload(record.workload.mod)
                memory.commit_tuning_record(record)
    except Exception as exc:
        raise BuildError(f"cannot read the tuning database {folder}: {exc}") from exc
    return memory


def record_key(record) -> tuple:
    from tvm_ffi import structural_hash

    return (structural_hash(record.workload.mod), tuple(float(s) for s in record.run_secs or ()),
            str(record.trace.as_json()))


def seed(private, db_dir: str | os.PathLike, target: ResolvedTarget) -> set:
    """Copy `db_dir`'s records for `target` into `private`, so that a new tune starts
    from the best schedules found so far. Returns their keys (see merge_into)."""
    stored = load_for(db_dir, target) if Path(db_dir).is_dir() else None
    keys = set()
    for record in stored.get_all_tuning_records() if stored is not None else []:
        private.commit_workload(record.workload.mod)
        private.commit_tuning_record(record)
        keys.add(record_key(record))
    return keys


def merge_into(db_dir: str | os.PathLike, target: ResolvedTarget, private, skip: set = frozenset(),
               keep=lambda record: True) -> int:
    """Append the records of the database `private` (except those whose record_key
    is in `skip`, and those `keep` refuses) to `db_dir`'s folder for `target`, under
    the exclusive lock. Returns the number of records added."""
    from tvm.s_tir import meta_schedule as ms

    folder = target_dir(db_dir, target)
    records = [r for r in private.get_all_tuning_records() if (not skip or record_key(r) not in skip) and keep(r)]
    with locked(folder, exclusive=True):
        meta = folder / "target.json"
        if not meta.exists():
            meta.write_text(json.dumps({"name": target.name, "tvm": target.tvm}, indent=1) + "\n")
        shared = json_database(folder)
        for record in records:
            workload = shared.commit_workload(record.workload.mod)
            shared.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs, record.target,
                                                                 record.args_info))
    return len(records)


def describe(db_dir: str | os.PathLike) -> list[dict]:
    """The targets a database folder holds records for, with record counts."""
    out = []
    for meta in sorted(Path(db_dir).glob("*/target.json")):
        records = meta.parent / RECORDS
        count = sum(1 for line in records.open() if line.strip()) if records.exists() else 0
        out.append({"key": meta.parent.name, **json.loads(meta.read_text()), "records": count})
    return out
