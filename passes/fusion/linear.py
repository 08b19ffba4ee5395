"""gemm and transpose-gemm: 2-D MatMul + Add becomes Gemm (its bias), and a
Transpose of a 2-D operand of Gemm/MatMul becomes Gemm's transA/transB. Gemm is
2-D only, so N-D MatMuls stay as they are."""
from __future__ import annotations

from ...ir.pattern import Op, Opt, Var
from ..rewrite import RuleSet, rule

_FLOAT = ("float16", "float32", "float64")


def _swap(node) -> bool:
    """A Transpose that swaps the two axes of a 2-D tensor."""
    perm = node.attr("perm")
    if perm is not None:
        return list(perm) == [1, 0]
    shape = node.inputs[0].shape
    return shape is not None and len(shape) == 2


def _transposed(name: str) -> Op:
    return Op("Transpose", Var(name), name=name + "_t", where=_swap)


def _bias_fits(c, m_dim, n_dim) -> bool:
    """C of Gemm must broadcast one way to (M, N)."""
    if c.shape is None or len(c.shape) > 2:
        return False
    shape = (1,) * (2 - len(c.shape)) + tuple(c.shape)
    return shape[1] in (1, n_dim) and (shape[0] == 1 or (isinstance(m_dim, int) and shape[0] == m_dim))


@rule(Op("Add", Op("MatMul", Var("a", rank=2, dtype=_FLOAT), Var("w", rank=2), name="mm"), Var("c")))
def matmul_add_to_gemm(m, b):
    a, w, c = m["a"], m["w"], m["c"]
    n_dim = w.shape[1]
    if not isinstance(n_dim, int) or c.dtype != a.dtype or not _bias_fits(c, a.shape[0], n_dim):
        return None
    return b.op("Gemm", a, w, c)


def _flip(m, b, which: str):
    node = m.node("gemm")
    attrs = dict(node.attributes)
    key = "transA" if which == "a" else "transB"
    attrs[key] = 1 - int(m.attr("gemm", key, 0))
    return b.op("Gemm", m["a"], m["b"], m.get("c"), **attrs)


@rule(Op("Gemm", _transposed("a"), Var("b"), Opt(Var("c")), name="gemm"), needs_shapes=True)
def transpose_into_gemm_a(m, b):
    return _flip(m, b, "a")


@rule(Op("Gemm", Var("a"), _transposed("b"), Opt(Var("c")), name="gemm"), needs_shapes=True)
def transpose_into_gemm_b(m, b):
    return _flip(m, b, "b")


@rule(Op("MatMul", _transposed("a"), Var("b", rank=2, dtype=_FLOAT)))
def transpose_matmul_to_gemm_a(m, b):
    return b.op("Gemm", m["a"], m["b"], transA=1)


@rule(Op("MatMul", Var("a", rank=2, dtype=_FLOAT), _transposed("b")))
def transpose_matmul_to_gemm_b(m, b):
    return b.op("Gemm", m["a"], m["b"], transB=1)


GEMM = RuleSet(matmul_add_to_gemm)
TRANSPOSE_GEMM = RuleSet(transpose_into_gemm_a, transpose_into_gemm_b, transpose_matmul_to_gemm_a,
                         transpose_matmul_to_gemm_b)
