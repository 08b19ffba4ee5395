"""The custom-pass API: rules (pattern + builder that may decline), rule sets that
compose, registration under a kebab-case name usable in pipeline text."""
from collections import Counter

import numpy as np
import pytest
from onnx import helper

import onnxforge
from onnxforge.ir import PassError
from onnxforge.ir.pattern import Const, Op, Var
from onnxforge.passes import Effect, RewritePass, Rule, RuleSet, register_pass, registry, rewrite_pass, rule
from tests.conftest import run_and_check
from tests.models import build

T, I = build.tensor, build.init


def ops(model):
    return Counter(n.op_type for n in model.graph.all_nodes())


@rule(Op("Mul", Var("x"), Const(value=1.0)))
def mul_by_one(m, b):
    return m["x"]


@rule(Op("Neg", Op("Neg", Var("x"))))
def double_neg(m, b):
    return m["x"]


@rule(Op("Add", Var("x"), Var("x")))
def add_self(m, b):
    return b.op("Mul", m["x"], b.const(np.float32(2.0), name="two"))


def _chain():
    return build.model([
        helper.make_node("Neg", ["x"], ["n1"]), helper.make_node("Neg", ["n1"], ["n2"]),
        helper.make_node("Mul", ["n2", "one"], ["m"]), helper.make_node("Add", ["m", "m"], ["y"]),
    ], [T("x", [3])], [T("y", [3])], [I("one", np.float32(1.0))])


def test_registered_rule_set_runs_from_pipeline_text(cleanup_registry):
    rewrite_pass("test-simplify", [double_neg, mul_by_one] + [RuleSet(add_self)], doc="Test rules.")
    result = run_and_check(_chain(), "cleanup,test-simplify")
    assert ops(result.model) == Counter({"Mul": 1})
    assert result.records[1].stats == {"double-neg": 1, "mul-by-one": 1, "add-self": 1}
    assert result.model.graph.outputs[0].name == "y"
    assert "one" not in result.model.graph.initializers  # what only the match read goes too
    cls = registry.get_pass("test-simplify")
    assert issubclass(cls, RewritePass) and cls.effect is Effect.EXACT and cls.__doc__ == "Test rules."


def test_rule_sets_compose():
    combined = RuleSet(double_neg) + mul_by_one + RuleSet(RuleSet(add_self))
    assert [r.name for r in combined] == ["double-neg", "mul-by-one", "add-self"]
    model = onnxforge.load(_chain())
    stats = combined.apply(model)
    assert stats == {"double-neg": 1, "mul-by-one": 1, "add-self": 1}
    onnxforge.verify(model)


def test_declined_match_leaves_no_trace():
    seen = []

    @rule(Op("Add", Var("x"), Var("x")))
    def declines(m, b):
        b.op("Mul", m["x"], b.const(np.float32(2.0)))  # built, then thrown away
        seen.append(m.root.name)
        return None

    model = onnxforge.load(_chain())
    before = onnxforge.ir.to_proto(model).SerializeToString()
    assert RuleSet(declines).apply(model) == {}
    assert seen  # it was asked
    assert onnxforge.ir.to_proto(model).SerializeToString() == before
    onnxforge.verify(model)
    m_value = next(v for n in model.graph.nodes for v in n.outputs if v.name == "m")
    assert len(m_value.uses) == 2  # the discarded Mul left no use behind


def test_match_whose_intermediate_is_read_elsewhere_is_skipped():
    proto = build.model([helper.make_node("Neg", ["x"], ["n1"]), helper.make_node("Neg", ["n1"], ["y"]),
                         helper.make_node("Relu", ["n1"], ["z"])], [T("x", [3])], [T("y", [3]), T("z", [3])])
    assert RuleSet(double_neg).apply(onnxforge.load(proto)) == {}


def test_subclassing_rewrite_pass_with_options(cleanup_registry):
    import dataclasses

    @register_pass("test-scale-adds")
    class ScaleAdds(RewritePass):
        @dataclasses.dataclass
        class Options:
            enabled: bool = True

        def rule_sets(self, model):
            return [RuleSet(add_self)] if self.options.enabled else []

    assert not onnxforge.optimize(onnxforge.load(_chain()), "test-scale-adds{enabled=false}").changed
    result = run_and_check(_chain(), "test-scale-adds")
    assert ops(result.model)["Add"] == 0


def test_builder_errors_name_the_rule_and_node(cleanup_registry):
    @rule(Op("Neg", Var("x")))
    def broken(m, b):
        return b.op("Relu", "not a value")

    rewrite_pass("test-broken", [broken])
    with pytest.raises(PassError, match=r"'test-broken'.*rule 'broken'.*Neg node producing 'n2'.*must be Values"):
        onnxforge.optimize(onnxforge.load(_chain()), "test-broken")


def test_rule_needs_an_op_root_and_kebab_case_name(cleanup_registry):
    with pytest.raises(TypeError, match="rooted at an Op"):
        Rule("bad", Var("x"), lambda m, b: None)
    with pytest.raises(onnxforge.ir.PipelineError, match="kebab-case"):
        rewrite_pass("Not_Kebab", [double_neg])
