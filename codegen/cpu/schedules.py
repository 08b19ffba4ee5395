"""A default CPU schedule for TIR kernels, without measurement.

TVM's default CPU pipeline leaves every kernel as written by legalization: one
thread, no vectorization. dlight's CPU rules (Reduction: softmax/layer norm;
GEMV) run first; this module's Fallback takes every kernel they decline:

- injective producers are inlined into their consumers where TVM allows it;
- each remaining block gets its leading spatial loops fused and parallelized,
  and, where its innermost loop is spatial, that loop split by the vector width
  and vectorized; for a reduction block whose last spatial loop is innermost among
  the spatial ones (depthwise conv, pooling), the reduction loops move outside it
  so that it can be vectorized.
Kernels that call extern functions (BLAS) are left alone. Small kernels stay on the
calling thread: at build time where their size is static, by a test at run time
(run_time_parallel) where it is not.
"""
from __future__ import annotations

import itertools

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.base.transform import ApplyDefaultSchedule
from tvm.s_tir.dlight.cpu import Reduction

VECTOR_LANES = 8  # float32 lanes of AVX2 / two NEON registers
# Kernels with fewer iterations (all loops, static extents) stay on the calling thread:
# waking a sleeping pool worker costs more than it saves (thread_pool.h's
# ONNXFORGE_PARALLEL_MIN_VALUES, the same bound for the C kernels).
PARALLEL_MIN_ITERATIONS = 1 << 17


WORK_KEY = "onnxforge.parallel_work"
# Work expressions of parallel loops whose size is known only at run time, by the id
# their loop carries under WORK_KEY (a schedule annotation cannot hold an expression
# over the function's parameters); run_time_parallel reads them.
_RUN_TIME_WORK: dict[int, tirx.PrimExpr] = {}
_work_ids = itertools.count()


def _work(sch, loops):
    """The product of the loops' extents (an int where all are static)."""
    work = 1
    for lp in loops:
        extent = sch.get(lp).extent
        work = work * (int(extent.value) if isinstance(extent, tirx.IntImm) else extent)
    return work


def _parallel(sch, block, loop, work=None) -> None:
    """Parallelize `loop` of `block` unless its work is small: `work` (default: the
    product of all the block's loop extents). Where that is known only at run time,
    the loop is parallel and run_time_parallel adds the test."""
    work = _work(sch, sch.get_loops(block)) if work is None else work
    if isinstance(work, int) and work < PARALLEL_MIN_ITERATIONS:
        return
    sch.parallel(loop)
    if not isinstance(work, int):
        key = next(_work_ids)
        _RUN_TIME_WORK[key] = work
        sch.annotate(loop, WORK_KEY, key)


def has_extern(func: tirx.PrimFunc) -> bool:
    # no TIR visitor in 0.27's Python API: the extern call is visible in the script
    return "call_extern" in func.script(show_meta=False)


class Fallback(ScheduleRule):
    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or has_extern(func):
            return None
        sch = s_tir.Schedule(func)
        try:
            root = sch.get_sblock("root")
        except Exception:
            return None
        blocks = sch.get_child_blocks(root)
        # inline injective producers (all but the outputs)
        for block in blocks[:-1]:
            if sch.get(block).name_hint.startswith("pad"):
                continue  # a padded copy keeps the consumer's loads unconditional (vectorizable)
            try:
                sch.compute_inline(block)
            except Exception:
                pass
        for block in sch.get_child_blocks(root):
            try:
                self._schedule_block(sch, block)
            except Exception:
                continue
        return sch

    @staticmethod
    def _schedule_block(sch, block):
        stmt = sch.get(block)
        loops = sch.get_loops(block)
        if not loops or len(loops) != len(stmt.iter_vars):
            # not a one-loop-per-iter-var nest: parallelize the outer loop only
            if loops:
                _parallel(sch, block, loops[0])
            return
        kinds = []
        for iv in stmt.iter_vars:
            kinds.append("S" if iv.iter_type == tirx.IterVar.DataPar else "R")
        spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
        reduce_ = [lp for lp, k in zip(loops, kinds) if k == "R"]
        if not spatial:
            return
        extents = [int(sch.get(lp).extent) if isinstance(sch.get(lp).extent, tirx.IntImm) else None for lp in spatial]
        vec = None
        last = extents[-1]
        inner_spatial = kinds[-1] == "S"
        reorder = False
        if reduce_:
            # reductions inside: move them out of the innermost spatial loop when the
            # reduction is small (conv window, pooling), so that loop can vectorize (or,
            # of run-time length, be a serial loop over contiguous outputs for LLVM)
            rext = [sch.get(lp).extent for lp in reduce_]
            if all(isinstance(e, tirx.IntImm) for e in rext) and not inner_spatial and (last is None
                                                                                       or last >= VECTOR_LANES):
                prod = 1
                for e in rext:
                    prod *= int(e.value)
                reorder = inner_spatial = prod <= 64
                vec = spatial[-1] if reorder and last else None
            elif inner_spatial and last and last >= VECTOR_LANES:
                vec = spatial[-1]
        elif last and last >= VECTOR_LANES:
            vec = spatial[-1]
        # the innermost spatial loop stays a loop of its own when it is vectorized or its
        # extent is symbolic: fusing it into the parallel loop would cost a div/mod by a
        # run-time extent per element, and a serial inner loop over contiguous data is
        # one LLVM vectorizes by itself (with a tail) when the extent is not known
        outer = spatial[:-1] if vec is not None or (last is None and inner_spatial) else spatial
        # keep only leading outer spatial loops (before any reduction loop)
        lead = []
        for lp in sch.get_loops(block):
            if any(sch.get(lp).same_as(sch.get(o)) for o in outer):
                lead.append(lp)
            else:
                break
        # parallel first: once the reduction is split from its init, TVM no longer
        # proves the block parallel-safe
        if lead:  # a small window's iterations are cheap (vector max/add): count outputs only
            work = _work(sch, spatial) if reorder else None
            _parallel(sch, block, sch.fuse(*lead) if len(lead) > 1 else lead[0], work)
        if reorder and last is None:
            # a row of run-time length: one loop over it per window row, the taps of a
            # row unrolled inside (a loop per tap costs more than a short row's work)
            sch.reorder(*reduce_[:-1], spatial[-1], reduce_[-1])
            sch.decompose_reduction(block, reduce_[0])
            sch.unroll(reduce_[-1])
        elif reorder:
            sch.reorder(*reduce_, spatial[-1])
        if vec is not None:
            ext = int(sch.get(vec).extent)
            if ext > VECTOR_LANES and ext % VECTOR_LANES == 0:
                _, inner = sch.split(vec, [None, VECTOR_LANES])
                sch.vectorize(inner)
            elif ext <= 2 * VECTOR_LANES and ext % 4 == 0:
                sch.vectorize(vec)
            elif ext > VECTOR_LANES:
                _, inner = sch.split(vec, [None, VECTOR_LANES])
                sch.unroll(inner)
        if reorder and last is not None:  # after vectorize: TVM checks the block there
            sch.decompose_reduction(block, reduce_[0])


class LongReduction(ScheduleRule):
    """A kernel with one long reduction over its innermost (contiguous) axis, as a
    mean over H x W (GlobalAveragePool) or a ReduceSum: dlight's Reduction rule and
    Fallback leave one serial chain of adds per output, bound by the add latency
    (96 x 160 x 160 took 2.7 ms, 0.9 GFLOP/s). Here the last reduction loop is split by
    the vector width and rfactor'ed into VECTOR_LANES partial sums per output, added
    with vector adds, then summed. Softmax and norms (two reductions) are left to
    dlight."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or has_extern(func):
            return None
        try:
            sch = s_tir.Schedule(func)
            root = sch.get_sblock("root")
            blocks = sch.get_child_blocks(root)
            reducing = [b for b in blocks if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(b).iter_vars)]
            if len(reducing) != 1:
                return None
            block = reducing[0]
            stmt, loops = sch.get(block), sch.get_loops(block)
            if len(loops) != len(stmt.iter_vars):
                return None
            kinds = ["S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in stmt.iter_vars]
            spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
            reduce_ = [lp for lp, k in zip(loops, kinds) if k == "R"]
            if not spatial or kinds[-1] != "R" or kinds != ["S"] * len(spatial) + ["R"] * len(reduce_):
                return None
            extents = [sch.get(lp).extent for lp in reduce_]
            if not all(isinstance(e, tirx.IntImm) for e in extents):
                return None
            inner, total = int(extents[-1].value), 1
            for e in extents:
                total *= int(e.value)
            if total < 1024 or inner % VECTOR_LANES or inner < 2 * VECTOR_LANES:
                return None
            _, lanes = sch.split(reduce_[-1], [None, VECTOR_LANES])
            partial = sch.rfactor(lanes, factor_axis=len(spatial))
            sch.vectorize(sch.get_loops(partial)[-1])
            lead = sch.get_loops(partial)[:len(spatial)]
            _parallel(sch, partial, sch.fuse(*lead) if len(lead) > 1 else lead[0])
            for other in sch.get_child_blocks(root):
                name = sch.get(other).name_hint
                if other != partial and not name.endswith("_init"):
                    try:
                        Fallback._schedule_block(sch, other)
                    except Exception:
                        pass
            return sch
        except Exception:
            return None


class SmallWindow(ScheduleRule):
    """A kernel whose one reduction is a small static window (pooling, a TIR
    convolution): Fallback's schedule. dlight's Reduction rule would take it when an
    elementwise op is fused after it, and recompute the padded window of every output
    inside the output loop (a 5x5 max pool + Add 20x slower than the pool alone)."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or has_extern(func):
            return None
        try:
            sch = s_tir.Schedule(func)
            blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
        except Exception:
            return None
        reducing = [b for b in blocks if any(iv.iter_type != tirx.IterVar.DataPar for iv in b.iter_vars)]
        if len(reducing) != 1:
            return None
        block = reducing[0]
        window = [iv for iv in block.iter_vars if iv.iter_type != tirx.IterVar.DataPar]
        size = 1
        for iv in window:
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return None
            size *= int(iv.dom.extent.value)
        reduce_vars = {iv.var for iv in window}
        spatial_vars = {iv.var for iv in block.iter_vars} - reduce_vars
        slides = any(reduce_vars & used and spatial_vars & used
                     for region in block.reads for rng in region.region
                     for used in [set(tirx.analysis.undefined_vars(rng.min))])
        if size > 64 or not slides:
            return None
        return Fallback().apply(func, target, tunable)


def _serial_when_small(stmt):
    """A parallel loop whose work is known only at run time (WORK_KEY), as `if work >=
    bound: parallel else serial` (the same body twice): packages for any size otherwise
    wake the pool for every small kernel (a 20x20 feature map's max pool or split)."""
    if not isinstance(stmt, tirx.For) or stmt.kind != tirx.ForKind.PARALLEL or WORK_KEY not in stmt.annotations:
        return stmt
    work = _RUN_TIME_WORK.pop(int(stmt.annotations[WORK_KEY]), None)
    rest = {k: v for k, v in stmt.annotations.items() if k != WORK_KEY}
    parallel, serial = (tirx.For(stmt.loop_var, stmt.min, stmt.extent, kind, stmt.body, annotations=rest)
                        for kind in (tirx.ForKind.PARALLEL, tirx.ForKind.SERIAL))
    if work is None or "float" in work.script():
        return parallel  # sizes through float scales (Resize): TVM's LLVM codegen rejects such a test
    return tirx.IfThenElse(work >= tirx.const(PARALLEL_MIN_ITERATIONS, str(work.ty)), parallel, serial)


@tvm.transform.module_pass(opt_level=0, name="onnxforge.RunTimeParallel")
def run_time_parallel(mod, _ctx):
    """Every scheduled kernel's top-level parallel loops of run-time size go parallel
    only when their iteration count reaches PARALLEL_MIN_ITERATIONS (the bound that
    _parallel applies to static sizes at build time)."""
    from tvm.s_tir.stmt import SBlock, SBlockRealize

    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or not isinstance(func.body, SBlockRealize):
            continue
        block = func.body.block
        stmts = list(block.body) if isinstance(block.body, tirx.SeqStmt) else [block.body]
        new = [_serial_when_small(stmt) for stmt in stmts]
        if all(a.same_as(b) for a, b in zip(stmts, new)):
            continue
        body = tirx.SeqStmt(new) if len(new) > 1 else new[0]
        block = SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
                       block.alloc_buffers, block.match_buffers, block.annotations)
        func = func.with_body(SBlockRealize(func.body.iter_values, func.body.predicate, block))
        # the body appears twice: its loop and block variables get fresh copies in one branch
        mod[gv] = s_tir.transform.ConvertSSA()(tvm.IRModule({gv: func}))[gv]
    return mod


def default_schedule_pass():
    """The module pass: LongReduction, SmallWindow, dlight CPU Reduction, then
    Fallback; then run_time_parallel."""
    return tvm.transform.Sequential([ApplyDefaultSchedule(LongReduction(), SmallWindow(), Reduction(), Fallback()),
                                     run_time_parallel])
