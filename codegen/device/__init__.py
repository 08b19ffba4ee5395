"""ofrun, the native loader: runs a package with TVM's C++ runtime alone, no
Python, on the machine it was compiled for (an aarch64 board for `arm64`), and
here under qemu-user for testing.

    from onnxforge.codegen import device
    folder = device.build_loader("aarch64")             # copy this folder to the device
    run = device.run_native(pkg.path, {"x": x})         # under qemu when pkg is aarch64

Command line: `python -m onnxforge.codegen.device build --arch aarch64 -o DIR`, and
`python -m onnxforge.codegen.device run PACKAGE -i x=x.npy` (ofrun's own options).
The C++ sources (ofrun.cc, npy.h, package.h) sit next to this file.
"""
from __future__ import annotations

from .libs import Runtime, runtime_for
from .loader import DeviceError, NativeRun, build_loader, command_for, compiler_for, emulator_for, run_native

__all__ = ["build_loader", "run_native", "command_for", "compiler_for", "emulator_for", "runtime_for", "Runtime",
           "NativeRun", "DeviceError"]
