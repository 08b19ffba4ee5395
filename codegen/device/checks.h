// What ofrun checks in a package before it reads a field or loads code, as the
// Python loader does: the manifest against the schema of codegen/manifest_schema.py
// (the fields ofrun reads), and the compiled library against its own file
// (codegen/elf_check.py: dlopen of a library cut short dies of SIGBUS), then a dlopen
// in a forked child. Damage and careless tampering end in one line naming the field;
// only a signature says who built a package.
#pragma once

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/string.h>

#include "npy.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace checks {

using Any = tvm::ffi::Any;
using Json = tvm::ffi::Map<Any, Any>;

inline bool IsStr(const Any& v) { return v.type_index() == kTVMFFISmallStr || v.type_index() == kTVMFFIStr; }
inline bool IsInt(const Any& v) { return v.type_index() == kTVMFFIInt; }
inline bool IsBool(const Any& v) { return v.type_index() == kTVMFFIBool; }
inline bool IsNull(const Any& v) { return v.type_index() == kTVMFFINone; }
inline bool IsList(const Any& v) { return v.type_index() == kTVMFFIArray; }
inline bool IsObject(const Any& v) { return v.type_index() == kTVMFFIMap; }
inline std::string Text(const Any& v) { return std::string(v.cast<tvm::ffi::String>()); }

// A check returns what the value should be ("" when it is).
using Check = std::function<std::string(const Any&)>;
struct Field {
  const char* name;
  bool optional;
  Check check;
};

inline std::string Object(const Any& v, const std::vector<Field>& fields, const std::string& what = "an object") {
  if (!IsObject(v)) return what;
  Json object = v.cast<Json>();
  for (const Field& f : fields) {
    auto value = object.Get(tvm::ffi::String(f.name));
    if (!value) {
      if (!f.optional) return std::string("'") + f.name + "': missing";
      continue;
    }
    std::string problem = f.check(*value);
    if (!problem.empty()) return std::string("'") + f.name + "'" + (problem[0] == '\'' || problem[0] == '[' ? "" : ": ") + problem;
  }
  return "";
}

inline Check ListOf(Check item, const std::string& what) {
  return [item, what](const Any& v) -> std::string {
    if (!IsList(v)) return "a list of " + what;
    int64_t i = 0;
    for (const Any& e : v.cast<tvm::ffi::Array<Any>>()) {
      std::string problem = item(e);
      if (!problem.empty()) return "[" + std::to_string(i) + "]" + (problem[0] == '\'' || problem[0] == '[' ? "" : ": ") + problem;
      ++i;
    }
    return "";
  };
}

inline std::string Str(const Any& v) { return IsStr(v) ? "" : "a string"; }
inline std::string Bool(const Any& v) { return IsBool(v) ? "" : "true or false"; }
inline std::string Size(const Any& v) {
  return IsInt(v) && v.cast<int64_t>() >= 0 && v.cast<int64_t>() < (int64_t(1) << 62) ? "" : "a size (an integer >= 0)";
}
inline std::string Dim(const Any& v) { return IsInt(v) || IsStr(v) || IsNull(v) ? "" : "a dim (an integer, a name or null)"; }

inline std::string Dtype(const Any& v) {
  static const char* names[] = {"bool", "int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                                "uint64", "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
                                "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn"};
  if (IsStr(v))
    for (const char* n : names)
      if (Text(v) == n) return "";
  return "a dtype name (float32, int64, ...)";
}

// A file or package name: letters, digits, '._+-', no path (as manifest_schema._PLAIN_NAME).
inline std::string PlainName(const Any& v) {
  const char* what = "a plain file name (letters, digits, '._+-'; no path)";
  if (!IsStr(v)) return what;
  std::string s = Text(v);
  if (s.empty() || s.size() > 128 || !isalnum(static_cast<unsigned char>(s[0]))) return what;
  for (char c : s)
    if (!isalnum(static_cast<unsigned char>(c)) && !strchr("._+-", c)) return what;
  return "";
}

// Why the manifest is not one ofrun can read (one line), or "".
inline std::string CheckManifest(const Any& manifest) {
  Check optional_shape = [](const Any& v) { return IsNull(v) ? std::string() : ListOf(Dim, "dims")(v); };
  Check optional_dtype = [](const Any& v) { return IsNull(v) ? std::string() : Dtype(v); };
  Check tensor = [=](const Any& v) {
    return Object(v, {{"name", false, Str}, {"dtype", true, optional_dtype}, {"shape", true, optional_shape}});
  };
  Check param = [](const Any& v) {
    return Object(v, {{"name", false, Str}, {"key", false, Str}, {"dtype", false, Dtype},
                      {"shape", false, ListOf(Size, "sizes")}, {"raw", true, Bool}});
  };
  Check target = [](const Any& v) {
    return Object(v, {{"name", false, Str}, {"arch", true, Str}, {"device", true, Str},
                      {"cpu_features", true, ListOf(Str, "strings")}});
  };
  Check files = [](const Any& v) -> std::string {
    const char* what = "an object of file name -> {sha256, bytes}";
    if (!IsObject(v)) return what;
    for (const auto& [name, entry] : v.cast<Json>())
      if (!IsStr(name) || !Object(entry, {{"sha256", false, Str}, {"bytes", false, Size}}).empty()) return what;
    return "";
  };
  Check library = [](const Any& v) { return Object(v, {{"soname", false, PlainName}}); };
  return Object(manifest, {{"format", false, Str},
                           {"format_version", false, [](const Any& v) { return IsInt(v) ? "" : "an integer"; }},
                           {"inputs", false, ListOf(tensor, "tensor specs")},
                           {"outputs", false, ListOf(tensor, "tensor specs")},
                           {"target", false, target},
                           {"files", false, files},
                           {"params", true, ListOf(param, "weight specs")},
                           {"native_libraries", true, ListOf(library, "libraries")},
                           {"dequantize", true, Str},
                           {"transform_params", true, Bool}},
                "a JSON object");
}

// ---- ELF: a complete 64-bit little-endian shared library for this machine ----

using npy::Le;  // little-endian fields; every offset below is checked against the size first

// Why `data` is not a shared library whose headers, segments and sections lie inside
// it, for ELF machine `machine` (62 x86-64, 183 aarch64; 0: any), or "".
inline std::string CheckElf(const std::string& data, int machine) {
  const uint64_t size = data.size();
  if (size < 64 || data.compare(0, 4, "\x7f" "ELF") != 0) return "not an ELF file";
  if (data[4] != 2 || data[5] != 1) return "not a 64-bit little-endian ELF file";
  uint64_t type = Le(data, 16, 2), mach = Le(data, 18, 2), phoff = Le(data, 32, 8), shoff = Le(data, 40, 8);
  uint64_t phentsize = Le(data, 54, 2), phnum = Le(data, 56, 2), shentsize = Le(data, 58, 2), shnum = Le(data, 60, 2);
  if (type != 3) return "not a shared library (ELF type " + std::to_string(type) + ")";
  if (machine && mach != uint64_t(machine))
    return "built for ELF machine " + std::to_string(mach) + ", this machine is " + std::to_string(machine);
  // each product is below 2^32 and each offset is compared before it is added: no wrap
  if (phnum == 0 || phentsize < 56 || phoff > size || phnum * phentsize > size - phoff)
    return "program headers missing or outside the file (truncated?)";
  for (uint64_t i = 0; i < phnum; ++i) {
    size_t h = phoff + i * phentsize;
    uint64_t p_type = Le(data, h, 4), offset = Le(data, h + 8, 8), filesz = Le(data, h + 32, 8);
    uint64_t memsz = Le(data, h + 40, 8), align = Le(data, h + 48, 8);
    if ((p_type == 1 || p_type == 7) && (offset > size || filesz > size - offset || filesz > memsz))
      return "segment " + std::to_string(i) + " lies outside the file (truncated?)";
    if ((align & (align - 1)) || align > (uint64_t(1) << 21))
      return "segment " + std::to_string(i) + " has an impossible alignment " + std::to_string(align);
    if (p_type == 7 && memsz > (uint64_t(16) << 20))  // ld.so aborts the process when a thread starts
      return "its thread-local data claims " + std::to_string(memsz) + " bytes";
  }
  if (shnum) {
    if (shentsize < 64 || shoff > size || shnum * shentsize > size - shoff)
      return "section headers outside the file (truncated?)";
    for (uint64_t i = 0; i < shnum; ++i) {
      size_t h = shoff + i * shentsize;
      uint64_t sh_type = Le(data, h + 4, 4), offset = Le(data, h + 24, 8), sz = Le(data, h + 32, 8);
      if (sh_type != 8 && (offset > size || sz > size - offset))  // SHT_NOBITS takes no room in the file
        return "section " + std::to_string(i) + " lies outside the file (truncated?)";
    }
  }
  return "";
}

// dlopen `lib` in a forked child first, binding every symbol (RTLD_NOW): damage the ELF
// check cannot see (a garbled symbol table or relocation) crashes or stops the dynamic
// loader, and there it costs only the child (codegen/elf_check.py's probe_dlopen).
// Why the library cannot be loaded, or "" (also when no child could be made or it hangs:
// the real load decides then).
inline std::string ProbeDlopen(const std::string& lib) {
  fflush(stdout), fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return "";
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 2);
    _exit(dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL) ? 0 : 3);
  }
  int status = 0;
  for (int waited = 0; waitpid(pid, &status, WNOHANG) == 0; ++waited) {
    if (waited > 5000) {  // 5 s
      kill(pid, SIGKILL), waitpid(pid, &status, 0);
      return "";
    }
    usleep(1000);
  }
  if (WIFSIGNALED(status))
    return "loading its model.so crashed the dynamic loader (signal " + std::to_string(WTERMSIG(status)) +
           "); rebuild the package with `onnxforge compile`";
  if (WEXITSTATUS(status) == 3) {
    void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);  // the same refusal here, for its message
    const char* why = h ? nullptr : dlerror();
    if (h) dlclose(h);
    return "the dynamic loader refuses its model.so: " + std::string(why ? why : "unknown error");
  }
  if (WEXITSTATUS(status) != 0)
    return "the dynamic loader stopped on its model.so (exit " + std::to_string(WEXITSTATUS(status)) + ")";
  return "";
}

}  // namespace checks
