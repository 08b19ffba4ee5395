"""A package's compiled library is checked before dlopen: dlopen maps the file's
segments as the ELF headers describe them and touches them, so a library cut short
(a truncated download, a tampered package with recomputed checksums) kills the
process with SIGBUS instead of raising. This reads the ELF header, the program
headers and the section headers and refuses the file unless every one of them and
every segment and section they point to lie inside it, for the machine this
process runs on. (It catches damage, not malice: a well-formed hostile library
passes; only signatures say who built a package.)

Standard library only (the runtime loader uses it on devices)."""
from __future__ import annotations

import struct

# e_machine values (ELF spec) of the architectures packages are built for
MACHINES = {"x86_64": 62, "aarch64": 183}
_PT_LOAD, _PT_TLS, _SHT_NOBITS = 1, 7, 8
_MAX_ALIGN = 1 << 21  # huge pages; page sizes are 4-64 KiB
_MAX_TLS = 16 << 20  # the kernels keep a few pointers per thread


def check_elf(data: bytes, arch: str) -> str | None:
    """Why `data` is not a complete 64-bit little-endian shared library for `arch`
    (one line), or None."""
    size = len(data)
    if size < 64 or data[:4] != b"\x7fELF":
        return "not an ELF file"
    if data[4] != 2 or data[5] != 1:
        return "not a 64-bit little-endian ELF file"
    (e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize,
     e_shnum, _) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    if e_type != 3:  # ET_DYN
        return f"not a shared library (ELF type {e_type})"
    want = MACHINES.get(arch)
    if want is not None and e_machine != want:
        return f"built for ELF machine {e_machine}, this machine ({arch}) is {want}"
    if e_phnum == 0 or e_phentsize < 56 or e_phoff + e_phnum * e_phentsize > size:
        return "program headers missing or outside the file (truncated?)"
    for i in range(e_phnum):
        p_type, _, p_offset, _, _, p_filesz, p_memsz, p_align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type in (_PT_LOAD, _PT_TLS) and (p_offset + p_filesz > size or p_filesz > p_memsz):
            return f"segment {i} lies outside the file (truncated?)"
        if p_align & (p_align - 1) or p_align > _MAX_ALIGN:
            return f"segment {i} has an impossible alignment {p_align}"
        if p_type == _PT_TLS and p_memsz > _MAX_TLS:  # ld.so aborts the process when a thread starts
            return f"its thread-local data claims {p_memsz} bytes"
    if e_shnum:
        if e_shentsize < 64 or e_shoff + e_shnum * e_shentsize > size:
            return "section headers outside the file (truncated?)"
        for i in range(e_shnum):
            _, sh_type, _, _, sh_offset, sh_size = struct.unpack_from("<IIQQQQ", data, e_shoff + i * e_shentsize)
            if sh_type != _SHT_NOBITS and sh_offset + sh_size > size:
                return f"section {i} lies outside the file (truncated?)"
    return None


def probe_dlopen(lib_path: str, timeout: float = 5.0, load=None) -> str | None:
    """dlopen the library in a forked child first, binding every symbol at once
    (RTLD_NOW). Damage the header check cannot see (a garbled symbol table or
    relocation, with the package's checksums recomputed) crashes the dynamic loader
    itself, stops it on a failed assertion (exit 127), or leaves a symbol that only
    fails when called (exit 127 again); in the child that costs only the child. Returns why the library
    cannot be loaded, or None. A child that does not finish in time leaves the verdict
    to the real load (forking a threaded process can, rarely, leave the child waiting
    on a lock). Call it with the libraries the module links already loaded. `load`,
    if given, is the caller's own load, run in the child after the dlopen (TVM looks
    up symbols whose garbled names crash dlsym)."""
    import ctypes
    import os
    import signal
    import time

    if not hasattr(os, "fork"):
        return None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: load, report, leave without running the parent's exit handlers
        code = 0
        try:
            os.close(read_end)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # a crash handler's report is not the user's business
            ctypes.CDLL(lib_path, mode=getattr(os, "RTLD_NOW", 2) | getattr(os, "RTLD_LOCAL", 0))
            if load is not None:
                load(lib_path)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_end, str(exc).encode(errors="replace")[:500])
            code = 3
        os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            time.sleep(0.002)
        message = os.read(read_end, 1000).decode(errors="replace").strip()
    finally:
        os.close(read_end)
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = str(os.WTERMSIG(status))
        return f"loading it crashed the dynamic loader ({name})"
    code = os.WEXITSTATUS(status)
    if code == 3:
        return f"the dynamic loader refuses it: {message.rsplit(': ', 1)[-1] or 'unknown error'}"
    if code != 0:  # ld.so's fatal errors (an assertion on a garbled relocation) exit with 127
        return f"the dynamic loader stopped on it (exit {code})"
    return None
