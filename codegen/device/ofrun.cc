// ofrun: run an onnxforge package (.ofpkg) with TVM's C++ runtime alone, no Python,
// on the kind of machine it was compiled for (an aarch64 board for `arm64`).
//
//   ofrun model.ofpkg -i x=x.npy [-i NAME=FILE.npy ...] [--inputs in.npz]
//         [-o out.npz] [--repeat N] [--threads N] [--trust KEY.pub ...]
//
// It does what onnxforge.runtime.load(path)(**inputs) does: verifies the manifest
// and every checksum, refuses a package built for another architecture or for a
// GPU, checks input names, dtypes and shapes, loads model.so into the Relax VM on
// the CPU and calls main(inputs..., weights...), the weights coming from
// weights.npz in the manifest's order; with --trust, only a package signed by one of the
// keys (signature.h). Outputs go to an .npz (numpy.load reads it)
// or are summarised on stdout; --repeat N also prints the median latency.
// Exit codes: 0 ok, 1 the model failed to run, 2 bad usage or inputs,
// 3 a corrupt or tampered package, or one built for another machine.
//
// Build: `python -m onnxforge.codegen.device build --arch aarch64 -o DIR` gathers
// ofrun, libtvm_runtime.so and libtvm_ffi.so (from the apache-tvm and
// apache-tvm-ffi wheels for the device) and src/ into DIR; src/build.sh rebuilds
// it on the device. By hand, in DIR, with the tvm_ffi headers in src/include
// (--no-as-needed: nothing calls libtvm_runtime directly, but loading it
// registers the Relax VM):
//   g++ -std=c++17 -O2 -o ofrun src/ofrun.cc -I src/include -L . -Wl,--no-as-needed
//       -ltvm_runtime -ltvm_ffi -Wl,--disable-new-dtags,-rpath,'$ORIGIN'
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dlfcn.h>
#include <sched.h>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <unistd.h>

#include "checks.h"
#include "npy.h"
#include "package.h"
#include "signature.h"

namespace ffi = tvm::ffi;
using Json = ffi::Map<ffi::Any, ffi::Any>;

#if defined(__aarch64__)
static const char* kArch = "aarch64";
#elif defined(__x86_64__)
static const char* kArch = "x86_64";
#else
static const char* kArch = "unknown";
#endif

struct UsageError : std::runtime_error {  // exit code 2: fix the command or the inputs
  using std::runtime_error::runtime_error;
};
struct PackageError : std::runtime_error {  // exit code 3: fix or rebuild the package
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string package, inputs_npz, output;
  std::vector<std::pair<std::string, std::string>> inputs;  // name, .npy path
  std::vector<std::string> trust;                          // public key files (--trust)
  int repeat = 1, threads = 0;
};

/* TVM's CPU thread pool: `threads` (0: TVM_NUM_THREADS if set, else one per core this
 * process may use), every thread free to run on all those cores. Not TVM's defaults: it
 * sizes the pool to half the cores on x86, and config_threadpool's "big cores" mode (1)
 * pins the calling thread to core 0 (codegen/runtime.py's set_threads measures both). */
static void ConfigThreads(int threads) {
  /* pool workers sleep when out of work instead of spinning on sched_yield(), unless
     the user says otherwise (codegen/runtime.py quiet_pool_workers: on a loaded
     machine the spinning made every kernel barrier wait for other processes) */
  setenv("TVM_THREAD_POOL_SPIN_COUNT", "0", /*overwrite=*/0);
  cpu_set_t set;
  std::vector<ffi::String> cores;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cores.push_back(std::to_string(c));
  }
  if (threads == 0) {
    const char* env = getenv("TVM_NUM_THREADS");
    if (env && *env) return;  // TVM reads it itself
    threads = cores.empty() ? 1 : static_cast<int>(cores.size());
  }
  constexpr int kShareAllCores = -3;  // threading::ThreadGroup::kSpecifyThreadShareAllCore
  ffi::Array<ffi::String> list(cores.begin(), cores.end());
  ffi::Function::GetGlobalRequired("runtime.config_threadpool")(kShareAllCores, threads, list);
}

static const char* kUsage =
    "usage: ofrun PACKAGE.ofpkg [-i NAME=FILE.npy ...] [--inputs FILE.npz] [-o OUT.npz] [--repeat N] [--threads N]\n"
    "             [--trust KEY.pub ...]   (refuse packages not signed by one of these keys)\n";

static int PositiveInt(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end || v < 1) throw UsageError(flag + " needs a positive integer, got '" + text + "'");
  return static_cast<int>(v);
}

static Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      fputs(kUsage, stdout);
      exit(0);
    } else if (a == "-i" || a == "--input") {
      std::string item = value();
      size_t eq = item.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("-i takes NAME=FILE.npy, got '" + item + "'");
      o.inputs.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    } else if (a == "--inputs") {
      o.inputs_npz = value();
    } else if (a == "-o" || a == "--output") {
      o.output = value();
    } else if (a == "--repeat") {
      o.repeat = PositiveInt(a, value());
    } else if (a == "--threads") {
      o.threads = PositiveInt(a, value());
    } else if (a == "--trust") {
      o.trust.push_back(value());
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError("unknown option " + a);
    } else if (o.package.empty()) {
      o.package = a;
    } else {
      throw UsageError("unexpected argument '" + a + "' (inputs go as -i NAME=FILE.npy)");
    }
  }
  if (o.package.empty()) throw UsageError("no package given");
  return o;
}

// ---- the package: checksums, manifest, target ----

static std::string Str(const ffi::Any& v) { return v.try_cast<ffi::String>().value_or(ffi::String("")); }

// `text` parsed as JSON; what went wrong in `error` (TVM's parser reports some errors
// there and throws on others).
static ffi::Any ParseJson(const std::string& text, std::string* error) {
  ffi::String reported;
  try {
    ffi::Any parsed = ffi::json::Parse(text, &reported);
    *error = std::string(reported);
    return parsed;
  } catch (const std::exception& e) {
    *error = e.what();
    return ffi::Any();
  }
}

// With trusted keys (raw ed25519 public keys): manifest.sig must be a valid signature of
// the manifest's bytes by one of them (signature.h), checked before any field is read.
static void CheckSignature(const std::string& path, const std::string& manifest,
                           const std::map<std::string, std::string>& members, const std::vector<std::string>& trusted) {
  auto it = members.find("manifest.sig");
  if (it == members.end())
    throw PackageError(path + ": the package is not signed, and trusted keys were given: sign it with "
                       "`onnxforge sign PACKAGE --key KEY` (or compile with --sign KEY)");
  std::string error;
  ffi::Any parsed = ParseJson(it->second, &error);
  std::string key, signature;
  auto entry = parsed.try_cast<Json>();
  bool ok = error.empty() && entry && checks::IsObject(parsed) &&
            checks::Object(parsed, {{"algorithm", false, checks::Str}, {"public_key", false, checks::Str},
                                    {"signature", false, checks::Str}}).empty() &&
            Str(entry->Get("algorithm").value()) == "ed25519" &&
            sig::FromHex(Str(entry->Get("public_key").value()), &key) && key.size() == 32 &&
            sig::FromHex(Str(entry->Get("signature").value()), &signature) && signature.size() == 64;
  if (!ok) throw PackageError(path + ": manifest.sig is malformed: the package was damaged or tampered with");
  if (std::find(trusted.begin(), trusted.end(), key) == trusted.end())
    throw PackageError(path + ": signed by key " + sig::Hex(key).substr(0, 16) + "..., which is not among the trusted keys");
  std::optional<sig::Verifier> verifier;
  try {
    verifier.emplace();
  } catch (const sig::Error& e) {
    throw UsageError(e.what());
  }
  if (!verifier->Check(key, signature, manifest))
    throw PackageError(path + ": the signature does not match the manifest: the package was changed after it was "
                       "signed");
}

// The manifest of the package bytes `data` (read from `path`), every member it lists
// checked against its sha256 and size and kept in `files`; a PackageError for anything
// else, before any field is used (checks.h). With `trusted` keys, the signature first.
static Json ReadManifestBytes(std::string data, const std::string& path, std::map<std::string, std::string>* files,
                              const std::vector<std::string>* trusted = nullptr) {
  std::map<std::string, std::string> members;
  try {
    members = pkg::ReadPackageBytes(std::move(data), path);
  } catch (const std::runtime_error& e) {
    throw PackageError(e.what());
  }
  for (const char* name : {"manifest.json", "manifest.sha256", "model.so", "weights.npz"})
    if (!members.count(name)) throw PackageError(path + ": the package has no " + name);
  std::string text = members["manifest.json"], expected = members["manifest.sha256"].substr(0, 64);
  if (pkg::Sha256Hex(text) != expected)
    throw PackageError(path + ": manifest.json does not match its checksum in manifest.sha256: the package was "
                       "modified or corrupted; rebuild it with `onnxforge compile`");
  if (trusted) CheckSignature(path, text, members, *trusted);
  std::string error;
  ffi::Any parsed = ParseJson(text, &error);
  auto manifest = parsed.try_cast<Json>();
  if (!error.empty() || !manifest || !checks::IsObject(parsed))
    throw PackageError(path + ": manifest.json is not a JSON object: " + error.substr(0, 200));
  if (Str(manifest->Get("format").value_or(nullptr)) != "onnxforge-package" ||
      !checks::IsInt(manifest->Get("format_version").value_or(nullptr)) ||
      manifest->Get("format_version").value_or(nullptr).cast<int64_t>() != 1)
    throw PackageError(path + ": not an onnxforge package of format version 1");
  std::string problem = checks::CheckManifest(parsed);
  if (!problem.empty())
    throw PackageError(path + ": manifest.json: " + problem.substr(0, 300) + ": the package is damaged or was not "
                       "written by onnxforge; rebuild it with `onnxforge compile`");
  Json listed = manifest->Get("files").value().cast<Json>();
  for (const char* name : {"model.so", "weights.npz"}) {
    auto entry = listed.Get(name).value_or(nullptr).try_cast<Json>();
    if (!entry || entry->Get("bytes").value().cast<int64_t>() != static_cast<int64_t>(members[name].size()) ||
        Str(entry->Get("sha256").value()) != pkg::Sha256Hex(members[name]))
      throw PackageError(path + ": checksum mismatch for " + name + ": the file was modified or corrupted; "
                         "rebuild the package with `onnxforge compile`");
    (*files)[name] = members[name];
  }
  return *manifest;
}

static std::set<std::string> CpuFlags() {  // x86 /proc/cpuinfo flags; empty elsewhere
  std::ifstream f("/proc/cpuinfo");
  std::set<std::string> flags;
  for (std::string line; std::getline(f, line);)
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      for (std::string w; words >> w;) flags.insert(w);
      break;
    }
  return flags;
}

static void CheckTarget(const Json& manifest, const std::string& path) {
  Json target = manifest.Get("target").value_or(Json()).try_cast<Json>().value_or(Json());
  std::string name = Str(target.Get("name").value_or(nullptr)), arch = Str(target.Get("arch").value_or(nullptr));
  if (arch != kArch)
    throw PackageError(path + " was built for target " + name + " (" + arch + "); this ofrun runs " + kArch +
                       " packages: compile the model for this machine or use an ofrun built for " + arch);
  if (Str(target.Get("device").value_or(nullptr)) != "cpu")
    throw PackageError(path + " was built for target " + name + " (a GPU); ofrun runs CPU packages only");
  auto flags = CpuFlags();
  auto features = target.Get("cpu_features").value_or(nullptr).try_cast<ffi::Array<ffi::Any>>();
  for (const ffi::Any& f : features.value_or(ffi::Array<ffi::Any>()))
    if (!flags.empty() && !flags.count(Str(f)))
      throw PackageError(path + " was built for target " + name + ", which needs CPU feature " + Str(f) +
                         " that this CPU lacks");
}

// ---- tensors ----

struct AlignedAlloc {  // 64-byte aligned, as TVM's own CPU allocator
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

static ffi::Tensor ToTensor(const std::string& dtype, const std::vector<int64_t>& shape, const std::string& data,
                            const std::string& what) {
  DLDataType t = ffi::StringToDLDataType(dtype);
  uint64_t bits = uint64_t(t.bits) * t.lanes, count = 1;  // as ffi::GetDataSize, without wrapping around
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(count, uint64_t(d), &count))
      throw PackageError(what + ": an impossible shape");
  if (count > (UINT64_MAX - 7) / (bits ? bits : 1) || (count * bits + 7) / 8 != data.size())
    throw PackageError(what + ": " + std::to_string(data.size()) + " bytes for " + dtype + " of that shape");
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::Shape(shape.begin(), shape.end()), t,
                                                DLDevice{kDLCPU, 0});
  if (!tensor.data_ptr() && !data.empty()) throw std::bad_alloc();
  std::copy(data.begin(), data.end(), static_cast<char*>(tensor.data_ptr()));
  return tensor;
}

static std::string ShapeText(const ffi::Array<ffi::Any>& shape) {
  std::string s = "[";
  for (const ffi::Any& d : shape) {
    if (s.size() > 1) s += ",";
    auto i = d.try_cast<int64_t>();
    s += i ? std::to_string(*i) : d == nullptr ? "?" : Str(d);
  }
  return s + "]";
}

// The arrays given with -i and --inputs, by name.
static std::map<std::string, npy::Array> GivenInputs(const Options& o) {
  std::map<std::string, npy::Array> given;
  try {
    if (!o.inputs_npz.empty())
      for (auto& [member, bytes] : npy::ReadZip(pkg::ReadFile(o.inputs_npz), o.inputs_npz)) {
        bool npy = member.size() > 4 && member.compare(member.size() - 4, 4, ".npy") == 0;
        given[npy ? member.substr(0, member.size() - 4) : member] = npy::Parse(bytes, o.inputs_npz + ":" + member);
      }
    for (auto& [name, file] : o.inputs) given[name] = npy::Parse(pkg::ReadFile(file), file);
  } catch (const std::runtime_error& e) {
    throw UsageError(e.what());
  }
  return given;
}

static std::string SpecText(const Json& spec) {
  auto shape = spec.Get("shape").value_or(nullptr).try_cast<ffi::Array<ffi::Any>>();
  return Str(spec.Get("name").value()) + " " + Str(spec.Get("dtype").value_or(nullptr)) + (shape ? ShapeText(*shape) : "");
}

// Inputs in the manifest's order, checked as the Python loader checks them.
static std::vector<ffi::Tensor> ReadInputs(const Options& o, const Json& manifest) {
  std::map<std::string, npy::Array> given = GivenInputs(o);
  auto specs = manifest.Get("inputs").value().cast<ffi::Array<ffi::Any>>();
  for (auto& [name, a] : given) {
    bool known = false;
    std::string listed;
    for (const ffi::Any& spec : specs) {
      known = known || Str(spec.cast<Json>().Get("name").value()) == name;
      listed += (listed.empty() ? "" : ", ") + SpecText(spec.cast<Json>());
    }
    if (!known) throw UsageError("unknown input '" + name + "'; the model's inputs are: " + listed);
  }
  std::vector<ffi::Tensor> out;
  std::map<std::string, int64_t> bound;  // symbolic dim -> value
  for (const ffi::Any& spec_any : specs) {
    Json spec = spec_any.cast<Json>();
    std::string name = Str(spec.Get("name").value()), dtype = Str(spec.Get("dtype").value_or(nullptr));
    auto shape = spec.Get("shape").value_or(nullptr).try_cast<ffi::Array<ffi::Any>>();
    auto it = given.find(name);
    if (it == given.end())
      throw UsageError("missing input " + SpecText(spec) + ": pass -i " + name + "=FILE.npy");
    const npy::Array& a = it->second;
    if (!dtype.empty() && a.dtype != dtype)
      throw UsageError("input '" + name + "': dtype " + a.dtype + ", expected " + dtype);
    if (shape) {
      bool ok = shape->size() == a.shape.size();
      for (size_t i = 0; ok && i < a.shape.size(); ++i) {
        ffi::Any want = (*shape)[i];
        if (auto v = want.try_cast<int64_t>()) ok = *v == a.shape[i];
        else if (want != nullptr) ok = bound.emplace(Str(want), a.shape[i]).first->second == a.shape[i];
      }
      if (!ok) {
        std::string got;
        for (int64_t d : a.shape) got += (got.empty() ? "" : ",") + std::to_string(d);
        throw UsageError("input '" + name + "': shape [" + got + "], expected " + ShapeText(*shape));
      }
    }
    out.push_back(ToTensor(a.dtype, a.shape, a.data, "input " + name));
  }
  return out;
}

static std::vector<ffi::Tensor> ReadWeights(const std::string& npz, const Json& manifest, const std::string& path) {
  std::map<std::string, std::string> members;
  try {
    members = npy::ReadZip(npz, path + ":weights.npz");
  } catch (const std::runtime_error& e) {
    throw PackageError(e.what());
  }
  std::vector<ffi::Tensor> out;
  for (const ffi::Any& p_any : manifest.Get("params").value_or(ffi::Array<ffi::Any>()).cast<ffi::Array<ffi::Any>>()) {
    Json p = p_any.cast<Json>();
    std::string key = Str(p.Get("key").value()), dtype = Str(p.Get("dtype").value()), name = Str(p.Get("name").value());
    auto it = members.find(key + ".npy");
    if (it == members.end()) throw PackageError(path + ": weights.npz has no " + key + " (weight " + name + ")");
    npy::Array a;
    try {
      a = npy::Parse(it->second, path + ":weights.npz:" + key);
    } catch (const std::runtime_error& e) {
      throw PackageError(e.what());
    }
    std::vector<int64_t> shape;
    for (const ffi::Any& d : p.Get("shape").value().cast<ffi::Array<ffi::Any>>()) shape.push_back(d.cast<int64_t>());
    bool raw = p.Get("raw").value_or(false).try_cast<bool>().value_or(false);  // bfloat16 etc. stored as bytes
    if (!raw && (a.dtype != dtype || a.shape != shape))
      throw PackageError(path + ": weight " + name + " does not match the manifest (" + dtype + ")");
    out.push_back(ToTensor(dtype, shape, a.data, path + ": weight " + name));
  }
  return out;
}

static std::string NumpyName(DLDataType t) {
  if (t.code == kDLBool || (t.code == kDLUInt && t.bits == 1)) return "bool";
  return std::string(ffi::DLDataTypeToString(t));
}

// ---- run ----

// Libraries the compiled code links (OpenBLAS for cpu_kernels=blas): loaded globally
// first, from ofrun's own folder (the bundle ships them) or the system's search path,
// so that model.so's dependency resolves wherever it runs.
static void PreloadNativeLibraries(const Json& manifest, const std::string& path) {
  std::string self(4096, '\0');
  ssize_t n = readlink("/proc/self/exe", self.data(), self.size() - 1);
  std::string dir = n > 0 ? self.substr(0, self.rfind('/', n)) : ".";
  for (const ffi::Any& e : manifest.Get("native_libraries").value_or(ffi::Array<ffi::Any>()).cast<ffi::Array<ffi::Any>>()) {
    std::string soname = Str(e.cast<Json>().Get("soname").value_or(nullptr));
    if (soname.empty() || soname.find('/') != std::string::npos)
      throw PackageError(path + ": manifest.json names a bad native library '" + soname + "'");
    std::string bundled = dir + "/" + soname;
    if (!dlopen(bundled.c_str(), RTLD_NOW | RTLD_GLOBAL) && !dlopen(soname.c_str(), RTLD_NOW | RTLD_GLOBAL))
      throw PackageError(path + " needs " + soname + " (the package was built with cpu_kernels=blas): put it next to "
                         "ofrun (python -m onnxforge.codegen.device build ships it) or on the library path");
  }
}

#if defined(__aarch64__)
static const int kElfMachine = 183;
#elif defined(__x86_64__)
static const int kElfMachine = 62;
#else
static const int kElfMachine = 0;
#endif

static void CheckLibrary(const std::string& so, const std::string& path) {
  std::string problem = checks::CheckElf(so, kElfMachine);
  if (!problem.empty())
    throw PackageError(path + ": its model.so cannot be loaded: " + problem + "; rebuild the package with "
                       "`onnxforge compile`");
}

static void ProbeLibrary(const std::string& lib, const std::string& path) {
  std::string problem = checks::ProbeDlopen(lib);
  if (!problem.empty()) throw PackageError(path + ": " + problem);
}

// Everything ofrun checks before it loads code: manifest, checksums, target, weights,
// the library's ELF headers. Returns the manifest and fills `files` and `weights`.
static Json CheckPackage(std::string data, const std::string& path, std::map<std::string, std::string>* files,
                         std::vector<ffi::Tensor>* weights, const std::vector<std::string>* trusted = nullptr) {
  Json manifest = ReadManifestBytes(std::move(data), path, files, trusted);
  CheckTarget(manifest, path);
  *weights = ReadWeights((*files)["weights.npz"], manifest, path);
  CheckLibrary((*files)["model.so"], path);
  return manifest;
}

static int Run(const Options& o) {
  std::map<std::string, std::string> files;
  std::vector<ffi::Tensor> weights;
  std::string data;
  try {
    data = pkg::ReadFile(o.package);
  } catch (const std::runtime_error& e) {
    throw UsageError(e.what());
  }
  std::vector<std::string> trusted;  // raw public keys
  for (const std::string& file : o.trust) {
    try {
      trusted.push_back(sig::PublicKeyFromPem(pkg::ReadFile(file), file));
    } catch (const std::runtime_error& e) {
      throw UsageError(e.what());
    }
  }
  Json manifest = CheckPackage(std::move(data), o.package, &files, &weights, o.trust.empty() ? nullptr : &trusted);
  std::vector<ffi::Tensor> args = ReadInputs(o, manifest);
  for (ffi::Tensor& w : weights) args.push_back(w);
  PreloadNativeLibraries(manifest, o.package);

  // dlopen needs a file: write model.so to a temporary one, removed once loaded.
  const char* tmpdir = getenv("TMPDIR");
  std::string lib = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/ofrun-XXXXXX.so";
  int fd = mkstemps(lib.data(), 3);
  if (fd < 0) throw std::runtime_error("cannot create a temporary file for model.so in " + lib);
  const std::string& so = files["model.so"];
  bool written = write(fd, so.data(), so.size()) == static_cast<ssize_t>(so.size());
  close(fd);
  std::optional<ffi::Module> vm;
  try {
    if (!written) throw std::runtime_error("cannot write " + lib);
    ProbeLibrary(lib, o.package);
    ffi::Module exe = ffi::Module::LoadFromFile(lib);
    vm = exe->GetFunction("vm_load_executable", /*query_imports=*/true).value()().cast<ffi::Module>();
  } catch (...) {
    unlink(lib.c_str());
    throw;
  }
  unlink(lib.c_str());
  // One CPU device with the pooled allocator (2), as tvm.runtime.vm.VirtualMachine does.
  (*vm)->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ConfigThreads(o.threads);
  if (Str(manifest.Get("dequantize").value_or(nullptr)) == "load" ||
      manifest.Get("transform_params").value_or(nullptr).try_cast<bool>().value_or(false)) {
    // Built with dequantize=load or weights packed at load: the weights -> what main takes, once
    // (codegen/build.py).
    size_t n_inputs = manifest.Get("inputs").value().cast<ffi::Array<ffi::Any>>().size();
    ffi::Array<ffi::Tensor> weights(args.begin() + n_inputs, args.end());
    ffi::Function transform = (*vm)->GetFunction("main_transform_params").value();
    ffi::Array<ffi::Any> ready = transform(weights).cast<ffi::Array<ffi::Any>>();
    args.resize(n_inputs);
    for (const ffi::Any& w : ready) args.push_back(w.cast<ffi::Tensor>());
  }
  ffi::Function main_fn = (*vm)->GetFunction("main").value();

  std::vector<ffi::AnyView> views(args.begin(), args.end());
  std::vector<double> ms;
  ffi::Any result;
  for (int r = 0; r < o.repeat; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }

  std::vector<ffi::Tensor> outs;
  if (auto t = result.try_cast<ffi::Tensor>()) outs.push_back(*t);
  else for (const ffi::Any& v : result.cast<ffi::Array<ffi::Any>>()) outs.push_back(v.cast<ffi::Tensor>());
  auto specs = manifest.Get("outputs").value().cast<ffi::Array<ffi::Any>>();
  if (outs.size() != specs.size())
    throw PackageError(o.package + ": the library returned " + std::to_string(outs.size()) + " outputs, the manifest lists " +
                       std::to_string(specs.size()));
  std::vector<std::pair<std::string, std::string>> npz;
  for (size_t i = 0; i < outs.size(); ++i) {
    ffi::Tensor& t = outs[i];
    std::string name = Str(specs[i].cast<Json>().Get("name").value());
    if (!t.IsContiguous() || t.device().device_type != kDLCPU)
      throw std::runtime_error("output " + name + " is not a contiguous CPU tensor");
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    const char* data = static_cast<const char*>(t.data_ptr()) + t.byte_offset();
    std::string dtype = NumpyName(t.dtype());
    npz.emplace_back(name + ".npy", npy::Serialize(dtype, shape, data, ffi::GetDataSize(*t.GetDLTensorPtr())));
    if (o.output.empty()) {
      std::string dims;
      for (int64_t d : shape) dims += (dims.empty() ? "" : ",") + std::to_string(d);
      printf("%s %s[%s]", name.c_str(), dtype.c_str(), dims.c_str());
      if (dtype == "float32" && t.numel() > 0) {
        const float* f = reinterpret_cast<const float*>(data);
        auto [lo, hi] = std::minmax_element(f, f + t.numel());
        double sum = 0;
        for (int64_t k = 0; k < t.numel(); ++k) sum += f[k];
        printf(" min %.6g max %.6g mean %.6g", *lo, *hi, sum / t.numel());
      }
      printf("\n");
    }
  }
  if (!o.output.empty()) {
    std::ofstream f(o.output, std::ios::binary);
    std::string bytes = npy::WriteZip(npz);
    if (!f.write(bytes.data(), bytes.size())) throw std::runtime_error("cannot write " + o.output);
  }
  if (o.repeat > 1) {
    std::sort(ms.begin(), ms.end());
    printf("latency: median %.3f ms over %d runs (min %.3f ms)\n", ms[ms.size() / 2], o.repeat, ms.front());
  }
  return 0;
}

#ifndef OFRUN_NO_MAIN  // (the fuzz driver, tests/fuzz/ofrun_fuzz.cc, includes this file)
int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const UsageError& e) {
    fprintf(stderr, "ofrun: error: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const PackageError& e) {
    fprintf(stderr, "ofrun: error: %s\n", e.what());
    return 3;
  } catch (const std::bad_alloc&) {
    fprintf(stderr, "ofrun: error: not enough memory: the package or its inputs are too large for this machine\n");
    return 1;
  } catch (const ffi::Error& e) {  // raised inside TVM: loading the library, running main
    fprintf(stderr, "ofrun: error: %s: %s\n", e.kind().c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {  // I/O
    fprintf(stderr, "ofrun: error: %s\n", e.what());
    return 1;
  }
}
#endif
