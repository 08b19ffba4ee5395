"""Operator fusions, written with the public pattern-rewrite API (passes.rewrite),
and the `fuse` pass that runs them: `fuse{patterns=conv-bn+gemm+layernorm}` picks
families, `standard_only=true` keeps the output to standard ONNX ops.

Families run in phases, each to its own fixed point: transformer blocks first
(attention needs its MatMul+Add projections intact), then activations, then the
linear-algebra folds.

Left unfused on purpose (see each module): Conv/Gemm + Relu/Clip/Sigmoid (no
standard fused op; onnxruntime and TVM both fuse elementwise epilogues
themselves), N-D MatMul + Add (Gemm is 2-D only), SiLU below opset 24 (no
standard op; Swish is opt-in as `silu`), ops newer than the model's opset.
Zero Pad into Conv and Transpose/Reshape chains are cleanup's work, which -O2
runs before and after fuse."""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable

from ..base import Effect, PassResult
from ..registry import register_pass
from ..rewrite import RewritePass, RuleSet
from . import activations, affine, attention, conv_bn, gelu, layernorm, linear, rmsnorm


@dataclasses.dataclass(frozen=True)
class Family:
    phase: int
    rules: Callable[[bool], RuleSet]  # standard_only -> rules
    default: bool = True


FAMILIES: dict[str, Family] = {
    "attention": Family(0, attention.rules),
    "layernorm": Family(0, lambda std: layernorm.RULES),
    "rmsnorm": Family(0, rmsnorm.rules),
    "gelu": Family(0, gelu.rules),
    "hardswish": Family(1, lambda std: activations.HARDSWISH),
    "hardsigmoid": Family(1, lambda std: activations.HARDSIGMOID),
    "silu": Family(1, lambda std: activations.SILU, default=False),
    "conv-bn": Family(2, lambda std: conv_bn.RULES),
    "affine": Family(2, lambda std: affine.RULES),
    "transpose-gemm": Family(2, lambda std: linear.TRANSPOSE_GEMM),
    "gemm": Family(2, lambda std: linear.GEMM),
}
DEFAULT_PATTERNS = [name for name, family in FAMILIES.items() if family.default]
# Op types the fusions produce (and that exporters may already emit): counted in
# the statistics, so that "already fused" shows as well as "fused now".
FUSED_OPS = ("LayerNormalization", "RMSNormalization", "Gelu", "FastGelu",
             "QuickGelu", "Attention", "HardSwish", "HardSigmoid", "Swish", "BatchNormalization")


@dataclasses.dataclass
class FuseOptions:
    # Fusion families to run (joined by '+'); `onnxforge passes` lists them.
    patterns: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_PATTERNS))
    # Only standard ONNX ops in the output: no com.microsoft Gelu/FastGelu/Attention.
    standard_only: bool = False

    def __post_init__(self):
        unknown = [p for p in self.patterns if p not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown pattern family {', '.join(map(repr, unknown))}; known: {', '.join(FAMILIES)}")


@register_pass("fuse")
class Fuse(RewritePass):
    """Operator fusion: BatchNorm and constant Mul/Add into Conv/Gemm/MatMul weights,
    MatMul+Add -> Gemm, Transpose into Gemm, LayerNorm, GELU, multi-head attention,
    HardSigmoid/HardSwish (SiLU opt-in)."""

    Options = FuseOptions
    effect = Effect.TOLERANCE  # folded weights round differently
    preserves = frozenset({"values"})  # fused nodes produce the values the matched ones did
    atol = 1e-4
    rtol = 1e-3

    def rule_sets(self, model) -> list[RuleSet]:
        phases: dict[int, list[RuleSet]] = {}
        for name in dict.fromkeys(self.options.patterns):
            family = FAMILIES[name]
            phases.setdefault(family.phase, []).append(family.rules(self.options.standard_only))
        return [RuleSet(*sets) for _, sets in sorted(phases.items())]

    def run(self, model) -> PassResult:
        result = super().run(model)
        counts = Counter(n.op_type for n in model.graph.all_nodes() if n.op_type in FUSED_OPS)
        for op in FUSED_OPS:
            if counts[op]:
                result.stats[f"{op}_in_model"] = counts[op]
        return result
