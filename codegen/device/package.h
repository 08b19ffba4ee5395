// Reading an onnxforge package (.ofpkg) without Python: the archive is a tar
// (ustar, with pax headers when Python's tarfile needs them), gzip-compressed
// (quantized weights and code compress by a quarter to a third; uncompressed
// packages are read too), and
// every member is checked against the sha256 that manifest.json lists, as the
// Python loader does (codegen/manifest.py).
#pragma once

#include <cstdint>
#include <cstdio>
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

// pax records ("LEN key=value\n"): the ones that override a member's path and size.
inline void Pax(const std::string& body, std::string* name, uint64_t* size) {
  for (size_t at = 0; at < body.size();) {
    size_t space = body.find(' ', at);
    if (space == std::string::npos) break;
    size_t len = std::stoul(body.substr(at, space - at));
    if (len == 0) break;
    std::string record = body.substr(space + 1, len - (space - at) - 2);
    size_t eq = record.find('=');
    if (record.compare(0, eq, "path") == 0) *name = record.substr(eq + 1);
    if (record.compare(0, eq, "size") == 0) *size = std::stoull(record.substr(eq + 1));
    at += len;
  }
}

// name -> bytes of every regular file; anything else in the archive is an error.
inline std::map<std::string, std::string> ReadTar(const std::string& path) {
  std::string tar = ReadFile(path);
  if (inflate::IsGzip(tar)) {
    try {
      tar = inflate::Gunzip(tar);
    } catch (const inflate::Error& e) {
      throw std::runtime_error(path + ": corrupt or truncated package (" + e.what() + ")");
    }
  }
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
    if (type == 'x') {
      Pax(tar.substr(at + 512, size), &pax_name, &pax_size);
    } else if (type == 'g') {  // global pax header: nothing we use
    } else if (type == '0' || type == '\0') {
      if (!pax_name.empty()) name = pax_name;
      if (pax_size != UINT64_MAX) size = pax_size;
      pax_name.clear(), pax_size = UINT64_MAX;
      if (at + 512 + size > tar.size()) throw std::runtime_error(path + ": truncated package (" + name + ")");
      if (out.count(name)) throw std::runtime_error(path + ": " + name + " appears twice");
      out[name] = tar.substr(at + 512, size);
    } else {
      throw std::runtime_error(path + ": '" + name + "' is not a regular file");
    }
    at += 512 + (size + 511) / 512 * 512;
  }
  return out;
}

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
