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
Kernels that call extern functions (BLAS) are left alone.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.dlight.base.transform import ApplyDefaultSchedule
from tvm.s_tir.dlight.cpu import Reduction

VECTOR_LANES = 8  # float32 lanes of AVX2 / two NEON registers
# Kernels with fewer iterations (all loops, static extents) stay on the calling thread:
# waking a sleeping pool worker costs more than it saves (thread_pool.h's
# ONNXFORGE_PARALLEL_MIN_VALUES, the same bound for the C kernels).
PARALLEL_MIN_ITERATIONS = 1 << 17


def _parallel(sch, block, loop) -> None:
    """Parallelize `loop` of `block` unless the block's static iteration count is small."""
    total = 1
    for lp in sch.get_loops(block):
        extent = sch.get(lp).extent
        if not isinstance(extent, tirx.IntImm):
            break  # a size known at run time: may be large
        total *= int(extent.value)
    else:
        if total < PARALLEL_MIN_ITERATIONS:
            return
    sch.parallel(loop)


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
        if reduce_:
            # reductions inside: move them out of the innermost spatial loop when the
            # reduction is small (conv window, pooling), so that loop can vectorize
            rext = [sch.get(lp).extent for lp in reduce_]
            if all(isinstance(e, tirx.IntImm) for e in rext) and kinds[-1] == "R" and last and last >= VECTOR_LANES:
                prod = 1
                for e in rext:
                    prod *= int(e.value)
                if prod <= 64:
                    sch.reorder(*spatial[:-1], *reduce_, spatial[-1])
                    sch.decompose_reduction(block, reduce_[0])
                    vec = spatial[-1]
            elif kinds[-1] == "S" and last and last >= VECTOR_LANES:
                vec = spatial[-1]
        elif last and last >= VECTOR_LANES:
            vec = spatial[-1]
        # the innermost spatial loop stays a loop of its own when it is vectorized or its
        # extent is symbolic: fusing it into the parallel loop would cost a div/mod by a
        # run-time extent per element, and a serial inner loop over contiguous data is
        # one LLVM vectorizes by itself (with a tail) when the extent is not known
        outer = spatial[:-1] if vec is not None or (last is None and kinds[-1] == "S") else spatial
        # keep only leading outer spatial loops (before any reduction loop)
        loops_now = sch.get_loops(block)
        lead = []
        for lp in loops_now:
            if any(sch.get(lp).same_as(sch.get(o)) for o in outer):
                lead.append(lp)
            else:
                break
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
        if lead:
            _parallel(sch, block, sch.fuse(*lead) if len(lead) > 1 else lead[0])


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


def default_schedule_pass():
    """The module pass: LongReduction, dlight CPU Reduction, then Fallback."""
    return ApplyDefaultSchedule(LongReduction(), Reduction(), Fallback())
