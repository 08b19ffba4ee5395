"""onnxforge tune: MetaSchedule into a target-keyed database that compile --db applies,
safe to share between tuners, measuring here or on RPC servers behind a tracker."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnxforge
from onnxforge.codegen import resolve_target, tune_db
from onnxforge.codegen.tune import tune
from onnxforge.ir import BuildError
from onnxforge.passes.check import compare_outputs, run_ort
from onnxforge.tools.cli import main
from tests.codegen import models

F = TensorProto.FLOAT


def tunable_model() -> onnx.ModelProto:
    """Two small tunable kernels (a row mean; its subtraction and Tanh) and nothing for
    OpenBLAS or the C kernels (a Softmax would be kernels.c's)."""
    g = models.Graph(5)
    x = g.op("Mul", "x", g.const(g.rng.standard_normal(64).astype(np.float32)))
    y = g.op("Sub", x, g.op("ReduceMean", x, axes=[1], keepdims=1))
    g.op("Tanh", y, out="y")
    return g.model([("x", [16, 64], F)], [("y", [16, 64], F)])


MEASURED_DEFAULTS = []


def _keep_every_record(monkeypatch):
    """A few trials on tiny kernels often lose to the default schedule, and tune keeps
    only records that beat it: the database tests here need records, so they measure the
    default (kept in MEASURED_DEFAULTS) but report it unknown, which keeps every record."""
    from onnxforge.codegen import tune as tune_module

    real = tune_module._default_times

    def measured_but_unknown(ms, contexts, *args):
        MEASURED_DEFAULTS.append(real(ms, contexts, *args))
        return [None] * len(contexts)

    monkeypatch.setattr(tune_module, "_default_times", measured_but_unknown)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tune")
    path = folder / "m.onnx"
    onnx.save(tunable_model(), path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _keep_every_record(monkeypatch)
        result = tune(path, "x86", db=folder / "db", trials=4, trials_per_iter=2)
    return path, folder / "db", result


@pytest.fixture
def keep_every_record(monkeypatch):
    _keep_every_record(monkeypatch)


def test_the_default_schedule_is_measured_for_every_kernel(tuned):
    _, _, result = tuned
    assert len(MEASURED_DEFAULTS[0]) == len(result.kernels) >= 2
    assert all(t is not None and 0 < t < 0.1 for t in MEASURED_DEFAULTS[0])


def test_records_that_lose_to_the_default_schedule_are_not_kept(tmp_path, monkeypatch):
    from onnxforge.codegen import tune as tune_module

    path = tmp_path / "m.onnx"
    onnx.save(tunable_model(), path)
    # a default faster than any real kernel: no tuned schedule beats it
    monkeypatch.setattr(tune_module, "_default_times", lambda ms, contexts, *a: [1e-12] * len(contexts))
    result = tune(path, "x86", db=tmp_path / "db", trials=4, trials_per_iter=2)
    assert result.trials >= 1 and any(k.best_ms for k in result.kernels)
    assert result.records_added == 0 and not any(k.kept for k in result.kernels)
    assert all(k.build_ms == k.default_ms == pytest.approx(1e-9) for k in result.kernels)
    pkg = onnxforge.compile(path, "x86", "-O2", db=tmp_path / "db")
    assert pkg.manifest["tuning"]["kernels_tuned"] == 0
    feeds = _feeds()
    assert compare_outputs(run_ort(onnxforge.load(path), feeds), pkg(**feeds), 1e-5, 1e-4).ok


def _feeds():
    return {"x": np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)}


def test_tune_writes_records_for_its_target(tuned):
    _, db, result = tuned
    assert result.stopped == "trials" and 1 <= result.trials <= 4 + 2  # the scheduler stops between batches of 2
    assert result.records_added >= 1 and result.untuned_kernels == 0
    measured = [k for k in result.kernels if k.best_ms]
    assert measured and all(k.best_ms > 0 and k.calls >= 1 for k in measured)
    (entry,) = tune_db.describe(db)
    assert entry["name"] == "x86" and entry["key"] == result.target_key and entry["records"] == result.records_added


def test_compile_with_db_applies_the_records(tuned):
    path, db, _ = tuned
    pkg = onnxforge.compile(path, "x86", "-O2", db=db)
    tuning = pkg.manifest["tuning"]
    assert tuning["has_records"] and tuning["kernels_tuned"] >= 1
    feeds = _feeds()
    assert compare_outputs(run_ort(onnxforge.load(path), feeds), pkg(**feeds), 1e-5, 1e-4).ok


def test_db_of_another_target_is_not_applied(tuned):
    path, db, result = tuned
    other = resolve_target("x86{num-cores=3}")  # another thread count: another TVM target
    assert tune_db.target_key(other) != result.target_key
    pkg = onnxforge.compile(path, "x86{num-cores=3}", "-O2", db=db)
    assert pkg.manifest["tuning"] == {**pkg.manifest["tuning"], "has_records": False, "kernels_tuned": 0}
    feeds = _feeds()
    assert compare_outputs(run_ort(onnxforge.load(path), feeds), pkg(**feeds), 1e-5, 1e-4).ok


MERGE = """
import sys
from onnxforge.codegen import resolve_target, tune_db
target = resolve_target("x86")
source = tune_db.load_for(sys.argv[1], target)
for _ in range(int(sys.argv[3])):
    tune_db.merge_into(sys.argv[2], target, source)
"""


def test_concurrent_writers_do_not_corrupt_the_db(tuned, tmp_path):
    _, db, result = tuned
    shared = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", MERGE, str(db), str(shared), "6"]) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    folder = tune_db.target_dir(shared, resolve_target("x86"))
    lines = (folder / tune_db.RECORDS).read_text().splitlines()
    assert len(lines) == 12 * result.records_added
    assert all(isinstance(json.loads(line), list) for line in lines)  # no interleaved half lines
    loaded = tune_db.load_for(shared, resolve_target("x86"))
    assert len(loaded.get_all_tuning_records()) == 12 * result.records_added


def test_time_budget_stops_after_the_first_batch(tmp_path, keep_every_record):
    path = tmp_path / "m.onnx"
    onnx.save(tunable_model(), path)
    result = tune(path, "x86", db=tmp_path / "db", trials=500, time_budget=0.01, trials_per_iter=2)
    assert result.stopped == "time" and 1 <= result.trials <= 2 and result.records_added >= 1


def test_rpc_tracker_with_two_servers(tmp_path, keep_every_record):
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=9190, port_end=10190, silent=True)
    servers = [rpc.Server("127.0.0.1", port=10200, port_end=11200, key="ofx", tracker_addr=("127.0.0.1", tracker.port),
                          silent=True) for _ in range(2)]
    try:
        path = tmp_path / "m.onnx"
        onnx.save(tunable_model(), path)
        result = tune(path, "x86", db=tmp_path / "db", trials=4, trials_per_iter=2,
                      rpc_tracker=f"127.0.0.1:{tracker.port}", rpc_key="ofx")
        assert result.records_added >= 1 and any(k.best_ms for k in result.kernels)
        summary = rpc.connect_tracker("127.0.0.1", tracker.port).summary()
        assert sum(1 for s in summary["server_info"] if s["key"].endswith(":ofx")) == 2
    finally:
        for server in servers:
            server.terminate()
        tracker.terminate()


def test_bad_requests_are_clear_errors(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tunable_model(), path)
    with pytest.raises(BuildError, match="GPU schedules"):
        tune(path, "cuda-sm80", db=tmp_path / "db")
    with pytest.raises(BuildError, match="--rpc-tracker"):
        tune(path, "arm64", db=tmp_path / "db")
    with pytest.raises(BuildError, match="trials must be at least 1"):
        tune(path, "x86", db=tmp_path / "db", trials=0)
    with pytest.raises(BuildError, match="HOST:PORT"):
        tune(path, "x86", db=tmp_path / "db", rpc_tracker="nowhere", rpc_key="k")
    with pytest.raises(BuildError, match="cannot reach the RPC tracker"):
        tune(path, "x86", db=tmp_path / "db", rpc_tracker="127.0.0.1:1", rpc_key="k")
    with pytest.raises(BuildError, match="does not exist"):
        onnxforge.compile(path, "x86", db=tmp_path / "missing")
    assert main(["tune", str(path), "--db", str(tmp_path / "db"), "--time", "soon"]) == 2


def test_missing_metaschedule_packages_are_named(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xgboost" else real(name, *a))
    with pytest.raises(BuildError, match=r"pip install xgboost-cpu"):
        tune(tmp_path / "m.onnx", "x86", db=tmp_path / "db")


def test_per_kernel_profile_with_the_tuned_database(tuned):
    from onnxforge.codegen.cpu.profile import format_table, kernel_table
    from onnxforge.codegen.lower import lower

    path, db, _ = tuned
    target = resolve_target("x86")
    lowered = lower(onnxforge.optimize(onnxforge.load(path), "-O2").model)
    rows = kernel_table(lowered.mod, target.tvm, "blas", repeat=2, database=tune_db.load_for(db, target))
    assert rows and all(r["calls"] >= 1 and r["ms"] > 0 for r in rows)
    assert "TOTAL" in format_table(rows)


def test_tuning_again_starts_from_the_db_and_adds_only_new_records(tuned, tmp_path, keep_every_record):
    import shutil

    path, db, first = tuned
    again_db = tmp_path / "db"
    shutil.copytree(db, again_db)
    result = tune(path, "x86", db=again_db, trials=2, trials_per_iter=2)
    (entry,) = tune_db.describe(again_db)
    assert 1 <= result.records_added <= 4 and entry["records"] == first.records_added + result.records_added
    best_before = {k.name: k.best_ms for k in first.kernels if k.best_ms}
    # the seeded records take part: a kernel's best is never worse than before
    assert all(k.best_ms <= best_before[k.name] for k in result.kernels if k.name in best_before)
