"""python -m onnxforge.codegen.device build [--arch aarch64] [-o DIR]
python -m onnxforge.codegen.device run PACKAGE [ofrun options: -i NAME=FILE.npy, -o OUT.npz, --repeat N, ...]

`build` writes ofrun with the TVM runtime libraries it needs into DIR (copy that
folder to the device); `run` runs a package with ofrun here, under qemu-user when
it was built for another architecture."""
from __future__ import annotations

import argparse
import subprocess
import sys

from ...ir.errors import OnnxforgeError
from .. import host
from .loader import build_loader, command_for, native_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onnxforge.codegen.device", description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build ofrun and gather its libraries into a folder")
    build.add_argument("--arch", default=host.host_arch(), choices=["aarch64", "x86_64"],
                       help="machine it runs on (default: this one)")
    build.add_argument("-o", "--output", help="folder to write (default: print the cached build's folder)")
    run = sub.add_parser("run", help="run a package with ofrun (under qemu-user for another architecture)")
    run.add_argument("package")
    run.add_argument("ofrun_args", nargs=argparse.REMAINDER, help="passed to ofrun")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            folder = build_loader(args.arch, args.output)
            files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
            print(f"{folder}/: {files} ({args.arch}) and src/ to rebuild ofrun; "
                  "copy the folder to the device and run: ./ofrun model.ofpkg -i NAME=FILE.npy -o out.npz")
            return 0
        cmd = command_for(args.package, args.ofrun_args)
        return subprocess.run(cmd, env=native_env(cmd)).returncode
    except OnnxforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
