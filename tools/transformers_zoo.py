"""Transformers exported two ways: small ones for the fusion tests
(tests/passes/test_fusion_exports.py), full-size ones for tools/zoo_check.py.

    python tools/transformers_zoo.py ARCH EXPORTER OUT.onnx [--full]
    python tools/transformers_zoo.py --all DIR [--full]   # every ARCH-EXPORTER.onnx into DIR

ARCH is one of ARCHS, EXPORTER `torchscript` (torch.onnx.export(dynamo=False),
opset 17) or `dynamo` (dynamo=True, opset 18). Weights are random
(`AutoModel.from_config`, seeded): no model hub. The small versions have 2
layers, hidden 64, 4 heads; `--full` keeps the architecture's default config.
transformers' own default attention (SDPA) and mask building are kept, since
that is what users export.

This file runs under the torch export interpreter (tools/fetch_models.py's
export venv); only the standard library is imported at the top so that the
tests can import ARCHS and EXPORTERS without torch.
"""
from __future__ import annotations

import argparse
import sys

ARCHS = ("bert", "distilbert", "roberta", "albert", "vit", "gpt2", "whisper-encoder", "clip-text", "t5-encoder")
EXPORTERS = ("torchscript", "dynamo")
SMALL = dict(hidden=64, layers=2, heads=4, ffn=128, vocab=128, positions=64)


def _config(arch: str, full: bool):
    import transformers as tf

    s = SMALL
    if arch == "bert":
        c = tf.BertConfig() if full else tf.BertConfig(
            hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], vocab_size=s["vocab"], max_position_embeddings=s["positions"])
    elif arch == "distilbert":
        c = tf.DistilBertConfig() if full else tf.DistilBertConfig(
            dim=s["hidden"], n_layers=s["layers"], n_heads=s["heads"], hidden_dim=s["ffn"], vocab_size=s["vocab"],
            max_position_embeddings=s["positions"])
    elif arch == "roberta":
        c = tf.RobertaConfig() if full else tf.RobertaConfig(
            hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], vocab_size=s["vocab"], max_position_embeddings=s["positions"] + 2)
    elif arch == "albert":
        c = tf.AlbertConfig() if full else tf.AlbertConfig(
            hidden_size=s["hidden"], embedding_size=32, num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], vocab_size=s["vocab"], max_position_embeddings=s["positions"])
    elif arch == "vit":
        c = tf.ViTConfig() if full else tf.ViTConfig(
            hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], image_size=32, patch_size=8)
    elif arch == "gpt2":
        c = tf.GPT2Config() if full else tf.GPT2Config(
            n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"], vocab_size=s["vocab"], n_positions=s["positions"])
    elif arch == "whisper-encoder":
        c = tf.WhisperConfig() if full else tf.WhisperConfig(
            d_model=s["hidden"], encoder_layers=s["layers"], encoder_attention_heads=s["heads"],
            encoder_ffn_dim=s["ffn"], decoder_layers=1, decoder_attention_heads=s["heads"], decoder_ffn_dim=s["ffn"],
            num_mel_bins=16, max_source_positions=32, vocab_size=s["vocab"], pad_token_id=1, bos_token_id=2,
            eos_token_id=2, decoder_start_token_id=2)
    elif arch == "clip-text":
        c = tf.CLIPTextConfig() if full else tf.CLIPTextConfig(
            hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], vocab_size=s["vocab"], max_position_embeddings=s["positions"])
    elif arch == "t5-encoder":
        c = tf.T5Config() if full else tf.T5Config(
            d_model=s["hidden"], d_kv=s["hidden"] // s["heads"], num_heads=s["heads"], d_ff=s["ffn"],
            num_layers=s["layers"], vocab_size=s["vocab"])
    else:
        raise SystemExit(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return c


def _model(arch: str, full: bool):
    """(module, example inputs as a dict, dynamic axes per input)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = _config(arch, full)
    if arch == "whisper-encoder":
        model = tf.WhisperModel(config).get_encoder()
    elif arch == "t5-encoder":
        model = tf.T5EncoderModel(config)
    elif arch == "clip-text":
        model = tf.CLIPTextModel(config)
    else:
        model = tf.AutoModel.from_config(config)
    with torch.no_grad():  # from_config gives zero biases and unit norms: not what trained models hold
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    if arch == "whisper-encoder":
        frames = 2 * config.max_source_positions
        feeds = {"input_features": torch.randn(2, config.num_mel_bins, frames)}
        return model, feeds, {"input_features": {0: "batch"}}
    if arch == "vit":
        feeds = {"pixel_values": torch.randn(2, 3, config.image_size, config.image_size)}
        return model, feeds, {"pixel_values": {0: "batch"}}
    seq = 16
    ids = torch.randint(3, config.vocab_size, (2, seq))
    mask = torch.ones(2, seq, dtype=torch.int64)
    mask[1, seq - 5:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if arch in ("bert", "albert"):
        feeds["token_type_ids"] = torch.zeros(2, seq, dtype=torch.int64)
    return model, feeds, {name: {0: "batch", 1: "sequence"} for name in feeds}


class _FirstOutput:
    """Wraps a transformers model so that it returns last_hidden_state alone."""

    def __new__(cls, model, names):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                return self.model(**dict(zip(names, args))).last_hidden_state

        return Wrapper().eval()


def export(arch: str, exporter: str, out: str, full: bool = False) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    model, feeds, axes = _model(arch, full)
    model.eval()
    names = list(feeds)
    wrapped = _FirstOutput(model, names)
    args = tuple(feeds[n] for n in names)
    with torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(wrapped, args, out, dynamo=False, opset_version=17, input_names=names,
                              output_names=["last_hidden_state"],
                              dynamic_axes={**axes, "last_hidden_state": {0: "batch"}})
        elif exporter == "dynamo":
            dims = {}
            shapes = {n: {a: dims.setdefault(d, torch.export.Dim(d, min=1 if d == "batch" else 2))
                          for a, d in axes[n].items()} for n in names}
            prog = torch.onnx.export(wrapped, args, dynamo=True, opset_version=18, input_names=names,
                                     output_names=["last_hidden_state"],
                                     dynamic_shapes=(tuple(shapes[n] for n in names),), external_data=False)
            prog.save(out)
        else:
            raise SystemExit(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
        ref = wrapped(*args).numpy()
    onnx.checker.check_model(out)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: feeds[n].numpy() for n in names})[0]
    if (d := float(np.abs(got - ref).max())) > 1e-4:
        raise SystemExit(f"{arch} {exporter}: onnxruntime deviates from torch by {d}")


def main(argv=None) -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", nargs="?", choices=ARCHS)
    ap.add_argument("exporter", nargs="?", choices=EXPORTERS)
    ap.add_argument("out", nargs="?")
    ap.add_argument("--full", action="store_true", help="the architecture's default size, not the small one")
    ap.add_argument("--all", metavar="DIR", help="export every ARCH-EXPORTER.onnx into DIR (existing ones stay)")
    ap.add_argument("--only", action="append", choices=ARCHS, help="with --all: only these architectures")
    a = ap.parse_args(argv)
    if a.all:
        os.makedirs(a.all, exist_ok=True)
        for arch in a.only or ARCHS:
            for exporter in EXPORTERS:
                out = os.path.join(a.all, f"{arch}-{exporter}.onnx")
                if not os.path.exists(out):
                    part = out.removesuffix(".onnx") + ".part.onnx"
                    export(arch, exporter, part, a.full)
                    os.replace(part, out)
        return
    if not (a.arch and a.exporter and a.out):
        ap.error("ARCH EXPORTER OUT, or --all DIR")
    export(a.arch, a.exporter, a.out, a.full)


if __name__ == "__main__":
    sys.exit(main())
