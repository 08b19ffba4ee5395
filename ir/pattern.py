"""Declarative patterns over the IR, matched by use-def structure (a value's
producer and its inputs), never by names.

    x = Var("x")
    erf = Op("Erf", Op("Div", x, Const(value=1.4142135)))
    gelu = Op("Mul", x, Op("Mul", Const(value=0.5), Op("Add", erf, Const(value=1.0))))
    m = Matcher(model.opset_imports).match(gelu, node.outputs[0])   # None, or m["x"]

- `Op(op_type, *inputs)` matches a value produced by a node of that type (a tuple
  of types is an alternative); `attrs=`, `dtype=`, `rank=`, `where=` and
  `single_use=` add conditions. Add, Mul, Max, Min, And, Or, Xor, Equal try both
  input orders. A trailing `...` accepts any further inputs.
- `Var(name)` matches any value; the same name twice must be the same value.
- `Const(name, value=...)` matches a constant (initializer or Constant node),
  optionally with every element close to `value`.
- `p | q` (or `Or(p, q)`) tries alternatives in order; `Opt(p)` also matches an
  omitted optional input.

A pattern object used twice in one pattern (a DAG) must match the same node both
times. Matching backtracks over alternatives and input orders and yields every
way the pattern fits; `Match` gives the bound values, nodes and constants.
dtype/rank predicates read the values' inferred types (ir.infer_shapes; the
rewrite passes run it when a rule needs it).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import onnx
from onnx import defs, helper

from .graph import Graph
from .node import Node
from .value import Value

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal", "BitwiseAnd", "BitwiseOr", "BitwiseXor"})
STANDARD_DOMAINS = ("", "ai.onnx")


def _tensor_type(dtype: Any) -> int:
    """onnx TensorProto type from an int, a numpy dtype or a name like "float32"."""
    if isinstance(dtype, int):
        return dtype
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _dtypes(spec: Any) -> frozenset[int] | None:
    if spec is None:
        return None
    items = spec if isinstance(spec, (tuple, list, set, frozenset)) else (spec,)
    return frozenset(_tensor_type(d) for d in items)


def _ranks(spec: Any) -> frozenset[int] | None:
    if spec is None:
        return None
    return frozenset(spec) if isinstance(spec, (tuple, list, set, frozenset)) else frozenset({spec})


class Pattern:
    """Base of all patterns. `p | q` is the alternative of p and q."""

    def __or__(self, other: Pattern) -> Or:
        return Or(self, other)

    def _value_ok(self, value: Value) -> bool:
        """Shared value predicates: dtype, rank, single use."""
        dtypes = getattr(self, "dtypes", None)
        if dtypes is not None and value.dtype not in dtypes:
            return False
        ranks = getattr(self, "ranks", None)
        if ranks is not None and (value.shape is None or len(value.shape) not in ranks):
            return False
        if getattr(self, "single_use", False) and (len(value.uses) != 1 or value.is_graph_output):
            return False
        return True


class Var(Pattern):
    """Any value (graph input, constant, node output). Named Vars bind: the same
    name twice in one pattern must be the same value. `where(value)` adds a test."""

    def __init__(self, name: str | None = None, *, dtype: Any = None, rank: Any = None,
                 single_use: bool = False, where: Callable[[Value], bool] | None = None):
        self.name = name
        self.dtypes = _dtypes(dtype)
        self.ranks = _ranks(rank)
        self.single_use = single_use
        self.where = where

    def __repr__(self) -> str:
        return f"Var({self.name!r})" if self.name else "Var()"


class Const(Pattern):
    """A constant value: an initializer that is not a feedable graph input, or a
    Constant node's output. `value=` requires every element to be close to it
    (rtol/atol); `scalar=True` requires exactly one element; `where(array)` adds
    a test on the data."""

    def __init__(self, name: str | None = None, *, value: Any = None, scalar: bool = False, dtype: Any = None,
                 rank: Any = None, where: Callable[[np.ndarray], bool] | None = None,
                 rtol: float = 1e-6, atol: float = 0.0):
        self.name = name
        self.value = None if value is None else np.asarray(value, dtype=np.float64)
        self.scalar = scalar
        self.dtypes = _dtypes(dtype)
        self.ranks = _ranks(rank)
        self.where = where
        self.rtol, self.atol = rtol, atol

    def __repr__(self) -> str:
        return f"Const({self.name!r})" if self.name else ("Const()" if self.value is None else f"Const(value={self.value})")

    def accepts(self, array: np.ndarray) -> bool:
        if self.dtypes is not None and helper.np_dtype_to_tensor_dtype(array.dtype) not in self.dtypes:
            return False
        if self.ranks is not None and array.ndim not in self.ranks:
            return False
        if self.scalar and array.size != 1:
            return False
        if self.value is not None:
            if array.dtype.kind not in "biuf" or array.size == 0:
                return False
            if not np.allclose(array.astype(np.float64), self.value, rtol=self.rtol, atol=self.atol):
                return False
        return self.where is None or bool(self.where(array))


class Op(Pattern):
    """A value produced by a node of `op_type` (or any of a tuple of types) in
    `domain` ("" also accepts "ai.onnx"), whose inputs match `inputs` in order.

    attrs: {name: expected value, or a predicate on the value}; an attribute the
      node leaves out has its schema default.
    output: which output of the node the value must be (default 0).
    single_use: the value has exactly one use and is not a graph output.
    commutative: try both input orders (default: for Add, Mul, Max, Min, ...).
    where(node): any further test on the node.
    A trailing `...` in inputs accepts any further inputs; otherwise extra inputs
    must be omitted ones."""

    def __init__(self, op_type: str | tuple[str, ...], *inputs: Pattern | Any, name: str | None = None,
                 domain: str = "", attrs: Mapping[str, Any] | None = None, output: int = 0,
                 single_use: bool = False, commutative: bool | None = None, dtype: Any = None, rank: Any = None,
                 where: Callable[[Node], bool] | None = None):
        self.op_types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        self.rest = bool(inputs) and inputs[-1] is Ellipsis
        self.inputs: tuple[Pattern, ...] = tuple(inputs[:-1] if self.rest else inputs)
        for p in self.inputs:
            if not isinstance(p, Pattern):
                raise TypeError(f"Op({self.op_types[0]!r}): inputs must be patterns (Var, Const, Op, ...), not {p!r}")
        self.name = name
        self.domain = domain
        self.attrs = dict(attrs or {})
        self.output = output
        self.single_use = single_use
        if commutative is None:
            commutative = len(self.inputs) == 2 and all(t in COMMUTATIVE for t in self.op_types)
        self.commutative = commutative
        self.dtypes = _dtypes(dtype)
        self.ranks = _ranks(rank)
        self.where = where
        self.key = name or f"_op{id(self)}"

    def __repr__(self) -> str:
        return f"Op({'|'.join(self.op_types)}{', name=' + repr(self.name) if self.name else ''})"


class Or(Pattern):
    """Alternatives, tried in order."""

    def __init__(self, *alternatives: Pattern):
        flat: list[Pattern] = []
        for p in alternatives:
            flat.extend(p.alternatives if isinstance(p, Or) else [p])
        self.alternatives = tuple(flat)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.alternatives))


class Opt(Pattern):
    """An optional input: matches an omitted input, or `pattern`."""

    def __init__(self, pattern: Pattern):
        self.pattern = pattern

    def __repr__(self) -> str:
        return f"Opt({self.pattern!r})"


def root_op_types(pattern: Pattern) -> tuple[str, ...]:
    """The op types a pattern's root can have (for indexing rules by op type)."""
    if isinstance(pattern, Op):
        return pattern.op_types
    if isinstance(pattern, Or):
        types: list[str] = []
        for alt in pattern.alternatives:
            types.extend(t for t in root_op_types(alt) if t not in types)
        return tuple(types)
    raise TypeError(f"a rewrite pattern must be rooted at an Op (or alternatives of Ops), not {pattern!r}")


def needs_inference(pattern: Pattern, seen: set[int] | None = None) -> bool:
    """Whether matching reads inferred types: a rank or dtype predicate on a
    value that is not a constant (constants carry their own)."""
    seen = set() if seen is None else seen
    if id(pattern) in seen:
        return False
    seen.add(id(pattern))
    if not isinstance(pattern, Const) and (getattr(pattern, "ranks", None) is not None
                                           or getattr(pattern, "dtypes", None) is not None):
        return True
    children = (pattern.inputs if isinstance(pattern, Op) else pattern.alternatives if isinstance(pattern, Or)
                else (pattern.pattern,) if isinstance(pattern, Opt) else ())
    return any(needs_inference(c, seen) for c in children)


@functools.lru_cache(maxsize=None)
def _schema_defaults(op_type: str, domain: str, version: int) -> dict[str, Any]:
    try:
        schema = defs.get_schema(op_type, version, domain)
    except Exception:  # unknown op or domain: no defaults
        return {}
    found = {}
    for name, attr in schema.attributes.items():
        if attr.default_value is not None and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            value = helper.get_attribute_value(attr.default_value)
            found[name] = value.decode() if isinstance(value, bytes) else value
    return found


def attribute(node: Node, name: str, opset_imports: Mapping[str, int] | None = None, default: Any = None) -> Any:
    """The node's attribute, else the default from its op schema (at the model's
    opset for the node's domain), else `default`."""
    if name in node.attributes:
        return node.attributes[name]
    domain = "" if node.domain in STANDARD_DOMAINS else node.domain
    version = (opset_imports or {}).get(domain, (opset_imports or {}).get("ai.onnx", 10**4) if domain == "" else 1)
    return _schema_defaults(node.op_type, domain, version).get(name, default)


def _same_attr(actual: Any, expected: Any) -> bool:
    if callable(expected):
        return bool(expected(actual))
    if actual is None:
        return False
    if isinstance(expected, (list, tuple)):
        return isinstance(actual, (list, tuple)) and list(actual) == list(expected)
    if isinstance(expected, float) or isinstance(actual, float):
        return np.isclose(float(actual), float(expected), rtol=1e-6, atol=0)
    return actual == expected


class Match:
    """One way a pattern fits: values and nodes by name, all matched nodes."""

    def __init__(self, root: Node, values: dict[str, Value], nodes: dict[str, Node], matched: tuple[Node, ...],
                 opset_imports: Mapping[str, int]):
        self.root = root
        self.values = values
        self.nodes = {k: v for k, v in nodes.items() if not k.startswith("_op")}
        self.matched = matched
        self.opset_imports = opset_imports

    def __repr__(self) -> str:
        return f"Match(root={self.root!r}, values={sorted(self.values)}, nodes={sorted(self.nodes)})"

    def __getitem__(self, name: str) -> Value:
        """The value bound to `name` (for a named Op: the output it matched)."""
        if name in self.values:
            return self.values[name]
        raise KeyError(f"pattern has no value named {name!r}; names: {', '.join(sorted(self.values)) or 'none'}")

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: Any = None) -> Value | None:
        return self.values.get(name, default)

    def node(self, name: str) -> Node:
        if name in self.nodes:
            return self.nodes[name]
        raise KeyError(f"pattern has no node named {name!r}; names: {', '.join(sorted(self.nodes)) or 'none'}")

    def const(self, name: str) -> np.ndarray:
        """The data of the constant bound to `name`."""
        array = self[name].const_value()
        if array is None:
            raise KeyError(f"{name!r} is bound to {self[name].name!r}, which is not a constant")
        return np.asarray(array)

    def attr(self, node_name: str, key: str, default: Any = None) -> Any:
        """Attribute of a named node, schema default included."""
        return attribute(self.node(node_name), key, self.opset_imports, default)

    def escaping(self) -> list[Value]:
        """Outputs of matched nodes other than the root's that are read outside the
        match or are graph outputs: removing the match would lose them."""
        inside = {id(n) for n in self.matched}
        lost: list[Value] = []
        for node in self.matched:
            if node is self.root:
                continue
            for value in node.outputs:
                if value.is_graph_output or any(id(user) not in inside for user, _ in value.uses):
                    lost.append(value)
        return lost


class _State:
    """Bindings so far; copied on write so that backtracking is free."""

    __slots__ = ("values", "nodes", "matched")

    def __init__(self, values: dict[str, Value], nodes: dict[str, Node], matched: tuple[Node, ...]):
        self.values, self.nodes, self.matched = values, nodes, matched


class Matcher:
    """Matches patterns against values of one model (the opset imports give
    attribute defaults)."""

    def __init__(self, opset_imports: Mapping[str, int] | None = None):
        self.opset_imports = dict(opset_imports or {"": 10**4})

    def matches(self, pattern: Pattern, value: Value) -> Iterator[Match]:
        """Every way `pattern` matches `value` (rooted at its producer)."""
        root = value.producer
        if root is None:
            return
        for state in self._match(pattern, value, _State({}, {}, ()), root.graph):
            yield Match(root, state.values, state.nodes, state.matched, self.opset_imports)

    def match(self, pattern: Pattern, value: Value) -> Match | None:
        """The first match, or None."""
        return next(self.matches(pattern, value), None)

    def find(self, pattern: Pattern, graph: Graph) -> Iterator[Match]:
        """First match rooted at each node of `graph`, in node order."""
        types = set(root_op_types(pattern))
        for node in list(graph.nodes):
            if node.op_type in types:
                for value in node.outputs:
                    m = self.match(pattern, value)
                    if m is not None:
                        yield m
                        break

    # -- the matcher proper ---------------------------------------------------
    def _match(self, p: Pattern, value: Value | None, s: _State, graph: Graph | None) -> Iterator[_State]:
        if isinstance(p, Opt):
            if value is None:
                yield s
                return
            yield from self._match(p.pattern, value, s, graph)
            return
        if value is None:
            return
        if isinstance(p, Or):
            for alt in p.alternatives:
                yield from self._match(alt, value, s, graph)
            return
        if isinstance(p, Var):
            if p.where is not None and not p.where(value):
                return
            if not p._value_ok(value):
                return
            yield from self._bind(p.name, value, s)
            return
        if isinstance(p, Const):
            array = value.const_value()
            if array is None or not p.accepts(np.asarray(array)):
                return
            yield from self._bind(p.name, value, s)
            return
        if isinstance(p, Op):
            yield from self._match_op(p, value, s, graph)
            return
        raise TypeError(f"not a pattern: {p!r}")

    def _bind(self, name: str | None, value: Value, s: _State) -> Iterator[_State]:
        if name is None:
            yield s
        elif name in s.values:
            if s.values[name] is value:
                yield s
        else:
            yield _State({**s.values, name: value}, s.nodes, s.matched)

    def _match_op(self, p: Op, value: Value, s: _State, graph: Graph | None) -> Iterator[_State]:
        node = value.producer
        if node is None or node.op_type not in p.op_types or node.graph is not graph or value.output_index != p.output:
            return  # the op type first: most candidates fail there
        bound = s.nodes.get(p.key)
        if bound is not None:  # the same pattern object met again (a DAG): same node
            if bound is node:
                yield s
            return
        if any(n is node for n in s.matched):
            return  # one node cannot play two parts of a pattern
        domain = "" if node.domain in STANDARD_DOMAINS else node.domain
        if domain != ("" if p.domain in STANDARD_DOMAINS else p.domain):
            return
        if not p._value_ok(value):
            return
        for key, expected in p.attrs.items():
            if not _same_attr(attribute(node, key, self.opset_imports), expected):
                return
        if p.where is not None and not p.where(node):
            return
        inputs = list(node.inputs)
        n = len(p.inputs)
        if not p.rest and any(v is not None for v in inputs[n:]):
            return
        inputs = (inputs + [None] * n)[:n]
        names = {**s.values, p.name: value} if p.name else s.values
        state = _State(names, {**s.nodes, p.key: node}, s.matched + (node,))
        orders = [inputs, inputs[::-1]] if p.commutative and n == 2 else [inputs]
        for order in orders:
            yield from self._match_inputs(p.inputs, order, 0, state, graph)

    def _match_inputs(self, patterns, values, i: int, s: _State, graph) -> Iterator[_State]:
        if i == len(patterns):
            yield s
            return
        for state in self._match(patterns[i], values[i], s, graph):
            yield from self._match_inputs(patterns, values, i + 1, state, graph)
