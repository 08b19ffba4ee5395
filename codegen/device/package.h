// Reading an onnxforge package (.ofpkg) without Python: the archive is a tar
// (ustar, with pax headers when Python's tarfile needs them), gzip-compressed
// (quantized weights and code compress by a quarter to a third; uncompressed
// packages are read too), and
// every member is checked against the sha256 that manifest.json lists, as the
// Python loader does (codegen/manifest.py).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include "inflate.h"

namespace pkg {

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open it");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline uint64_t Octal(const char* p, size_t n) {
  if (static_cast<unsigned char>(p[0]) & 0x80) {  // base-256, for sizes over 8 GiB
    uint64_t v = 0;
    for (size_t i = 1; i < n; ++i) v = v << 8 | static_cast<unsigned char>(p[i]);
    return v;
  }
  uint64_t v = 0;
  for (size_t i = 0; i < n && p[i] >= '0' && p[i] <= '7'; ++i) v = v * 8 + (p[i] - '0');
  return v;
}

// A decimal number (all of `text`), or false: a hostile header must not reach std::stoul.
inline bool Decimal(const std::string& text, uint64_t* value) {
  if (text.empty() || text.size() > 19) return false;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint64_t(c - '0');
  }
  *value = v;
  return true;
}

// pax records ("LEN key=value\n"): the ones that override a member's path and size.
inline void Pax(const std::string& body, std::string* name, uint64_t* size, const std::string& path) {
  auto bad = [&] { return std::runtime_error(path + ": corrupt package (a malformed pax header)"); };
  for (size_t at = 0; at < body.size() && body[at] != '\0';) {
    size_t space = body.find(' ', at);
    uint64_t len = 0;
    if (space == std::string::npos || !Decimal(body.substr(at, space - at), &len)) throw bad();
    if (len < space - at + 3 || len > body.size() - at || body[at + len - 1] != '\n') throw bad();
    std::string record = body.substr(space + 1, len - (space - at) - 2);
    size_t eq = record.find('=');
    if (eq == std::string::npos) throw bad();
    std::string key = record.substr(0, eq), value = record.substr(eq + 1);
    if (key == "path") *name = value;
    if (key == "size" && !Decimal(value, size)) throw bad();
    at += len;
  }
}

// The files a package may hold (codegen/manifest.py: MEMBERS and the signature).
inline bool KnownMember(const std::string& name) {
  for (const char* known : {"manifest.json", "manifest.sha256", "model.so", "weights.npz", "manifest.sig"})
    if (name == known) return true;
  return false;
}

// name -> bytes of every member of the tar `tar`: only the known members, only as
// regular files, each once; every size checked against what is there.
inline std::map<std::string, std::string> ParseTar(const std::string& tar, const std::string& path) {
  std::map<std::string, std::string> out;
  std::string pax_name;
  uint64_t pax_size = UINT64_MAX;
  for (size_t at = 0; at + 512 <= tar.size();) {
    const char* h = tar.data() + at;
    if (h[0] == '\0') break;  // end-of-archive blocks
    if (tar.compare(at + 257, 5, "ustar") != 0) throw std::runtime_error(path + ": not an onnxforge package (not a tar)");
    std::string name(h, strnlen(h, 100));
    std::string prefix(h + 345, strnlen(h + 345, 155));
    if (!prefix.empty()) name = prefix + "/" + name;
    uint64_t size = Octal(h + 124, 12);
    char type = h[156];
    if (type == '0' || type == '\0') {
      if (!pax_name.empty()) name = pax_name;
      if (pax_size != UINT64_MAX) size = pax_size;
      pax_name.clear(), pax_size = UINT64_MAX;
    }
    const size_t left = tar.size() - at - 512;
    if (size > left) throw std::runtime_error(path + ": truncated package (" + name.substr(0, 100) + ")");
    if (type == 'x') {
      Pax(tar.substr(at + 512, size), &pax_name, &pax_size, path);
    } else if (type == 'g') {  // global pax header: nothing we use
    } else if (type == '0' || type == '\0') {
      if (!KnownMember(name))
        throw std::runtime_error(path + ": unexpected file '" + name.substr(0, 100) + "' in the package");
      if (out.count(name)) throw std::runtime_error(path + ": " + name + " appears twice");
      out[name] = tar.substr(at + 512, size);
    } else {
      throw std::runtime_error(path + ": '" + name.substr(0, 100) + "' is not a regular file");
    }
    size_t padded = size_t(size + 511) / 512 * 512;  // size <= left < SIZE_MAX - 511: no wrap
    if (padded > left) break;                        // the last member ends the file
    at += 512 + padded;
  }
  return out;
}

// Inflated bytes a package may take: 64 MiB plus 64 per compressed byte (packages
// inflate 1.1-4x; a gzip bomb ~1000x), or ONNXFORGE_PACKAGE_MAX_BYTES; as
// codegen/manifest.py's inflate_limit.
inline size_t InflateLimit(size_t compressed) {
  const char* env = getenv("ONNXFORGE_PACKAGE_MAX_BYTES");
  uint64_t v = 0;
  if (env && Decimal(env, &v)) return size_t(v);
  return (size_t(64) << 20) + (compressed < (SIZE_MAX >> 7) ? 64 * compressed : SIZE_MAX >> 1);
}

// The members of the package file `data` (read from `path`), gunzipped within InflateLimit.
inline std::map<std::string, std::string> ReadPackageBytes(std::string data, const std::string& path) {
  if (inflate::IsGzip(data)) {
    size_t limit = InflateLimit(data.size());
    try {
      data = inflate::Gunzip(data, limit);
    } catch (const inflate::LimitError&) {
      throw std::runtime_error(path + ": the package inflates to more than " + std::to_string(limit >> 20) +
                               " MiB from " + std::to_string(data.size() >> 20) + " MiB (a compression bomb?); "
                               "if it is genuine, set ONNXFORGE_PACKAGE_MAX_BYTES to a larger limit");
    } catch (const inflate::Error& e) {
      throw std::runtime_error(path + ": corrupt or truncated package (" + e.what() + ")");
    } catch (const std::bad_alloc&) {
      throw std::runtime_error(path + ": not enough memory to unpack the package");
    }
  }
  return ParseTar(data, path);
}

inline std::map<std::string, std::string> ReadTar(const std::string& path) { return ReadPackageBytes(ReadFile(path), path); }

// ---- sha256 (FIPS 180-4) ----

inline std::string Sha256Hex(const std::string& data) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
      0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
      0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
      0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
      0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
      0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
      0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  std::string msg = data + '\x80';
  msg.append((64 + 56 - msg.size() % 64) % 64, '\0');
  for (int i = 7; i >= 0; --i) msg += char((uint64_t(data.size()) * 8) >> (8 * i) & 0xff);
  for (size_t block = 0; block < msg.size(); block += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      const auto* p = reinterpret_cast<const unsigned char*>(msg.data() + block + 4 * i);
      w[i] = uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  char hex[65];
  for (int i = 0; i < 8; ++i) snprintf(hex + 8 * i, 9, "%08x", h[i]);
  return std::string(hex, 64);
}

}  // namespace pkg
