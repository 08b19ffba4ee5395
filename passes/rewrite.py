"""Pattern rewrites: a rule is a pattern (ir.pattern) plus a function that builds
the replacement or declines; rule sets compose; a rule set becomes a registered
pass with one call. The built-in fusions are written with this API.

    @rule(Op("Neg", Op("Neg", Var("x"))))
    def double_neg(m, b):          # m: the Match, b: a Builder
        return m["x"]              # the value that replaces the root; None declines

    rewrite_pass("drop-double-neg", [double_neg])   # now usable in pipeline text

How a rule applies at a node: every way the pattern matches is tried in turn; a
match whose intermediate values are read outside it is skipped (removing it would
lose them); the build function may decline (return None), and the nodes it made
are then dropped. Otherwise its nodes go in before the root, the root's readers
read the replacement, and the matched nodes (and whatever only they fed) are
removed. Nodes are visited from the graph outputs upward, so the largest pattern
rooted further down wins over a smaller one inside it; sweeps repeat until
nothing changes.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, ClassVar, Iterable, Sequence, Union

import numpy as np

from ..ir import Graph, Model, Node, OnnxforgeError, PassError, Value
from ..ir.pattern import Match, Matcher, Pattern, needs_inference, root_op_types
from ..ir.shape_update import stamp
from .analysis import get_analysis
from .base import Effect, Pass, PassResult
from .registry import register_pass

BuildResult = Union[Value, Sequence[Value], None]


class Builder:
    """Makes the replacement of one match. Nodes and constants it creates stay out
    of the graph until the rewrite commits (a declined match leaves no trace)."""

    def __init__(self, model: Model, graph: Graph, match: Match):
        self.model = model
        self.graph = graph
        self.match = match
        self.nodes: list[Node] = []
        self.constants: list[Value] = []
        self.functions: list[Any] = []

    @property
    def opset(self) -> int:
        """The model's default-domain opset."""
        return self.model.opset

    def op(self, op_type: str, *inputs: Value | None, domain: str = "", num_outputs: int = 1,
           name: str | None = None, **attributes: Any) -> Any:
        """A new node; returns its output (or a tuple of outputs when num_outputs > 1).
        Attributes are plain Python values (ints, floats, strings, lists, arrays)."""
        node_name = self.graph.fresh_name(name or op_type)
        outputs = [Value(self.graph.fresh_name(f"{node_name}_out{i}" if num_outputs > 1 else f"{node_name}_out"))
                   for i in range(num_outputs)]
        inputs = list(inputs)
        while inputs and inputs[-1] is None:  # omitted trailing optional inputs
            inputs.pop()
        for value in inputs:
            if value is not None and not isinstance(value, Value):
                raise TypeError(f"Builder.op({op_type!r}): inputs must be Values (use b.const for data), "
                                f"not {type(value).__name__}")
        node = Node(op_type, inputs, outputs, {k: v for k, v in attributes.items() if v is not None},
                    domain=domain, name=node_name)
        self.nodes.append(node)
        return outputs[0] if num_outputs == 1 else tuple(outputs)

    def const(self, array: Any, name: str = "const", dtype: Any = None) -> Value:
        """A new initializer holding `array` (cast to `dtype` when given)."""
        array = np.asarray(array) if dtype is None else np.asarray(array, dtype=dtype)
        value = Value(self.graph.fresh_name(name))
        value.set_array(array)
        self.constants.append(value)
        return value

    def use_function(self, function) -> None:
        """A model-local function (onnx.FunctionProto) the new nodes call: added to the
        model on commit unless it already has one of that domain and name."""
        self.functions.append(function)

    def discard(self) -> None:
        for node in self.nodes:
            node.detach_inputs()
        self.nodes.clear()
        self.constants.clear()
        self.functions.clear()

    def commit(self, before: Node) -> None:
        for value in self.constants:
            value.graph = self.graph
            self.graph.initializers[value.name] = value
        for node in self.nodes:
            self.graph.insert_node(node, before=before)
            if node.domain not in ("", "ai.onnx") and node.domain not in self.model.opset_imports:
                self.model.opset_imports[node.domain] = 1
        for function in self.functions:
            if not any((f.domain, f.name) == (function.domain, function.name) for f in self.model.functions):
                self.model.functions.append(function)


@dataclasses.dataclass
class Rule:
    """A pattern rooted at an Op, and `build(match, builder)` returning the value(s)
    that replace the root's output(s), or None to decline. `needs_shapes` runs
    onnx shape inference before matching (set automatically when the pattern has
    rank or dtype predicates; set it when `build` reads shapes)."""

    name: str
    pattern: Pattern
    build: Callable[[Match, Builder], BuildResult]
    needs_shapes: bool = False

    def __post_init__(self):
        self.root_types = root_op_types(self.pattern)
        self.needs_shapes = self.needs_shapes or needs_inference(self.pattern)


def rule(pattern: Pattern, name: str | None = None, needs_shapes: bool = False):
    """Decorator turning a build function into a Rule named after it (kebab-case)."""

    def decorate(fn: Callable[[Match, Builder], BuildResult]) -> Rule:
        return Rule(name or fn.__name__.strip("_").replace("_", "-"), pattern, fn, needs_shapes)

    return decorate


class RuleSet:
    """Rules applied together; rule sets compose with `+` or by nesting."""

    def __init__(self, *rules: "Rule | RuleSet | Iterable[Rule | RuleSet]"):
        self.rules: list[Rule] = []
        for item in rules:
            if isinstance(item, Rule):
                self.rules.append(item)
            elif isinstance(item, RuleSet):
                self.rules.extend(item.rules)
            elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
                self.rules.extend(RuleSet(*item).rules)
            else:
                raise TypeError(f"RuleSet takes Rules or RuleSets, not {type(item).__name__}")

    def __add__(self, other: "RuleSet | Rule") -> "RuleSet":
        return RuleSet(self, other)

    def __iter__(self):
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return f"RuleSet({', '.join(r.name for r in self.rules)})"

    def apply(self, model: Model, max_sweeps: int = 16, stats: dict[str, int] | None = None) -> dict[str, int]:
        """Rewrite to a fixed point; returns how often each rule fired."""
        stats = {} if stats is None else stats
        by_type: dict[str, list[Rule]] = {}
        for r in self.rules:
            for t in r.root_types:
                by_type.setdefault(t, []).append(r)
        shapes = any(r.needs_shapes for r in self.rules)
        matcher = Matcher(model.opset_imports)
        for _ in range(max_sweeps):
            if shapes:
                get_analysis(model, "shapes")
            changed = False
            for graph in list(model.graph.all_graphs()):
                if _sweep(model, graph, by_type, matcher, stats):
                    changed = True
                    graph.sort()  # replacements may read values defined after the root
            if not changed:
                break
            model.analyses.clear()  # shapes etc. are stale after a rewrite
        return stats


def _sweep(model: Model, graph: Graph, by_type: dict[str, list[Rule]], matcher: Matcher, stats: dict[str, int]) -> bool:
    changed = False
    for node in reversed(list(graph.nodes)):
        if node.graph is not graph:  # removed by an earlier rewrite in this sweep
            continue
        for r in by_type.get(node.op_type, ()):
            if _try_rule(model, graph, node, r, matcher):
                stats[r.name] = stats.get(r.name, 0) + 1
                changed = True
                break
    return changed


def _try_rule(model: Model, graph: Graph, node: Node, r: Rule, matcher: Matcher) -> bool:
    for root_value in node.outputs:
        for m in matcher.matches(r.pattern, root_value):
            if m.escaping():
                continue
            b = Builder(model, graph, m)
            try:
                result = r.build(m, b)
            except Exception as exc:
                b.discard()
                raise OnnxforgeError(f"rule {r.name!r} failed to build the replacement at {_label(node)}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            if result is None or not _commit(graph, m, b, root_value, result):
                b.discard()
                continue
            return True
    return False


def _label(node: Node) -> str:
    if node.name:
        return f"node {node.name!r} ({node.op_type})"
    return f"the {node.op_type} node producing {node.outputs[0].name!r}" if node.outputs else f"an unnamed {node.op_type} node"


def _commit(graph: Graph, m: Match, b: Builder, root_value: Value, result: BuildResult) -> bool:
    """Put the replacement in; False (nothing done) when it cannot replace the root."""
    new_values = [result] if isinstance(result, Value) else list(result)
    root = m.root
    olds = root.outputs[root_value.output_index:root_value.output_index + len(new_values)]
    if len(olds) != len(new_values) or not all(isinstance(v, Value) for v in new_values):
        b.discard()
        raise OnnxforgeError(f"a rule's replacement must be {len(olds) or 1} Value(s) for the outputs of {_label(root)}, "
                             f"got {result!r}")
    if any(new is old for new, old in zip(new_values, olds)):
        return False  # "replace the root by itself": nothing to do
    others = [v for v in root.outputs if not any(v is o for o in olds)]
    if any(v.uses or v.is_graph_output for v in others):
        return False  # the root's other outputs are still read: it cannot go
    b.commit(before=root)
    seen = b.model.shape_stamps  # what shape inference last saw (ir/shape_update.py)
    for old, new in zip(olds, new_values):
        if new.dtype is None:
            new.dtype = old.dtype
        if new.shape is None:
            new.shape = old.shape
        if seen is not None and old.name in seen and new.name not in seen and stamp(new)[:2] == stamp(old)[:2]:
            # the replacement means what the old value meant: its readers need not be
            # inferred again for it
            seen[new.name] = stamp(new)
        graph.replace_all_uses(old, new)
    remove_unused(graph, list(m.matched))
    return True


def remove_unused(graph: Graph, nodes: list[Node]) -> None:
    """Remove those of `nodes` whose outputs nobody reads, then (transitively) the
    producers and initializers that only they fed."""
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if node.graph is not graph or any(v.uses or v.is_graph_output for v in node.outputs):
            continue
        feeds = [v for v in node.inputs if v is not None]
        graph.remove_node(node)
        for value in feeds:
            if value.uses or value.is_graph_output or value.graph is not graph:
                continue
            if value.producer is not None:
                pending.append(value.producer)
            elif value.is_initializer and not value.is_graph_input:
                graph.remove_initializer(value)


class RewritePass(Pass):
    """A pass that applies a rule set to a fixed point. Set `rules` on the class, or
    override `rule_sets()` to choose rules from the options; the sets it returns
    run one after the other (phases), each to its own fixed point."""

    rules: ClassVar["RuleSet | None"] = None

    def rule_sets(self, model: Model) -> list[RuleSet]:
        if self.rules is None:
            raise PassError(self.name or type(self).__name__, "a RewritePass needs `rules` or a rule_sets() method")
        return [self.rules]

    def run(self, model: Model) -> PassResult:
        stats: dict[str, int] = {}
        for rules in self.rule_sets(model):
            rules.apply(model, stats=stats)
        return PassResult(bool(stats), stats)


def rewrite_pass(name: str, rules: "RuleSet | Iterable[Rule | RuleSet]", *, effect: Effect = Effect.EXACT,
                 doc: str | None = None, atol: float | None = None, rtol: float | None = None) -> type[RewritePass]:
    """Register a rule set as a pass named `name` (kebab-case) and return its class."""
    rule_set = rules if isinstance(rules, RuleSet) else RuleSet(*rules)
    attrs: dict[str, Any] = {"rules": rule_set, "effect": effect,
                             "__doc__": doc or f"Rewrite rules: {', '.join(r.name for r in rule_set)}."}
    if atol is not None:
        attrs["atol"] = atol
    if rtol is not None:
        attrs["rtol"] = rtol
    class_name = "".join(part.capitalize() for part in re.split(r"[-_]", name)) + "Pass"
    return register_pass(name)(type(class_name, (RewritePass,), attrs))
