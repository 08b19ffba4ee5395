"""The README's Python examples run as tests."""
import pathlib
import re

import pytest

from onnxforge.passes import registry

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(registry._REGISTRY)
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        for name in set(registry._REGISTRY) - before:
            registry.unregister_pass(name)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2
