import json
import sys

import pytest

from onnxforge.ir import PassOptionError, PipelineError, PipelineSyntaxError, UnknownPassError
from onnxforge.passes import Pass, load_pipeline_file, parse_pipeline, register_pass, registered_passes
from onnxforge.passes import registry
from onnxforge.passes.pipeline import PassSpec, Repeat, resolve_pipeline

TEXTS = [
    "cleanup",
    "cleanup,fold-constants,cse",
    "fold-constants{max_bytes=1024 shapes=false}",
    "repeat{max=4}(cleanup,fold-constants{max_bytes=10}),cse",
    "repeat{max=2}(repeat{max=3}(cse),cleanup)",
    "-O1,cleanup",
    'fuse{patterns=conv-bn+gemm},quantize-weights{bits=4 block=32 name="a b"}',
]


@pytest.mark.parametrize("text", TEXTS)
def test_parse_print_round_trip(text):
    p = parse_pipeline(text)
    assert parse_pipeline(str(p)) == p
    assert str(parse_pipeline(str(p))) == str(p)


def test_whitespace_is_insignificant():
    assert parse_pipeline(" cleanup , fold-constants { max_bytes = 4 } ") == parse_pipeline("cleanup,fold-constants{max_bytes=4}")


def test_structure():
    p = parse_pipeline("repeat{max=4}(cleanup,cse)")
    assert p.items == (Repeat(4, (PassSpec("cleanup"), PassSpec("cse"))),)


@pytest.mark.parametrize("text,column", [
    ("cleanup,", 9), ("cleanup,,cse", 9), ("cleanup{max_bytes}", 18), ("cleanup{a=1", 12),
    ("repeat{max=x}(cse)", 1), ("repeat(cse", 11), ("cleanup cse", 9), ("fold{a=1 a=2}", 10),
])
def test_syntax_errors_give_the_column(text, column):
    with pytest.raises(PipelineSyntaxError) as info:
        parse_pipeline(text)
    assert info.value.column == column, str(info.value)
    assert f"column {column}" in str(info.value)


def test_unknown_pass_suggests_close_names():
    with pytest.raises(UnknownPassError, match="did you mean fold-constants"):
        resolve_pipeline("cleanup,fold-constant").validate()


def test_unknown_option_and_bad_value():
    with pytest.raises(PassOptionError, match="no option 'max_byte'.*max_bytes"):
        parse_pipeline("fold-constants{max_byte=3}").validate()
    with pytest.raises(PassOptionError, match="max_bytes='big'"):
        parse_pipeline("fold-constants{max_bytes=big}").validate()
    with pytest.raises(PassOptionError, match="true or false"):
        parse_pipeline("fold-constants{shapes=maybe}").validate()


def test_presets():
    p = resolve_pipeline("-O1")
    assert [s.name for s in p.flat()] == ["cleanup", "fold-constants", "cse", "cleanup"]
    with pytest.raises(UnknownPassError, match="preset"):
        parse_pipeline("-O9").validate()


def test_pipeline_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"passes": [
        "cleanup", {"name": "fold-constants", "options": {"max_bytes": 64, "shapes": False}},
        {"repeat": 3, "passes": ["cse", "cleanup"]}]}))
    (tmp_path / "p.toml").write_text('pipeline = "cleanup,fold-constants{max_bytes=64 shapes=false},repeat{max=3}(cse,cleanup)"\n')
    a, b = load_pipeline_file(str(tmp_path / "p.json")), load_pipeline_file(str(tmp_path / "p.toml"))
    assert a == b
    a.validate()
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(PipelineError, match="bad.json"):
        load_pipeline_file(str(tmp_path / "bad.json"))


def test_duplicate_registration_is_an_error():
    with pytest.raises(PipelineError, match="already registered"):
        @register_pass("cleanup")
        class Other(Pass):
            pass


def test_pass_names_are_kebab_case():
    with pytest.raises(PipelineError, match="kebab"):
        register_pass("Bad_Name")(type("P", (Pass,), {}))


def test_entry_point_plugins_register(tmp_path, monkeypatch):
    """A package declaring the onnxforge.passes entry point group gets its passes
    registered (simulated with a dist-info folder on sys.path)."""
    (tmp_path / "my_plugin.py").write_text(
        "from onnxforge.passes import Pass, PassResult, register_pass\n"
        "@register_pass('plugin-noop')\n"
        "class Noop(Pass):\n"
        "    def run(self, model):\n"
        "        return PassResult(False)\n")
    dist = tmp_path / "my_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[onnxforge.passes]\nnoop = my_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded_groups", set())
    try:
        assert "plugin-noop" in registered_passes()
        parse_pipeline("cleanup,plugin-noop").validate()
    finally:
        registry.unregister_pass("plugin-noop")
        sys.modules.pop("my_plugin", None)
