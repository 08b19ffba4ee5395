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
_PT_LOAD, _SHT_NOBITS = 1, 8


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
        p_type, _, p_offset, _, _, p_filesz, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == _PT_LOAD and (p_offset + p_filesz > size or p_filesz > p_memsz):
            return f"segment {i} lies outside the file (truncated?)"
    if e_shnum:
        if e_shentsize < 64 or e_shoff + e_shnum * e_shentsize > size:
            return "section headers outside the file (truncated?)"
        for i in range(e_shnum):
            _, sh_type, _, _, sh_offset, sh_size = struct.unpack_from("<IIQQQQ", data, e_shoff + i * e_shentsize)
            if sh_type != _SHT_NOBITS and sh_offset + sh_size > size:
                return f"section {i} lies outside the file (truncated?)"
    return None
