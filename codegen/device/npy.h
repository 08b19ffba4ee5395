// Minimal .npy / .npz support for ofrun: little-endian, C-order arrays of plain
// numeric dtypes, which is what numpy.save / numpy.savez write (and read back).
// An .npz here is a zip whose members are stored, not deflated: numpy.savez, not
// numpy.savez_compressed.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace npy {

struct Array {
  std::string dtype;  // numpy name: "float32", "int64", "bool", ...
  std::vector<int64_t> shape;
  std::string data;  // the raw bytes
};

struct Descr {
  std::string descr, name;  // numpy's descr ('|': one byte, '<': little-endian) and dtype name
  size_t itemsize;
};

inline const std::vector<Descr>& Descrs() {
  static const std::vector<Descr> table = {
      {"<f4", "float32", 4}, {"<f8", "float64", 8}, {"<f2", "float16", 2}, {"|i1", "int8", 1},
      {"|u1", "uint8", 1},   {"<i2", "int16", 2},   {"<u2", "uint16", 2},  {"<i4", "int32", 4},
      {"<u4", "uint32", 4},  {"<i8", "int64", 8},   {"<u8", "uint64", 8},  {"|b1", "bool", 1}};
  return table;
}

inline std::runtime_error Error(const std::string& where, const std::string& what) {
  return std::runtime_error(where + ": " + what);
}

// The text after `'key':` in a .npy header dict, without leading spaces.
inline std::string After(const std::string& header, const std::string& key, const std::string& where) {
  size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) throw Error(where, "the .npy header has no '" + key + "'");
  at = header.find_first_not_of(' ', at + key.size() + 3);
  return at == std::string::npos ? "" : header.substr(at);
}

inline Array Parse(const std::string& bytes, const std::string& where) {
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw Error(where, "not a .npy file");
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  int major = b[6];
  if (major != 1 && bytes.size() < 12) throw Error(where, "unsupported or truncated .npy header");
  size_t len = major == 1 ? (b[8] | b[9] << 8) : (b[8] | b[9] << 8 | b[10] << 16 | size_t(b[11]) << 24);
  size_t start = major == 1 ? 10 : 12;
  if (major < 1 || major > 3 || start + len > bytes.size()) throw Error(where, "unsupported or truncated .npy header");
  std::string header = bytes.substr(start, len);
  Array out;
  std::string descr = After(header, "descr", where);
  size_t quote = descr.find('\'', 1);
  if (descr.size() < 2 || descr[0] != '\'' || quote == std::string::npos) throw Error(where, "a malformed .npy header");
  descr = descr.substr(1, quote - 1);
  size_t item = 0;
  for (const Descr& d : Descrs())
    if (d.descr == descr || (d.descr[0] == '<' && descr == "=" + d.descr.substr(1))) out.dtype = d.name, item = d.itemsize;
  if (out.dtype.empty()) throw Error(where, "dtype '" + descr.substr(0, 40) + "' is not supported (little-endian numbers and bool only)");
  if (After(header, "fortran_order", where).rfind("False", 0) != 0)
    throw Error(where, "Fortran-order arrays are not supported: save np.ascontiguousarray(a)");
  std::string shape = After(header, "shape", where);
  size_t close = shape.find(')');
  if (shape.empty() || shape[0] != '(' || close == std::string::npos) throw Error(where, "a malformed .npy header");
  shape = shape.substr(1, close - 1);
  uint64_t count = 1;
  for (size_t i = 0; i < shape.size();) {
    size_t end = shape.find(',', i);
    std::string dim = shape.substr(i, end == std::string::npos ? std::string::npos : end - i);
    size_t a = dim.find_first_not_of(' '), b = dim.find_last_not_of(' ');
    if (a != std::string::npos) {
      dim = dim.substr(a, b - a + 1);
      int64_t d = 0;
      for (char c : dim)  // digits only: a dim is >= 0
        if (c < '0' || c > '9' || __builtin_mul_overflow(d, int64_t(10), &d) || __builtin_add_overflow(d, int64_t(c - '0'), &d))
          throw Error(where, "a malformed dim '" + dim.substr(0, 20) + "' in the .npy header");
      out.shape.push_back(d);
      if (__builtin_mul_overflow(count, uint64_t(d), &count)) throw Error(where, "an impossible .npy shape");
    }
    if (end == std::string::npos) break;
    i = end + 1;
  }
  out.data = bytes.substr(start + len);
  uint64_t want = 0;
  if (__builtin_mul_overflow(count, uint64_t(item), &want) || out.data.size() != want)
    throw Error(where, "holds " + std::to_string(out.data.size()) + " data bytes, its header says " +
                           std::to_string(want));
  return out;
}

inline std::string Serialize(const std::string& dtype, const std::vector<int64_t>& shape, const void* data,
                             size_t nbytes) {
  std::string descr;
  for (const Descr& d : Descrs())
    if (d.name == dtype) descr = d.descr;
  if (descr.empty()) throw std::runtime_error("cannot write dtype " + dtype + " to .npy");
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  if (shape.size() == 1) dims.resize(dims.size() - 1);  // "(4,)"
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // data starts 64-byte aligned
  header += '\n';
  std::string out = "\x93NUMPY\x01";
  out += '\0';
  out += char(header.size() & 0xff);
  out += char(header.size() >> 8);
  return out + header + std::string(static_cast<const char*>(data), nbytes);
}

// ---- .npz: a zip of .npy members, stored (numpy.savez) ----

inline uint64_t Le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(s.at(at + i));
  return v;
}

inline std::map<std::string, std::string> ReadZip(const std::string& zip, const std::string& where) {
  std::map<std::string, std::string> out;
  size_t at = 0;
  while (at + 30 <= zip.size() && Le(zip, at, 4) == 0x04034b50) {  // local file header
    uint64_t flags = Le(zip, at + 6, 2), method = Le(zip, at + 8, 2);
    uint64_t size = Le(zip, at + 18, 4), name_len = Le(zip, at + 26, 2), extra_len = Le(zip, at + 28, 2);
    if (name_len + extra_len > zip.size() - at - 30) throw Error(where, "truncated zip header");
    std::string name = zip.substr(at + 30, name_len);
    if (method != 0 || (flags & 8))
      throw Error(where, "member " + name + " is compressed: write the .npz with numpy.savez, not savez_compressed");
    size_t extra = at + 30 + name_len;
    for (size_t e = extra; size == 0xffffffffu && e + 4 <= extra + extra_len;) {  // zip64: numpy always adds it
      if (Le(zip, e, 2) == 1 && e + 12 <= extra + extra_len) size = Le(zip, e + 4, 8);
      e += 4 + Le(zip, e + 2, 2);
    }
    size_t data = extra + extra_len;
    if (size > zip.size() - data) throw Error(where, "truncated zip member " + name);
    if (out.count(name)) throw Error(where, "member " + name + " appears twice");
    out[name] = zip.substr(data, size);
    at = data + size;
  }
  bool empty_zip = at + 22 <= zip.size() && Le(zip, at, 4) == 0x06054b50;  // end of central directory only
  if (out.empty() && !empty_zip) throw Error(where, "not an .npz (zip) file");  // (a model without weights)
  return out;
}

inline uint32_t Crc32(const std::string& s) {
  uint32_t c = 0xffffffffu;
  for (unsigned char ch : s) {
    c ^= ch;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}

inline void Put(std::string& s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s += char(v >> (8 * i) & 0xff);
}

// members: name -> bytes (names end in ".npy"); no zip64, so under 4 GiB in all.
inline std::string WriteZip(const std::vector<std::pair<std::string, std::string>>& members) {
  std::string out, central;
  for (const auto& [name, data] : members) {
    if (out.size() + data.size() >= 0xffffffffu) throw std::runtime_error("outputs over 4 GiB: not supported");
    uint32_t crc = Crc32(data);
    std::string common;  // version, flags, method, time, date, crc, sizes, name length, extra length
    Put(common, 20, 2), Put(common, 0, 2), Put(common, 0, 2), Put(common, 0, 2), Put(common, 0x21, 2);
    Put(common, crc, 4), Put(common, data.size(), 4), Put(common, data.size(), 4);
    Put(common, name.size(), 2), Put(common, 0, 2);
    Put(central, 0x02014b50, 4), Put(central, 20, 2), central += common;
    Put(central, 0, 2), Put(central, 0, 2), Put(central, 0, 2), Put(central, 0, 4), Put(central, out.size(), 4);
    central += name;
    Put(out, 0x04034b50, 4), out += common, out += name, out += data;
  }
  size_t offset = out.size();
  out += central;
  Put(out, 0x06054b50, 4), Put(out, 0, 2), Put(out, 0, 2), Put(out, members.size(), 2), Put(out, members.size(), 2);
  Put(out, central.size(), 4), Put(out, offset, 4), Put(out, 0, 2);
  return out;
}

}  // namespace npy
