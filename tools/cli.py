"""The `onnxforge` command line.

Exit codes: 0 success; 1 unexpected error; 2 bad usage, pipeline, option or input
data; 3 the model (or package) cannot be loaded; 4 a pass or the verifier failed;
5 outputs differ beyond tolerance (--verify, compare); 6 lowering or building
failed (compile, tune: LoweringError, BuildError); 130 interrupted.

Every error is one line on stderr ("error: ..."), or with --json a JSON object
{"error", "type", "exit_code"} (one line, on stderr too); --debug shows the traceback of an
unexpected error (exit code 1) instead."""
from __future__ import annotations

import dataclasses
import json
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..ir import Model, NumericMismatchError, OnnxforgeError, load, save
from ..passes import PRESETS, NumericCheck, PrintAfterChange, Reproducer, optimize, registered_passes
from ..passes.check import compare_outputs, load_inputs, run_ort
from ..passes.invent import invent_inputs
from ..passes.registry import option_text
from .bench.command import bench_cmd
from .codegen_cmds import (_calibration, _pipeline_spec, check_writable, compare_cmd, compile_cmd, keygen_cmd, run_cmd,
                           sign_cmd, targets_cmd)
from .profile_cmd import profile_cmd
from .tune_cmd import tune_cmd
from .summary import human_bytes, human_count, summarize

app = typer.Typer(add_completion=False, no_args_is_help=True, help="onnxforge: optimize, inspect and compile ONNX models.")
console = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width


def _load(path: str) -> Model:
    if path == "example":
        from .example import build_example

        return load(build_example())
    return load(path)


@app.command("optimize")
def optimize_cmd(
    model_path: str = typer.Argument(..., metavar="MODEL", help="ONNX file, or 'example' for the built-in example model"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="where to write the optimized ONNX model"),
    pipeline: Optional[str] = typer.Option(None, "-p", "--pipeline", help="pipeline text, preset (-O1) or .json/.toml/.yaml file"),
    level: Optional[int] = typer.Option(None, "-O", help="preset: -O0, -O1, -O2"),
    verify: bool = typer.Option(False, "--verify", help="run original and result in onnxruntime and compare"),
    inputs: Optional[str] = typer.Option(None, "--inputs", help=".npz file with inputs for --verify/--check-each (default: random)"),
    check_each: bool = typer.Option(False, "--check-each", help="numeric check against onnxruntime after every pass"),
    atol: float = typer.Option(1e-4, help="absolute tolerance for --verify"),
    rtol: float = typer.Option(1e-3, help="relative tolerance for --verify"),
    print_after_change: bool = typer.Option(False, "--print-after-change", help="print the IR after each pass that changed it"),
    reproducer: Optional[str] = typer.Option(None, "--reproducer", help="on failure, write the failing pass's input model and pipeline here"),
    external_data: Optional[bool] = typer.Option(
        None, "--external-data/--no-external-data", help="store weights in a .data file next to the model (default: only over 2 GiB)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    calib: Optional[str] = typer.Option(
        None, "--calib", help="folder of calibration samples (.npz per sample, or .npy) for passes that need data"),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="use the first N calibration samples"),
):
    """Run a pass pipeline: ONNX in, ONNX out, with a before/after table."""
    spec = _pipeline_spec(pipeline, level)
    if output:
        check_writable(output, "--output")
    model = _load(model_path)
    feeds = load_inputs(inputs) if inputs else None
    invented = None
    if feeds is None and (verify or check_each):  # sizes the model runs at, said so below
        invented = invent_inputs(model)
        feeds = invented.feeds
        invented.reference()  # onnxruntime cannot run them: say so now, not after the pipeline
        if not as_json:
            err.print(escape(invented.note()), highlight=False)
    instruments = []
    if check_each:
        instruments.append(NumericCheck(feeds))
    if print_after_change:
        instruments.append(PrintAfterChange())
    if reproducer:
        instruments.append(Reproducer(reproducer))
    calibration = _calibration(calib, calib_samples, model)
    result = optimize(model, spec, instruments=instruments, calibration=calibration)
    before, after = summarize(model), summarize(result.model)
    report = {
        "pipeline": str(result.pipeline), "seconds": result.seconds,
        "passes": [{"pass": r.spec, "changed": r.changed, "ms": r.seconds * 1e3, "stats": r.stats,
                    **({"max_abs_diff": r.diff.max_abs} if r.diff else {})} for r in result.records],
        "before": before.as_dict(), "after": after.as_dict(), "warnings": result.warnings,
    }
    if invented is not None:
        report["invented_inputs"] = {"shapes": {k: list(v) for k, v in invented.shapes.items()}, "dims": invented.dims}
    if verify:
        reference = invented.reference() if invented is not None else run_ort(model, feeds)
        diff = compare_outputs(reference, run_ort(result.model, feeds), atol, rtol)
        report["verify"] = {"max_abs": diff.max_abs, "max_rel": diff.max_rel, "ok": diff.ok, "atol": atol, "rtol": rtol}
    if output:
        save(result.model, output, external_data=external_data)
        report["output"] = output
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_optimize(report)
    if verify and not report["verify"]["ok"]:
        raise NumericMismatchError(f"outputs differ beyond atol={atol} rtol={rtol}: max abs {diff.max_abs:.3g}")


def _print_optimize(report: dict) -> None:
    before, after = report["before"], report["after"]
    table = Table(title="before / after")
    table.add_column("op type")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    for op in sorted(set(before["ops"]) | set(after["ops"]), key=lambda o: -before["ops"].get(o, 0)):
        b, a = before["ops"].get(op, 0), after["ops"].get(op, 0)
        table.add_row(escape(op), str(b), str(a), f"{a - b:+d}" if a != b else "")
    table.add_section()
    table.add_row("[b]nodes", str(before["nodes"]), str(after["nodes"]), f"{after['nodes'] - before['nodes']:+d}")
    table.add_row("[b]weight bytes", human_bytes(before["param_bytes"]), human_bytes(after["param_bytes"]),
                  f"{after['param_bytes'] - before['param_bytes']:+,d} B")
    console.print(table)
    passes = Table(title=f"passes ({report['seconds'] * 1e3:.1f} ms total)")
    for col in ("pass", "changed", "ms", "statistics"):
        passes.add_column(col, justify="right" if col == "ms" else "left")
    for r in report["passes"]:
        passes.add_row(escape(r["pass"]), "yes" if r["changed"] else "no", f"{r['ms']:.1f}",
                       escape(", ".join(f"{k}={v}" for k, v in r["stats"].items())))
    console.print(passes)
    for warning in report["warnings"]:
        err.print(f"warning: {escape(warning)}", highlight=False)
    if "verify" in report:
        v = report["verify"]
        status = "[green]OK" if v["ok"] else "[red]MISMATCH"
        console.print(f"verify (onnxruntime): max abs diff {v['max_abs']:.3g}, max rel diff {v['max_rel']:.3g} "
                      f"(atol {v['atol']}, rtol {v['rtol']}): {status}")
    if "output" in report:
        console.print(f"wrote {escape(report['output'])}")


@app.command("inspect")
def inspect_cmd(
    model_path: str = typer.Argument(..., metavar="MODEL", help="ONNX file, or 'example'"),
    as_json: bool = typer.Option(False, "--json", help="print as JSON"),
    groups: bool = typer.Option(False, "--groups", help="channel dependency groups (what prune-channels removes together)"),
):
    """Inputs/outputs, op histogram, parameter count and bytes, FLOPs estimate."""
    model = _load(model_path)
    if groups:
        _inspect_groups(model, model_path, as_json)
        return
    summary = summarize(model, flops=True)
    io = {
        "inputs": [{"name": v.name, "type": v.type_str()} for v in model.graph.inputs if not v.is_initializer],
        "outputs": [{"name": v.name, "type": v.type_str()} for v in model.graph.outputs],
    }
    opsets = {d or "ai.onnx": v for d, v in model.opset_imports.items()}
    if as_json:
        print(json.dumps({**io, "opsets": opsets, **summary.as_dict()}, indent=2))
        return
    table = Table(title=escape(f"{model_path}  (opsets {', '.join(f'{d} {v}' for d, v in opsets.items())})"))
    table.add_column("")
    table.add_column("name")
    table.add_column("type")
    for kind in ("inputs", "outputs"):
        for v in io[kind]:
            table.add_row(kind[:-1], escape(v["name"]), escape(v["type"]))  # [batch,3,...] is not markup
    console.print(table)
    ops = Table(title="operators")
    ops.add_column("op type")
    ops.add_column("count", justify="right")
    for op, n in sorted(summary.ops.items(), key=lambda kv: -kv[1]):
        ops.add_row(escape(op), str(n))
    console.print(ops)
    flops = "unknown" if summary.flops is None else human_count(summary.flops)
    note = f" ({summary.flops_unknown_nodes} nodes with unknown shapes not counted)" if summary.flops_unknown_nodes else ""
    console.print(f"nodes {summary.nodes}, parameters {human_count(summary.params)} ({human_bytes(summary.param_bytes)}), "
                  f"FLOPs {flops}{note}")


def _inspect_groups(model: Model, model_path: str, as_json: bool) -> None:
    from ..passes.analysis import get_analysis

    result = get_analysis(model.clone(), "groups")
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return

    def names(items: list) -> str:
        return ", ".join(items[:4]) + (f" (+{len(items) - 4})" if len(items) > 4 else "")

    table = Table(title=escape(model_path) + f": channel dependency groups ({len(result.prunable)} of {len(result.groups)} prunable)")
    for col in ("group", "size", "prunable", "produced by", "read by", "also", "why not"):
        table.add_column(col)
    for g in result.groups:
        size = f"{g.size} heads x {g.head_size}" if g.kind == "heads" else str(g.size)
        table.add_row(str(g.id), size, "yes" if g.prunable else "[red]no", escape(names(g.sources)), escape(names(g.sinks)),
                      escape(names(g.params)), escape("; ".join(g.reasons)))
    console.print(table)


@app.command("passes")
def passes_cmd(as_json: bool = typer.Option(False, "--json", help="print as JSON")):
    """List registered passes with their options and defaults."""
    rows = []
    for name, cls in registered_passes().items():
        options = [
            {"name": f.name, "type": getattr(f.type, "__name__", str(f.type)),
             "default": option_text(f.default if f.default is not dataclasses.MISSING else f.default_factory())}
            for f in dataclasses.fields(cls.Options)
        ]
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        rows.append({"name": name, "effect": cls.effect.value, "options": options, "doc": " ".join(doc.split())})
    if as_json:
        print(json.dumps({"passes": rows, "presets": PRESETS}, indent=2))
        return
    table = Table(title="passes")
    for col in ("pass", "effect", "options (defaults)", "what it does"):
        table.add_column(col)
    for r in rows:
        table.add_row(escape(r["name"]), r["effect"], escape(" ".join(f"{o['name']}={o['default']}" for o in r["options"])),
                      escape(r["doc"]))
    console.print(table)
    for name, text in PRESETS.items():
        console.print(escape(f"preset {name}: {text or '(nothing)'}"))


app.command("bench")(bench_cmd)
app.command("compile")(compile_cmd)
app.command("run")(run_cmd)
app.command("keygen")(keygen_cmd)
app.command("sign")(sign_cmd)
app.command("targets")(targets_cmd)
app.command("compare")(compare_cmd)
app.command("tune")(tune_cmd)
app.command("profile")(profile_cmd)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; every failure ends in one unwrapped line on stderr (a JSON object
    with --json) and a documented exit code. --debug (anywhere in the command
    line) shows the traceback of an unexpected error instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    as_json = "--json" in args
    try:
        app(args=args, standalone_mode=False)
    except OnnxforgeError as exc:
        return _fail(exc.one_line(), exc.exit_code, type(exc).__name__, as_json)
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return _fail("aborted", 130, "Aborted", as_json)
    except typer.TyperException as exc:  # usage errors (typer's own copy of click's)
        if as_json:
            return _fail(exc.format_message() if hasattr(exc, "format_message") else str(exc), 2, "UsageError", True)
        if hasattr(exc, "show"):
            exc.show()
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, the traceback only with --debug
        if debug:
            raise
        if isinstance(exc, RecursionError):
            return _fail("the input is nested too deeply to process (pipeline or model structure)", 2,
                         "RecursionError", as_json)
        if isinstance(exc, MemoryError):
            return _fail("out of memory", 1, "MemoryError", as_json)
        return _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback, and "
                     "please report it)", 1, type(exc).__name__, as_json)
    return 0


def _fail(message: str, code: int, kind: str, as_json: bool) -> int:
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())  # one line, whatever the source
    if as_json:
        print(json.dumps({"error": line, "type": kind, "exit_code": code}), file=sys.stderr)
    else:
        err.print(f"[red]error:[/red] {escape(line)}", highlight=False, markup=True)  # shapes like [1,3] are not markup
    return code


if __name__ == "__main__":
    sys.exit(main())
