// Package signatures for ofrun --trust KEY.pub: manifest.sig holds an ed25519 signature
// of manifest.json's exact bytes (codegen/signing.py writes it); the manifest lists the
// sha256 and size of every other file, so a valid signature by a trusted key covers the
// whole package. The check is OpenSSL's (libcrypto 1.1.1 or 3, opened when --trust is
// given, so ofrun itself links nothing new and runs without it otherwise); the key files
// are the PEM public keys `onnxforge keygen KEY` writes as KEY.pub.
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sig {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string Base64Decode(const std::string& text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '+' ? 62 : c == '/' ? 63 : -1;
    if (c == '=') break;
    if (v < 0) {
      if (c == '\n' || c == '\r' || c == ' ' || c == '\t') continue;
      throw Error("not base64");
    }
    acc = acc << 6 | uint32_t(v), bits += 6;
    if (bits >= 8) bits -= 8, out += char((acc >> bits) & 0xff);
  }
  return out;
}

// The raw 32-byte key of a PEM ed25519 public key (SubjectPublicKeyInfo: a fixed 12-byte
// DER prefix, then the key).
inline std::string PublicKeyFromPem(const std::string& pem, const std::string& path) {
  const std::string begin = "-----BEGIN PUBLIC KEY-----", end = "-----END PUBLIC KEY-----";
  size_t a = pem.find(begin), b = pem.find(end);
  if (pem.find("PRIVATE KEY") != std::string::npos)
    throw Error(path + " is a private key: give ofrun --trust the public key (KEY.pub)");
  if (a == std::string::npos || b == std::string::npos || b < a)
    throw Error(path + " is not a PEM public key; use the KEY.pub that `onnxforge keygen KEY` wrote");
  std::string der;
  try {
    der = Base64Decode(pem.substr(a + begin.size(), b - a - begin.size()));
  } catch (const Error&) {
    throw Error(path + " is not a PEM public key (bad base64)");
  }
  static const unsigned char prefix[12] = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};
  if (der.size() != 44 || der.compare(0, 12, std::string(reinterpret_cast<const char*>(prefix), 12)) != 0)
    throw Error(path + " is not an ed25519 public key");
  return der.substr(12);
}

inline std::string Hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) out += digits[c >> 4], out += digits[c & 15];
  return out;
}

inline bool FromHex(const std::string& hex, std::string* out) {
  if (hex.size() % 2) return false;
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      char c = hex[i + k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return false;
      v = v * 16 + d;
    }
    *out += char(v);
  }
  return true;
}

// OpenSSL's one-shot ed25519 verification, looked up at run time.
class Verifier {
 public:
  Verifier() {
    for (const char* name : {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"})
      if ((lib_ = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    if (!lib_) throw Error("checking signatures (--trust) needs OpenSSL's libcrypto (1.1.1 or 3) on this machine: "
                           "install libssl3 (Debian/Ubuntu) or openssl-libs");
    new_key_ = reinterpret_cast<NewKey>(dlsym(lib_, "EVP_PKEY_new_raw_public_key"));
    free_key_ = reinterpret_cast<FreeKey>(dlsym(lib_, "EVP_PKEY_free"));
    new_ctx_ = reinterpret_cast<NewCtx>(dlsym(lib_, "EVP_MD_CTX_new"));
    free_ctx_ = reinterpret_cast<FreeCtx>(dlsym(lib_, "EVP_MD_CTX_free"));
    init_ = reinterpret_cast<Init>(dlsym(lib_, "EVP_DigestVerifyInit"));
    verify_ = reinterpret_cast<Verify>(dlsym(lib_, "EVP_DigestVerify"));
    if (!new_key_ || !free_key_ || !new_ctx_ || !free_ctx_ || !init_ || !verify_)
      throw Error("this machine's libcrypto has no ed25519 verification (OpenSSL 1.1.1 or newer is needed)");
  }
  ~Verifier() {
    if (lib_) dlclose(lib_);
  }
  Verifier(const Verifier&) = delete;
  Verifier& operator=(const Verifier&) = delete;

  bool Check(const std::string& key, const std::string& signature, const std::string& message) const {
    const int kEd25519 = 1087;  // NID_ED25519 / EVP_PKEY_ED25519
    void* pkey = new_key_(kEd25519, nullptr, reinterpret_cast<const unsigned char*>(key.data()), key.size());
    if (!pkey) return false;
    void* ctx = new_ctx_();
    bool ok = ctx && init_(ctx, nullptr, nullptr, nullptr, pkey) == 1 &&
              verify_(ctx, reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                      reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1;
    if (ctx) free_ctx_(ctx);
    free_key_(pkey);
    return ok;
  }

 private:
  using NewKey = void* (*)(int, void*, const unsigned char*, size_t);
  using FreeKey = void (*)(void*);
  using NewCtx = void* (*)();
  using FreeCtx = void (*)(void*);
  using Init = int (*)(void*, void**, const void*, void*, void*);
  using Verify = int (*)(void*, const unsigned char*, size_t, const unsigned char*, size_t);
  void* lib_ = nullptr;
  NewKey new_key_ = nullptr;
  FreeKey free_key_ = nullptr;
  NewCtx new_ctx_ = nullptr;
  FreeCtx free_ctx_ = nullptr;
  Init init_ = nullptr;
  Verify verify_ = nullptr;
};

}  // namespace sig
