// gzip (RFC 1952) and DEFLATE (RFC 1951) decoding for ofrun: packages are
// gzip-compressed tars (codegen/manifest.py). Written here rather than linking
// zlib because the cross toolchains ofrun is built with (Debian's aarch64 g++)
// ship no zlib for the target, as package.h does for sha256. Decoding only;
// tests/codegen/test_inflate.py checks it against Python's zlib.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace inflate {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct LimitError : Error {  // the output would pass the caller's limit
  using Error::Error;
};

// Bits are read least significant first (RFC 1951 3.1.1).
class BitReader {
 public:
  BitReader(const uint8_t* data, size_t size) : p_(data), n_(size) {}

  void Fill() {
    while (count_ <= 56 && pos_ < n_) buf_ |= uint64_t(p_[pos_++]) << count_, count_ += 8;
  }
  uint32_t Get(int k) {
    if (k == 0) return 0;
    if (count_ < k) Fill();
    if (count_ < k) throw Error("truncated compressed data");
    uint32_t v = uint32_t(buf_ & ((uint64_t(1) << k) - 1));
    buf_ >>= k, count_ -= k;
    return v;
  }
  uint64_t Peek() const { return buf_; }
  int Available() const { return count_; }
  void Drop(int k) { buf_ >>= k, count_ -= k; }
  // To the next byte boundary, then hand back whole bytes still buffered.
  size_t AlignedPosition() {
    Drop(count_ % 8);
    size_t at = pos_ - count_ / 8;
    buf_ = 0, count_ = 0, pos_ = at;
    return at;
  }
  void Seek(size_t at) { buf_ = 0, count_ = 0, pos_ = at; }

 private:
  const uint8_t* p_;
  size_t n_, pos_ = 0;
  uint64_t buf_ = 0;
  int count_ = 0;
};

// A canonical Huffman code: a table for codes of up to kFast bits, and the
// counts per length for the rest (decoded a bit at a time).
class Huffman {
 public:
  static constexpr int kFast = 10;

  void Build(const uint8_t* lengths, int n) {
    memset(count_, 0, sizeof(count_));
    for (int s = 0; s < n; ++s) count_[lengths[s]]++;
    count_[0] = 0;
    int left = 1;  // codes of the current length still free
    for (int len = 1; len <= 15; ++len) {
      left = left * 2 - count_[len];
      if (left < 0) throw Error("invalid Huffman code (over-subscribed)");
    }
    uint16_t offset[16];
    offset[1] = 0;
    for (int len = 1; len < 15; ++len) offset[len + 1] = offset[len] + count_[len];
    for (int s = 0; s < n; ++s)
      if (lengths[s]) symbol_[offset[lengths[s]]++] = uint16_t(s);
    memset(fast_, 0, sizeof(fast_));
    uint32_t code = 0;
    int index = 0;
    for (int len = 1; len <= kFast; ++len) {
      for (int i = 0; i < count_[len]; ++i, ++code, ++index) {
        uint32_t reversed = 0;
        for (int b = 0; b < len; ++b) reversed |= ((code >> b) & 1) << (len - 1 - b);
        for (uint32_t r = reversed; r < (1u << kFast); r += 1u << len) fast_[r] = uint32_t(len) << 16 | symbol_[index];
      }
      code <<= 1;
    }
  }

  int Decode(BitReader& in) const {
    if (in.Available() < 15) in.Fill();
    uint32_t entry = fast_[in.Peek() & ((1u << kFast) - 1)];
    int len = int(entry >> 16);
    if (len && len <= in.Available()) {
      in.Drop(len);
      return int(entry & 0xffff);
    }
    int code = 0, first = 0, index = 0;  // longer codes (RFC 1951 3.2.2 order)
    for (len = 1; len <= 15; ++len) {
      code |= int(in.Get(1));
      int count = count_[len];
      if (code - count < first) return symbol_[index + (code - first)];
      index += count, first += count, first <<= 1, code <<= 1;
    }
    throw Error("invalid Huffman code in the compressed data");
  }

 private:
  uint16_t count_[16];
  uint16_t symbol_[288];
  uint32_t fast_[1 << kFast];
};

class Inflater {
 public:
  Inflater(BitReader& in, std::string& out, size_t& used) : in_(in), out_(out), used_(used) {}

  // One DEFLATE stream, appended to out (out[0, used) is the data so far).
  void Run() {
    for (bool last = false; !last;) {
      last = in_.Get(1);
      switch (in_.Get(2)) {
        case 0: Stored(); break;
        case 1: Fixed(); break;
        case 2: Dynamic(); break;
        default: throw Error("invalid DEFLATE block type");
      }
    }
  }

 private:
  void Grow(size_t extra) {
    if (used_ + extra > out_.size()) {
      if (used_ + extra > limit_) throw LimitError("inflates to more than " + std::to_string(limit_ >> 20) + " MiB");
      out_.resize(std::min(std::max(out_.size() * 2, used_ + extra), limit_));
    }
  }

  void Stored() {
    in_.AlignedPosition();
    uint32_t len = in_.Get(16), nlen = in_.Get(16);
    if ((len ^ 0xffff) != nlen) throw Error("corrupt stored block length");
    size_t at = in_.AlignedPosition();
    if (at + len > raw_size_) throw Error("truncated compressed data");
    Grow(len);
    memcpy(&out_[used_], raw_ + at, len);
    used_ += len;
    in_.Seek(at + len);
  }

  void Fixed() {
    static const auto codes = [] {
      std::pair<Huffman, Huffman> c;
      uint8_t lengths[288];
      for (int s = 0; s < 288; ++s) lengths[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
      c.first.Build(lengths, 288);
      for (int s = 0; s < 30; ++s) lengths[s] = 5;
      c.second.Build(lengths, 30);
      return c;
    }();
    Codes(codes.first, codes.second);
  }

  void Dynamic() {
    int nlen = int(in_.Get(5)) + 257, ndist = int(in_.Get(5)) + 1, ncode = int(in_.Get(4)) + 4;
    if (nlen > 286 || ndist > 30) throw Error("invalid dynamic block header");
    static const uint8_t order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    uint8_t lengths[286 + 30] = {};
    for (int i = 0; i < ncode; ++i) lengths[order[i]] = uint8_t(in_.Get(3));
    Huffman lencode;
    lencode.Build(lengths, 19);
    memset(lengths, 0, sizeof(lengths));
    for (int i = 0; i < nlen + ndist;) {
      int sym = lencode.Decode(in_);
      if (sym < 16) {
        lengths[i++] = uint8_t(sym);
        continue;
      }
      int repeat;
      uint8_t value = 0;
      if (sym == 16) {
        if (i == 0) throw Error("invalid code lengths (repeat with nothing before)");
        value = lengths[i - 1], repeat = 3 + int(in_.Get(2));
      } else {
        repeat = sym == 17 ? 3 + int(in_.Get(3)) : 11 + int(in_.Get(7));
      }
      if (i + repeat > nlen + ndist) throw Error("invalid code lengths (too many)");
      while (repeat--) lengths[i++] = value;
    }
    if (lengths[256] == 0) throw Error("invalid dynamic block (no end-of-block code)");
    Huffman lit, dist;
    lit.Build(lengths, nlen);
    dist.Build(lengths + nlen, ndist);
    Codes(lit, dist);
  }

  void Codes(const Huffman& lit, const Huffman& dist) {
    static const uint16_t len_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                          31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const uint8_t len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const uint16_t dist_base[30] = {1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
                                           193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
    static const uint8_t dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    for (;;) {
      int sym = lit.Decode(in_);
      if (sym < 256) {
        Grow(1);
        out_[used_++] = char(sym);
        continue;
      }
      if (sym == 256) return;
      sym -= 257;
      if (sym >= 29) throw Error("invalid length code in the compressed data");
      size_t len = len_base[sym] + in_.Get(len_extra[sym]);
      int d = dist.Decode(in_);
      if (d >= 30) throw Error("invalid distance code in the compressed data");
      size_t back = dist_base[d] + in_.Get(dist_extra[d]);
      if (back > used_ - start_) throw Error("distance too far back in the compressed data");
      Grow(len);
      char* o = &out_[used_];
      const char* from = o - back;
      if (back >= len) {
        memcpy(o, from, len);
      } else {
        for (size_t i = 0; i < len; ++i) o[i] = from[i];  // overlapping: repeats the last `back` bytes
      }
      used_ += len;
    }
  }

 public:
  const uint8_t* raw_ = nullptr;  // the whole input, for stored blocks
  size_t raw_size_ = 0;
  size_t start_ = 0;  // where this stream's output begins (back-references stay inside it)
  size_t limit_ = SIZE_MAX;  // the most output allowed (a compression bomb stops here)

 private:
  BitReader& in_;
  std::string& out_;
  size_t& used_;
};

inline uint32_t Crc32(const char* data, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ uint8_t(data[i])) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

inline bool IsGzip(const std::string& data) {
  return data.size() >= 2 && uint8_t(data[0]) == 0x1f && uint8_t(data[1]) == 0x8b;
}

// The decompressed bytes of a gzip file (every member of a multi-member one),
// each member's CRC-32 and size checked; a LimitError once they would pass `limit`
// bytes (memory never holds more than that).
inline std::string Gunzip(const std::string& gz, size_t limit = SIZE_MAX) {
  const auto* p = reinterpret_cast<const uint8_t*>(gz.data());
  size_t n = gz.size(), at = 0, used = 0;
  std::string out;
  auto le32 = [&](size_t i) { return uint32_t(p[i]) | uint32_t(p[i + 1]) << 8 | uint32_t(p[i + 2]) << 16 | uint32_t(p[i + 3]) << 24; };
  // A first guess: the last member's size (mod 2^32), at most DEFLATE's best ratio.
  if (n >= 8) out.resize(std::min<size_t>(std::min<size_t>(std::max<size_t>(le32(n - 4), 1024), n * 1032), limit));
  while (at < n) {
    if (n - at < 18 || p[at] != 0x1f || p[at + 1] != 0x8b) throw Error("not gzip data or truncated");
    if (p[at + 2] != 8) throw Error("unsupported gzip compression method");
    uint8_t flags = p[at + 3];
    size_t h = at + 10;
    auto need = [&](size_t k) {
      if (h + k > n) throw Error("truncated gzip header");
    };
    if (flags & 4) need(2), h += 2 + (p[h] | p[h + 1] << 8);  // FEXTRA
    for (int bit : {8, 16})                                    // FNAME, FCOMMENT: zero-terminated
      if (flags & bit) {
        while (need(1), p[h] != 0) ++h;
        ++h;
      }
    if (flags & 2) h += 2;  // FHCRC
    need(8);
    BitReader bits(p + h, n - h);
    Inflater inflater(bits, out, used);
    inflater.raw_ = p + h, inflater.raw_size_ = n - h, inflater.start_ = used, inflater.limit_ = limit;
    size_t begin = used;
    inflater.Run();
    size_t end = h + bits.AlignedPosition();
    if (end + 8 > n) throw Error("truncated gzip data (no trailer)");
    if (Crc32(out.data() + begin, used - begin) != le32(end) || uint32_t(used - begin) != le32(end + 4))
      throw Error("gzip checksum mismatch: corrupt data");
    at = end + 8;
    while (at < n && p[at] == 0) ++at;  // zero padding after the last member (as gzip allows)
  }
  out.resize(used);
  return out;
}

}  // namespace inflate
