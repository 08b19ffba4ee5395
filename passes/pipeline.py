"""Pipeline text, MLIR style, and its AST.

    cleanup,fold-constants{max_bytes=1048576},repeat{max=4}(cse,cleanup),-O1

parse(str(p)) == p for every pipeline p. Passes and options are checked when the
pipeline is built (`build`), with the column of the offending name."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Union

from ..ir import PipelineError, PipelineSyntaxError, UnknownPassError
from .registry import get_pass, make_options, option_text

PRESETS: dict[str, str] = {
    "-O0": "",
    "-O1": "cleanup,fold-constants,cse,cleanup",
    "-O2": "cleanup,fold-constants,fuse,fold-constants,cse,cleanup",
}


@dataclasses.dataclass(frozen=True)
class PassSpec:
    name: str
    options: tuple[tuple[str, str], ...] = ()
    column: int = dataclasses.field(default=0, compare=False)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + "{" + " ".join(f"{k}={_quote(v)}" for k, v in self.options) + "}"


@dataclasses.dataclass(frozen=True)
class Repeat:
    max: int
    body: tuple["Item", ...]

    def __str__(self) -> str:
        return f"repeat{{max={self.max}}}(" + ",".join(map(str, self.body)) + ")"


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    column: int = dataclasses.field(default=0, compare=False)

    def __str__(self) -> str:
        return self.name


Item = Union[PassSpec, Repeat, Preset]


@dataclasses.dataclass(frozen=True)
class Pipeline:
    items: tuple[Item, ...]

    def __str__(self) -> str:
        return ",".join(map(str, self.items))

    @staticmethod
    def parse(text: str) -> "Pipeline":
        return parse_pipeline(text)

    def flat(self) -> list[PassSpec]:
        """Every pass spec, presets expanded, in order (repeat bodies once)."""
        out: list[PassSpec] = []
        for item in self.items:
            if isinstance(item, PassSpec):
                out.append(item)
            elif isinstance(item, Repeat):
                out.extend(Pipeline(item.body).flat())
            else:
                out.extend(parse_pipeline(PRESETS[item.name]).flat())
        return out

    def validate(self) -> None:
        """Raise UnknownPassError / PassOptionError for the first bad name or option."""
        for item in self.items:
            if isinstance(item, Preset) and item.name not in PRESETS:
                raise UnknownPassError(f"unknown preset {item.name!r} at column {item.column}; known: {', '.join(PRESETS)}")
        for spec in self.flat():
            try:
                make_options(get_pass(spec.name), dict(spec.options))
            except PipelineError as exc:
                raise type(exc)(f"{exc} (at column {spec.column})" if spec.column else str(exc)) from None


def _quote(value: str) -> str:
    if value == "" or any(c in value for c in ' \t{}()"'):
        return json.dumps(value)
    return value


# repeat(...) inside repeat(...): deeper than this is a mistake (or a hostile file),
# and Python's recursion would end it with a RecursionError
MAX_NESTING = 32


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.depth = 0

    def error(self, message: str, pos: int | None = None) -> PipelineSyntaxError:
        return PipelineSyntaxError(message, self.text, (self.pos if pos is None else pos) + 1)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of text"
            raise self.error(f"expected {char!r}, found {found}")
        self.pos += 1

    def name(self, what: str) -> str:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "-_."):
            self.pos += 1
        if start == self.pos:
            found = repr(self.text[self.pos]) if self.pos < len(self.text) else "end of text"
            raise self.error(f"expected {what}, found {found}")
        return self.text[start:self.pos]

    def value(self) -> str:
        self.skip_ws()
        if self.peek() == '"':
            start = self.pos
            decoder = json.JSONDecoder()
            try:
                value, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError:
                raise self.error("unterminated quoted value", start) from None
            self.pos = end
            return str(value)
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace() and self.text[self.pos] not in "{}()":
            self.pos += 1
        if start == self.pos:
            raise self.error("expected an option value")
        return self.text[start:self.pos]

    def options(self) -> tuple[tuple[str, str], ...]:
        if self.peek() != "{":
            return ()
        self.pos += 1
        pairs: list[tuple[str, str]] = []
        while self.peek() != "}":
            if self.peek() == "":
                raise self.error("unclosed '{'")
            key_pos = self.pos
            key = self.name("an option name")
            if any(k == key for k, _ in pairs):
                raise self.error(f"option {key!r} given twice", key_pos)
            self.expect("=")
            pairs.append((key, self.value()))
        self.pos += 1
        return tuple(pairs)

    def items(self, closing: str) -> tuple[Item, ...]:
        items: list[Item] = []
        while True:
            if self.peek() in (closing, ","):
                raise self.error("expected a pass name")
            items.append(self.item())
            nxt = self.peek()
            if nxt == ",":
                self.pos += 1
                continue
            if nxt == closing:
                return tuple(items)
            raise self.error(f"expected ',' or {'end of text' if closing == '' else repr(closing)}")

    def item(self) -> Item:
        self.skip_ws()
        start = self.pos
        if self.peek() == "-":
            return Preset(self.name("a preset name"), column=start + 1)
        name = self.name("a pass name")
        if name == "repeat":
            opts = dict(self.options())
            unknown = set(opts) - {"max"}
            if unknown:
                raise self.error(f"repeat takes only max=N, not {', '.join(sorted(unknown))}", start)
            try:
                limit = int(opts.get("max", "8"))
            except ValueError:
                raise self.error(f"repeat max must be an integer, not {opts['max']!r}", start) from None
            if limit < 1:
                raise self.error("repeat max must be at least 1", start)
            if self.depth >= MAX_NESTING:
                raise self.error(f"repeat nested more than {MAX_NESTING} deep", start)
            self.expect("(")
            self.depth += 1
            body = self.items(")")
            self.depth -= 1
            self.pos += 1
            return Repeat(limit, body)
        return PassSpec(name, self.options(), column=start + 1)


def parse_pipeline(text: str) -> Pipeline:
    """Parse pipeline text; raises PipelineSyntaxError with the column."""
    if not text.strip():
        return Pipeline(())
    parser = _Parser(text)
    items = parser.items("")
    return Pipeline(items)


def pipeline_from_data(data: Any, where: str) -> Pipeline:
    """From parsed JSON/TOML/YAML: {"pipeline": "text"} or {"passes": [...]}, where each
    entry is "name", {"name": ..., "options": {...}} or {"repeat": N, "passes": [...]}."""
    if isinstance(data, dict) and isinstance(data.get("pipeline"), str):
        return parse_pipeline(data["pipeline"])
    if not isinstance(data, dict) or not isinstance(data.get("passes"), list):
        raise PipelineError(f"{where}: expected a 'pipeline' string or a 'passes' list")
    return Pipeline(tuple(_item_from_data(entry, where) for entry in data["passes"]))


def _item_from_data(entry: Any, where: str, depth: int = 0) -> Item:
    if isinstance(entry, str):
        items = parse_pipeline(entry).items
        if len(items) != 1:
            raise PipelineError(f"{where}: list entry {entry!r} must be a single pass")
        return items[0]
    if isinstance(entry, dict) and "repeat" in entry:
        body = entry.get("passes")
        if not isinstance(body, list) or not body:
            raise PipelineError(f"{where}: repeat entry needs a non-empty 'passes' list")
        limit = entry["repeat"]
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise PipelineError(f"{where}: repeat must be an integer >= 1, not {limit!r}")
        if depth >= MAX_NESTING:
            raise PipelineError(f"{where}: repeat nested more than {MAX_NESTING} deep")
        return Repeat(limit, tuple(_item_from_data(e, where, depth + 1) for e in body))
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        options = entry.get("options", {}) or {}
        if not isinstance(options, dict):
            raise PipelineError(f"{where}: options of {entry['name']!r} must be a table/object")
        return PassSpec(entry["name"], tuple((str(k), option_text(v)) for k, v in options.items()))
    raise PipelineError(f"{where}: cannot read pipeline entry {entry!r}")


def load_pipeline_file(path: str) -> Pipeline:
    """A pipeline from a .json, .toml or .yaml/.yml file."""
    if not os.path.isfile(path):
        raise PipelineError(f"pipeline file {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if ext == ".json":
            data = json.loads(raw)
        elif ext == ".toml":
            import tomllib

            data = tomllib.loads(raw.decode())
        elif ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise PipelineError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from None
            data = yaml.safe_load(raw)
        else:
            raise PipelineError(f"{path}: pipeline files must end in .json, .toml, .yaml or .yml")
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(f"{path}: cannot parse: {exc}") from None
    return pipeline_from_data(data, path)


def resolve_pipeline(spec: "str | Pipeline") -> Pipeline:
    """Pipeline text, a preset name, a pipeline file path, or a Pipeline."""
    if isinstance(spec, Pipeline):
        return spec
    if spec in PRESETS:
        return Pipeline((Preset(spec, 1),))
    if os.path.splitext(spec)[1].lower() in (".json", ".toml", ".yaml", ".yml") and os.path.exists(spec):
        return load_pipeline_file(spec)
    return parse_pipeline(spec)
