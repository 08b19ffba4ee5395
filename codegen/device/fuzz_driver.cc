// A driver that runs ofrun's package checks (codegen/device/ofrun.cc: CheckPackage,
// everything before model.so is loaded, with and without a trusted key) over a corpus of package mutants, in one
// process, for builds with AddressSanitizer and UndefinedBehaviorSanitizer
// (tools/fuzz_ofrun.py builds it and writes the corpus).
//
//   ofrun_driver CORPUS      CORPUS: for each case, its length (8 bytes, little-endian) and bytes
//
// Prints one line per case: ok (the package passed every check), refused (a
// PackageError or UsageError: one line naming the problem, as ofrun prints it) or
// BAD "message" (any other exception). A sanitizer finding or a crash ends the
// process; the death callback names the case first.
#define OFRUN_NO_MAIN
#include "ofrun.cc"

#include <sanitizer/common_interface_defs.h>

static long current_case = -1;

static void OnDeath() { fprintf(stderr, "ofrun-fuzz: died on case %ld\n", current_case); }

static std::string JsonText(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s.substr(0, 300)) {
    if (c == '"' || c == '\\') out += '\\', out += char(c);
    else if (c < 0x20 || c >= 0x7f) out += "?";
    else out += char(c);
  }
  return out + "\"";
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: ofrun_driver CORPUS\n");
    return 2;
  }
  __sanitizer_set_death_callback(OnDeath);
  std::string corpus = pkg::ReadFile(argv[1]);
  const std::vector<std::string> keys = {std::string(32, '\x01')};
  size_t at = 0;
  for (current_case = 0; at + 8 <= corpus.size(); ++current_case) {
    uint64_t n = npy::Le(corpus, at, 8);
    if (n > corpus.size() - at - 8) break;
    std::string data = corpus.substr(at + 8, n);
    at += 8 + n;
    std::map<std::string, std::string> files;
    std::vector<ffi::Tensor> weights;
    std::string verdict = "ok";
    try {  // every other case as `ofrun --trust` with one key (0x01 x 32; tools/fuzz_ofrun.py signs with nothing)
      CheckPackage(std::move(data), "case.ofpkg", &files, &weights, current_case % 2 ? &keys : nullptr);
    } catch (const PackageError&) {
      verdict = "refused";
    } catch (const UsageError&) {
      verdict = "refused";
    } catch (const std::exception& e) {
      verdict = "BAD " + JsonText(std::string(typeid(e).name()) + ": " + e.what());
    } catch (...) {
      verdict = "BAD \"a non-standard exception\"";
    }
    printf("%s\n", verdict.c_str());
    fflush(stdout);  // a later crash must not take this verdict with it
  }
  return 0;
}
