// SPDX-License-Identifier: MIT
// A dependency-free PNG writer for the examples: 8-bit RGB, per-row PNG filters and a small
// deflate compressor (LZ77 with fixed Huffman codes): flat-coloured figures shrink ~100x.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace examples::png {

/// An 8-bit RGB image, rows top to bottom, pixels left to right, 3 bytes per pixel.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;  // [height, width, 3]

  Image(int w, int h) : width(w), height(h), rgb(static_cast<std::size_t>(w) * h * 3, 0) {}

  void set(int x, int y, std::array<std::uint8_t, 3> colour) {
    const std::size_t at = (static_cast<std::size_t>(y) * width + x) * 3;
    for (std::size_t c = 0; c < 3; ++c) rgb[at + c] = colour[c];
  }
};

namespace detail {

/// CRC-32 (ISO 3309, reflected polynomial 0xEDB88320) as PNG chunks use it (PNG spec,
/// annex D): start from all ones, finish by inverting.
inline std::uint32_t crc32(const std::uint8_t* data, std::size_t n) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t byte = 0; byte < 256; ++byte) {
      std::uint32_t c = byte;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[byte] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

/// Adler-32 (RFC 1950, section 8.2): two running sums modulo 65521, the largest prime
/// below 2^16. The zlib stream ends with it.
inline std::uint32_t adler32(const std::vector<std::uint8_t>& data) {
  constexpr std::uint32_t mod = 65521;
  std::uint32_t a = 1, b = 0;
  for (const std::uint8_t byte : data) {
    a = (a + byte) % mod;
    b = (b + a) % mod;
  }
  return (b << 16) | a;
}

inline void put_u32_be(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

/// Appends one chunk: length, 4-letter type, data, CRC-32 of type and data.
inline void put_chunk(std::vector<std::uint8_t>& out, const char (&type)[5],
                      const std::vector<std::uint8_t>& data) {
  put_u32_be(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t type_at = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32_be(out, crc32(out.data() + type_at, 4 + data.size()));
}

/// Writes deflate's bit stream (RFC 1951, 3.1.1): data elements least significant bit
/// first, Huffman codes most significant bit first.
class BitWriter {
 public:
  explicit BitWriter(std::vector<std::uint8_t>& out) : out_(out) {}
  /// The `n` low bits of `value`, least significant first.
  void bits(std::uint32_t value, int n) {
    for (int i = 0; i < n; ++i) put((value >> i) & 1u);
  }
  /// A Huffman code of `n` bits, most significant first.
  void code(std::uint32_t value, int n) {
    for (int i = n - 1; i >= 0; --i) put((value >> i) & 1u);
  }
  void flush() {
    if (used_ > 0) out_.push_back(current_);
    current_ = 0;
    used_ = 0;
  }

 private:
  void put(std::uint32_t bit) {
    current_ = static_cast<std::uint8_t>(current_ | (bit << used_));
    if (++used_ == 8) flush();
  }
  std::vector<std::uint8_t>& out_;
  std::uint8_t current_ = 0;
  int used_ = 0;
};

/// A literal byte or end-of-block (256) in the fixed literal/length code (RFC 1951, 3.2.6).
inline void fixed_literal(BitWriter& w, std::uint32_t symbol) {
  if (symbol < 144) {
    w.code(0x30 + symbol, 8);
  } else if (symbol < 256) {
    w.code(0x190 + symbol - 144, 9);
  } else if (symbol < 280) {
    w.code(symbol - 256, 7);
  } else {
    w.code(0xC0 + symbol - 280, 8);
  }
}

/// A match of `length` (3..258) bytes at `distance` (1..32768) back, in the fixed codes:
/// length symbol 257..285 plus extra bits, then a 5-bit distance code plus extra bits.
inline void fixed_match(BitWriter& w, int length, int distance) {
  static constexpr int length_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,
                                          15, 17, 19, 23, 27, 31, 35, 43, 51,  59,
                                          67, 83, 99, 115, 131, 163, 195, 227, 258};
  static constexpr int length_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                           2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
  static constexpr int dist_base[30] = {1,    2,    3,    4,     5,     7,    9,    13,
                                        17,   25,   33,   49,    65,    97,   129,  193,
                                        257,  385,  513,  769,   1025,  1537, 2049, 3073,
                                        4097, 6145, 8193, 12289, 16385, 24577};
  static constexpr int dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                         6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
  int l = 28;
  while (length_base[l] > length) --l;
  fixed_literal(w, static_cast<std::uint32_t>(257 + l));
  w.bits(static_cast<std::uint32_t>(length - length_base[l]), length_extra[l]);
  int d = 29;
  while (dist_base[d] > distance) --d;
  w.code(static_cast<std::uint32_t>(d), 5);
  w.bits(static_cast<std::uint32_t>(distance - dist_base[d]), dist_extra[d]);
}

/// A zlib stream (RFC 1950) of `raw` as one deflate block with the fixed Huffman codes
/// (RFC 1951, 3.2.6) and greedy LZ77: at each position the most recent earlier occurrence
/// of the next 3 bytes within 32 KiB (a hash table of positions) is extended as far as it
/// matches, up to 258 bytes. Simple, and enough for figures made of flat colours.
inline std::vector<std::uint8_t> zlib_compress(const std::vector<std::uint8_t>& raw) {
  // CMF 0x78: deflate with a 32 KiB window; FLG 0x01 makes 0x7801 a multiple of 31.
  std::vector<std::uint8_t> out{0x78, 0x01};
  BitWriter w(out);
  w.bits(1, 1);  // BFINAL
  w.bits(1, 2);  // BTYPE = 01, fixed Huffman codes
  constexpr std::size_t window = 32768, max_length = 258, hash_size = 1u << 15;
  std::vector<std::ptrdiff_t> last(hash_size, -1);
  const auto hash = [&raw](std::size_t i) {
    return ((std::uint32_t{raw[i]} << 10) ^ (std::uint32_t{raw[i + 1]} << 5) ^ raw[i + 2]) &
           (hash_size - 1);
  };
  std::size_t i = 0;
  while (i < raw.size()) {
    std::size_t length = 0, distance = 0;
    if (i + 3 <= raw.size()) {
      const std::uint32_t h = hash(i);
      const std::ptrdiff_t j = last[h];
      last[h] = static_cast<std::ptrdiff_t>(i);
      if (j >= 0 && i - static_cast<std::size_t>(j) <= window) {
        const std::size_t limit = std::min(max_length, raw.size() - i);
        while (length < limit && raw[static_cast<std::size_t>(j) + length] == raw[i + length]) {
          ++length;
        }
        distance = i - static_cast<std::size_t>(j);
      }
    }
    if (length >= 3) {
      fixed_match(w, static_cast<int>(length), static_cast<int>(distance));
      for (std::size_t k = 1; k < length; ++k) {  // index the bytes the match covered
        if (i + k + 3 <= raw.size()) last[hash(i + k)] = static_cast<std::ptrdiff_t>(i + k);
      }
      i += length;
    } else {
      fixed_literal(w, raw[i]);
      ++i;
    }
  }
  fixed_literal(w, 256);  // end of block
  w.flush();
  put_u32_be(out, adler32(raw));
  return out;
}

/// The Paeth predictor of PNG filter type 4 (PNG spec, 9.4).
inline std::uint8_t paeth(std::uint8_t a, std::uint8_t b, std::uint8_t c) {
  const int p = int{a} + int{b} - int{c};
  const int pa = std::abs(p - int{a}), pb = std::abs(p - int{b}), pc = std::abs(p - int{c});
  return (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
}

/// Filters one scanline (PNG spec, 9.2) with each of the five filter types and keeps the
/// one with the smallest sum of |byte| read as signed (the spec's suggested heuristic);
/// appends the filter type and the filtered bytes. `prev` is the row above (zeros first).
inline void filter_row(const std::uint8_t* row, const std::uint8_t* prev, std::size_t n,
                       std::vector<std::uint8_t>& out) {
  constexpr std::size_t bpp = 3;
  std::vector<std::uint8_t> best, candidate(n);
  long best_cost = -1;
  int best_type = 0;
  for (int type = 0; type < 5; ++type) {
    long cost = 0;
    for (std::size_t x = 0; x < n; ++x) {
      const std::uint8_t a = x >= bpp ? row[x - bpp] : 0, b = prev[x];
      const std::uint8_t c = x >= bpp ? prev[x - bpp] : 0;
      std::uint8_t predicted = 0;
      if (type == 1) predicted = a;
      if (type == 2) predicted = b;
      if (type == 3) predicted = static_cast<std::uint8_t>((int{a} + int{b}) / 2);
      if (type == 4) predicted = paeth(a, b, c);
      candidate[x] = static_cast<std::uint8_t>(row[x] - predicted);
      cost += std::abs(static_cast<int>(static_cast<std::int8_t>(candidate[x])));
    }
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best_type = type;
      best = candidate;
    }
  }
  out.push_back(static_cast<std::uint8_t>(best_type));
  out.insert(out.end(), best.begin(), best.end());
}

}  // namespace detail

/// The PNG file bytes of `image`: signature, IHDR, one IDAT, IEND.
inline std::vector<std::uint8_t> encode(const Image& image) {
  std::vector<std::uint8_t> out{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<std::uint8_t> header;
  detail::put_u32_be(header, static_cast<std::uint32_t>(image.width));
  detail::put_u32_be(header, static_cast<std::uint32_t>(image.height));
  // bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace
  header.insert(header.end(), {8, 2, 0, 0, 0});
  detail::put_chunk(out, "IHDR", header);

  // Each scanline starts with its filter type (the cheapest of the five, per row).
  const std::size_t row_bytes = static_cast<std::size_t>(image.width) * 3;
  std::vector<std::uint8_t> raw;
  raw.reserve((row_bytes + 1) * static_cast<std::size_t>(image.height));
  const std::vector<std::uint8_t> zeros(row_bytes, 0);
  for (int y = 0; y < image.height; ++y) {
    const std::uint8_t* row = image.rgb.data() + static_cast<std::size_t>(y) * row_bytes;
    detail::filter_row(row, y > 0 ? row - row_bytes : zeros.data(), row_bytes, raw);
  }
  detail::put_chunk(out, "IDAT", detail::zlib_compress(raw));
  detail::put_chunk(out, "IEND", {});
  return out;
}

/// Writes `image` to `path`. \throws std::runtime_error when the file cannot be written.
inline void write(const std::string& path, const Image& image) {
  const std::vector<std::uint8_t> bytes = encode(image);
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  if (!file) throw std::runtime_error("png::write: cannot write " + path);
}

}  // namespace examples::png
