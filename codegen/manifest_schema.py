"""The manifest's schema, checked before any field of a package is used: a
package is data from anywhere (its checksums can be recomputed by anyone), so a
string where a dict belongs, a missing `inputs`, a dtype naming a Python attribute
or a library name with a path in it must end in one clear PackageError, not in an
AttributeError deep in the loader or in ctypes opening a file outside the package.

Standard library only (the runtime loader uses it on devices). A schema is a type
(or tuple of types), a dict of field -> schema (fields named with a trailing "?"
are optional; other fields are allowed and not read), a one-element list (every
item), or a function that returns an error text or None."""
from __future__ import annotations

import re
from typing import Any

# numpy dtype names the packages use, and the ml_dtypes ones stored as raw bytes
DTYPES = frozenset({
    "bool", "int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn",
})
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")  # a file or package name, no path


def _dtype(value: Any) -> str | None:
    return None if value in DTYPES else f"a dtype name ({', '.join(sorted(DTYPES))})"


def _plain_name(value: Any) -> str | None:
    if isinstance(value, str) and _PLAIN_NAME.match(value) and value not in (".", ".."):
        return None
    return "a plain file or package name (letters, digits, '._+-'; no path)"


def _dim(value: Any) -> str | None:
    ok = value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    return None if ok else "a dim (an integer, a name or null)"


def _size(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62
    return None if ok else "a size (an integer >= 0)"


def _optional_dtype(value: Any) -> str | None:
    return None if value is None else _dtype(value)


def _optional_shape(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return "a list of dims or null"
    return next((f"item {i}: {e}" for i, d in enumerate(value) if (e := _dim(d))), None)


def _files(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "an object of file name -> {sha256, bytes}"
    for name, entry in value.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or _size(entry.get("bytes")) is not None):
            return f"an object of file name -> {{sha256, bytes}} ({name!r} is not)"
    return None


_TENSOR = {"name": str, "dtype?": _optional_dtype, "shape?": _optional_shape}
_PARAM = {"name": str, "key": str, "dtype": _dtype, "shape": [_size], "raw?": bool}
_TARGET = {"name": str, "arch?": str, "device?": str, "cpu_features?": [str], "tvm?": dict}
_LIBRARY = {"soname": _plain_name, "python_package": _plain_name}

MANIFEST_SCHEMA = {
    "format": str,
    "format_version": int,
    "inputs": [_TENSOR],
    "outputs": [_TENSOR],
    "target": _TARGET,
    "files": _files,
    "params?": [_PARAM],
    "native_libraries?": [_LIBRARY],
    "dequantize?": str,
    "transform_params?": bool,
    "pipeline?": str,
    "passes?": str,
}

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "a list",
               float: "a number", type(None): "null"}


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{_TYPE_NAMES.get(type(value), type(value).__name__)} ({text[:60] + '...' if len(text) > 60 else text})"


def check(value: Any, schema: Any, where: str) -> str | None:
    """The first place where `value` does not fit `schema`, as 'where: expected X,
    got Y', or None."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where}: expected an object, got {_describe(value)}"
        for key, sub in schema.items():
            name = key.rstrip("?")
            if name not in value:
                if key.endswith("?"):
                    continue
                return f"{where}: the field {name!r} is missing"
            if (error := check(value[name], sub, f"{where}.{name}")) is not None:
                return error
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where}: expected a list, got {_describe(value)}"
        return next((e for i, item in enumerate(value) if (e := check(item, schema[0], f"{where}[{i}]"))), None)
    if isinstance(schema, type):
        bad = not isinstance(value, schema) or (schema is int and isinstance(value, bool))
        return f"{where}: expected {_TYPE_NAMES.get(schema, schema.__name__)}, got {_describe(value)}" if bad else None
    problem = schema(value)  # a check function
    return None if problem is None else f"{where}: expected {problem}, got {_describe(value)}"


def check_manifest(manifest: Any) -> str | None:
    """Why the manifest does not fit the schema (one line), or None."""
    return check(manifest, MANIFEST_SCHEMA, "manifest")

