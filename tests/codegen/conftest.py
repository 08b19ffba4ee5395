"""Compiled packages shared by the codegen tests: each (model, target, pipeline)
is built once per session (compiles are the slow part: about 0.2-1 s each)."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed")

import onnxforge  # noqa: E402
from tests.codegen import models  # noqa: E402


class Packages:
    def __init__(self, folder):
        self.folder = folder
        self.cache = {}

    def get(self, model: str, target: str = "x86", pipeline: str = "-O1", **kwargs):
        key = (model, target, pipeline, repr(sorted(kwargs.items())))
        if key not in self.cache:
            name = "_".join(filter(None, (model, target, pipeline.strip("-"), str(len(self.cache)))))
            safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
            self.cache[key] = onnxforge.compile(onnxforge.load(getattr(models, model)()), target=target, pipeline=pipeline,
                                                output=self.folder / f"{safe}.ofpkg", **kwargs)
        return self.cache[key]


@pytest.fixture(scope="session")
def packages(tmp_path_factory):
    return Packages(tmp_path_factory.mktemp("packages"))


@pytest.fixture
def package_copy(tmp_path):
    """A writable copy of a package, for tampering."""
    def copy(pkg):
        dest = tmp_path / pkg.path.name
        shutil.copyfile(pkg.path, dest)
        return dest

    return copy
