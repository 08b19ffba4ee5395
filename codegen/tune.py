"""MetaSchedule tuning of a model's CPU kernels into a persistent, target-keyed database.

    result = tune("model.onnx", "x86", db="tuned/", trials=500, time_budget=1200)
    compile("model.onnx", "x86", db="tuned/")   # applies the records, no tuning

The kernels tuned are the ones the CPU build schedules itself: with cpu_kernels
"blas" the matmul/conv kernels call OpenBLAS and are not tuned, everything else
(im2col gathers, fused elementwise, softmax, layer norm, pooling...) is; with
"schedule" every kernel is. The three fixes TVM-NOTES.md lists are applied:
MetaSchedule's extra packages (the `tune` extra), the apache-tvm-ffi pin, and a
builder that does not import tvm.s_tir.tensor_intrin in every worker (44 s here,
past the default builder's timeout: every candidate failed). Measurement runs
here (LocalRunner) or on the devices behind a TVM RPC tracker (RPCRunner).

The time budget is checked after each measured batch: tuning stops there, with
everything measured so far kept. Records go to a private database while tuning
and are merged into the shared one at the end (codegen.tune_db).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..ir.errors import BuildError
from . import tune_db
from .targets import ResolvedTarget, resolve_target

MS_PACKAGES = ("xgboost", "scipy", "psutil", "cloudpickle")


@dataclasses.dataclass
class KernelStat:
    name: str
    calls: int  # times the model calls it (the task's weight)
    flops: float  # per call, TVM's estimate
    best_ms: float | None  # best tuned time per call; None when nothing measured ran
    trials: int
    default_ms: float | None = None  # onnxforge's default schedule, measured the same way; None if it failed

    @property
    def kept(self) -> bool:
        """Whether the tuned schedule goes into the database: only when it beats the default."""
        return beats_default(self.best_ms, self.default_ms)

    @property
    def build_ms(self) -> float | None:
        """The time of the schedule a build with the database runs."""
        return self.best_ms if self.kept else self.default_ms

    @property
    def gflops(self) -> float | None:
        return self.flops / self.build_ms / 1e6 if self.build_ms else None


# A tuned schedule replaces the default one only when it is this much faster: both are
# single measurements, and a tie is not worth a change.
MARGIN = 0.97


def beats_default(tuned: float | None, default: float | None) -> bool:
    return tuned is not None and (default is None or tuned < MARGIN * default)


@dataclasses.dataclass
class TuneProgress:
    trials: int
    max_trials: int
    seconds: float
    time_budget: float | None
    tasks_measured: int
    tasks: int
    kernels_ms: float | None  # sum over measured tasks of calls x best time


@dataclasses.dataclass
class TuneResult:
    target: str
    target_key: str
    db: str
    cpu_kernels: str
    trials: int
    seconds: float
    stopped: str  # "trials", "time" or "no-tasks"
    records_added: int
    kernels: list[KernelStat]  # every tuned kernel; those not `kept` stay on the default schedule
    untuned_kernels: int  # kernels that call OpenBLAS / the C kernels: not tuned

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for k, stat in zip(out["kernels"], self.kernels):
            k["gflops"], k["kept"], k["build_ms"] = stat.gflops, stat.kept, stat.build_ms
        return out


class _TimeUp(Exception):
    pass


def tune(model, target: str = "x86", *, db: str | os.PathLike, trials: int | None = None,
         time_budget: float | None = None, pipeline="-O2", input_shapes=None, cpu_kernels: str | None = None,
         rpc_tracker: str | None = None, rpc_key: str | None = None, trials_per_iter: int = 16,
         on_progress: Callable[[TuneProgress], None] | None = None) -> TuneResult:
    """Tune `model`'s kernels for `target` and merge the records into `db` (a folder,
    created if missing). `trials`: total measurement budget (default 64 per kernel);
    `time_budget`: seconds, checked after each measured batch. `rpc_tracker`
    ("host:port") with `rpc_key`: measure on the devices registered there."""
    _check_packages()
    resolved = _with_cores(resolve_target(target))
    if resolved.device != "cpu":
        raise BuildError(f"onnxforge tune tunes CPU targets; {resolved.name} uses TVM's default GPU schedules")
    if trials is not None and trials < 1:
        raise BuildError(f"trials must be at least 1, got {trials}")
    if time_budget is not None and time_budget <= 0:
        raise BuildError(f"the time budget must be positive, got {time_budget}")
    if resolved.linker and not rpc_tracker:
        raise BuildError(f"{resolved.name} code cannot run here: tune it on the device with --rpc-tracker HOST:PORT --rpc-key KEY")
    with _measure_threads(None if rpc_tracker else resolved.tvm.get("num-cores")):
        return _tune(model, resolved, db, trials, time_budget, pipeline, input_shapes, cpu_kernels, rpc_tracker,
                     rpc_key, trials_per_iter, on_progress)


@contextlib.contextmanager
def _measure_threads(cores):
    """TVM_NUM_THREADS for the local runner's worker processes (they inherit it), so that
    kernels are timed on as many threads as the built module uses (runtime.set_threads):
    TVM's own default is half the cores on x86, one on a 2-core machine."""
    old = os.environ.get("TVM_NUM_THREADS")
    if cores is None or old:
        yield
        return
    os.environ["TVM_NUM_THREADS"] = str(int(cores))
    try:
        yield
    finally:
        os.environ.pop("TVM_NUM_THREADS", None)


def _tune(model, resolved, db, trials, time_budget, pipeline, input_shapes, cpu_kernels, rpc_tracker, rpc_key,
          trials_per_iter, on_progress) -> TuneResult:
    from tvm.s_tir import meta_schedule as ms

    from .build import resolve_cpu_kernels
    from .compiler import prepare

    runner = _runner(rpc_tracker, rpc_key)
    t_start = time.perf_counter()
    mode, _ = resolve_cpu_kernels(cpu_kernels, resolved)
    if mode == "tvm":
        raise BuildError("cpu_kernels=tvm is TVM's default pipeline; tuning works on the auto, blas and schedule builds")
    _, _, _, lowered = prepare(model, pipeline, input_shapes, {})
    tasks, untuned = _extract(lowered.mod, resolved, mode)
    key = tune_db.target_key(resolved)
    if not tasks:
        return TuneResult(resolved.name, key, os.fspath(db), mode, 0, time.perf_counter() - t_start, "no-tasks", 0, [], untuned)
    max_trials = trials or 64 * len(tasks)
    Path(db).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tuning-", dir=db) as work:
        private = ms.database.JSONDatabase(work_dir=work)
        seeded = tune_db.seed(private, db, resolved)  # tuning again continues from the best so far
        # MetaSchedule prints a task table to stdout after every batch: its log files (in `work`) keep it
        ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
        ms_logger.setLevel(logging.WARNING)
        for handler in list(ms_logger.handlers):  # a previous tune's (its folder is gone); TVM's logging
            ms_logger.removeHandler(handler)      # setup also fails on a second call with them attached
            handler.close()
        # one search thread: TVM's pool spins while waiting, and on a busy 2-core machine two threads
        # took minutes per batch where one took seconds
        # A smaller evolutionary search than MetaSchedule's default (population 512, 4 generations):
        # that took ~100 s per task and round on 2 busy cores, before measuring anything, and a
        # model has ~50 tasks; this one takes a fifth of it.
        strategy = ms.search_strategy.EvolutionarySearch(population_size=128, init_min_unmeasured=32, genetic_num_iters=2)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work, strategy=strategy,
                                                                                  num_threads=1)
        builder = _builder(ms)
        # the schedule a build uses without records, timed by the same runner: records that
        # do not beat it are not kept (MetaSchedule's rules can lose to it on small kernels)
        defaults = _default_times(ms, contexts, resolved, builder, runner)
        progress = _progress_callback(ms, contexts, weights, max_trials, time_budget, t_start, on_progress)
        stopped = "trials"
        try:
            ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work, max_trials_global=max_trials,
                          num_trials_per_iter=trials_per_iter, builder=builder, runner=runner, database=private,
                          measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress])
        except Exception as exc:
            if not progress.time_up:
                raise BuildError(f"tuning failed: {_last_line(exc)}") from exc
            stopped = "time"
        kernels = _kernel_stats(ms, private, contexts, weights, progress.trials_by_task, defaults)
        losing = {_workload_hash(ctx.mod) for ctx, k in zip(contexts, kernels) if not k.kept}
        added = tune_db.merge_into(db, resolved, private,
                                   skip=seeded, keep=lambda record: _workload_hash(record.workload.mod) not in losing)
    return TuneResult(resolved.name, key, os.fspath(db), mode, progress.trials, time.perf_counter() - t_start, stopped,
                      added, kernels, untuned)


def _check_packages() -> None:
    import importlib.util

    missing = [name for name in MS_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pip = ["xgboost-cpu" if name == "xgboost" else name for name in missing]
        raise BuildError(f"tuning needs {', '.join(missing)} (MetaSchedule imports them): pip install {' '.join(pip)} "
                         "or pip install 'onnxforge[tune]'")


def _with_cores(target: ResolvedTarget) -> ResolvedTarget:
    """MetaSchedule's CPU rules need num-cores in the target: default to this machine's."""
    if target.device != "cpu" or "num-cores" in target.tvm:
        return target
    from . import host

    return dataclasses.replace(target, tvm={**target.tvm, "num-cores": host.cpu_count()})


def _runner(rpc_tracker: str | None, rpc_key: str | None):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if not rpc_tracker:
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
    host, _, port = rpc_tracker.rpartition(":")
    if not host or not port.isdigit():
        raise BuildError(f"--rpc-tracker takes HOST:PORT, got {rpc_tracker!r}")
    if not rpc_key:
        raise BuildError("--rpc-tracker needs --rpc-key (the key the devices registered with)")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=rpc_key, session_timeout_sec=120)
    try:
        config.connect_tracker().summary()
    except Exception as exc:
        raise BuildError(f"cannot reach the RPC tracker at {rpc_tracker}: {_last_line(exc)}") from None
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator)


def build_candidate(mod, target, _params):
    """MetaSchedule's default build without `import tvm.s_tir.tensor_intrin` (44 s per
    fresh worker here, over the builder's timeout). Runs in builder workers."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _builder(ms):
    return ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=120)


def _extract(mod, target: ResolvedTarget, mode: str):
    """MetaSchedule tasks of the kernels the CPU build schedules (those calling
    OpenBLAS or kernels.c are left out), and how many were left out."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from .cpu.pipeline import front_passes
    from .cpu.schedules import has_extern

    tvm_target = tvm.target.Target(target.tvm)
    with tvm_target:
        prepared = tvm.transform.Sequential(front_passes(tvm_target, mode))(mod)
    tasks = ms.relax_integration.extract_tasks(prepared, tvm_target)
    keep = [t for t in tasks if not has_extern(t.dispatched[0]["main"])]
    return keep, len(tasks) - len(keep)


def _progress_callback(ms, contexts, weights, max_trials, time_budget, t_start, on_progress):
    from tvm.ir.utils import derived_object

    names = [ctx.task_name for ctx in contexts]

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.trials = 0
            self.time_up = False
            self.best: dict[int, float] = {}
            self.trials_by_task = [0] * len(names)

        def apply(self, _scheduler, task_id, _candidates, _builds, runs):
            self.trials += len(runs)
            self.trials_by_task[task_id] += len(runs)
            for run in runs:
                if run.run_secs and not run.error_msg:
                    secs = sum(float(s) for s in run.run_secs) / len(run.run_secs)
                    self.best[task_id] = min(self.best.get(task_id, math.inf), secs)
            elapsed = time.perf_counter() - t_start
            if on_progress:
                total = sum(weights[i] * s for i, s in self.best.items()) * 1e3 if self.best else None
                on_progress(TuneProgress(self.trials, max_trials, elapsed, time_budget, len(self.best), len(names), total))
            if time_budget is not None and elapsed >= time_budget:
                self.time_up = True
                raise _TimeUp(f"time budget of {time_budget:.0f} s used")

    return Progress()


def _workload_hash(mod) -> int:
    from tvm_ffi import structural_hash

    return structural_hash(mod)


def _default_times(ms, contexts, target: ResolvedTarget, builder, runner) -> list[float | None]:
    """Seconds per call of each task's kernel under the default CPU schedule (what a
    build applies without a record), measured like the candidates; None where it fails."""
    import tvm

    from .cpu.schedules import default_schedule_pass

    tvm_target = tvm.target.Target(target.tvm)
    mods = []
    for ctx in contexts:
        with tvm_target:  # on a clone: dlight's pass writes the scheduled function into the module it gets
            mods.append(default_schedule_pass()(ctx.mod.clone()))
    built = builder.build([ms.builder.BuilderInput(mod, tvm_target) for mod in mods])
    inputs, where = [], []
    for i, (mod, result) in enumerate(zip(mods, built)):
        if result.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args))  # tune is CPU-only
            where.append(i)
    times: list[float | None] = [None] * len(contexts)
    for i, future in zip(where, runner.run(inputs)):
        run = future.result()
        if run.run_secs and not run.error_msg:
            times[i] = sum(float(s) for s in run.run_secs) / len(run.run_secs)
    for result in built:
        if result.artifact_path:
            with contextlib.suppress(OSError):
                shutil.rmtree(os.path.dirname(result.artifact_path))
    return times


def _kernel_stats(ms, database, contexts, weights, trials_by_task, defaults) -> list[KernelStat]:
    from tvm.s_tir.analysis import estimate_tir_flops

    out = []
    for ctx, weight, n, default in zip(contexts, weights, trials_by_task, defaults):
        top = database.get_top_k(database.commit_workload(ctx.mod), 1)
        best = None
        if top and top[0].run_secs:
            best = sum(float(s) for s in top[0].run_secs) / len(top[0].run_secs) * 1e3
        try:
            flops = float(estimate_tir_flops(ctx.mod))
        except Exception:
            flops = 0.0
        out.append(KernelStat(ctx.task_name, int(weight), flops, best, n, default * 1e3 if default else None))
    return out


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
