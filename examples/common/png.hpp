// SPDX-License-Identifier: MIT
// A dependency-free PNG writer for the examples: 8-bit RGB, uncompressed (stored) deflate.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
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

/// A zlib stream (RFC 1950) holding `raw` in stored deflate blocks (RFC 1951, 3.2.4):
/// no compression, so no Huffman coding is needed; each block carries at most 65535 bytes.
inline std::vector<std::uint8_t> zlib_stored(const std::vector<std::uint8_t>& raw) {
  // CMF 0x78: deflate with a 32 KiB window; FLG 0x01 makes 0x7801 a multiple of 31.
  std::vector<std::uint8_t> out{0x78, 0x01};
  std::size_t at = 0;
  do {
    const std::size_t len = std::min<std::size_t>(raw.size() - at, 65535);
    const bool final_block = at + len == raw.size();
    out.push_back(final_block ? 0x01 : 0x00);  // BFINAL bit, BTYPE = 00 (stored)
    const auto l = static_cast<std::uint16_t>(len);
    const auto nl = static_cast<std::uint16_t>(~l);
    for (const std::uint16_t v : {l, nl}) {  // LEN and its complement, little-endian
      out.push_back(static_cast<std::uint8_t>(v & 0xFFu));
      out.push_back(static_cast<std::uint8_t>(v >> 8));
    }
    out.insert(out.end(), raw.begin() + static_cast<std::ptrdiff_t>(at),
               raw.begin() + static_cast<std::ptrdiff_t>(at + len));
    at += len;
  } while (at < raw.size());
  put_u32_be(out, adler32(raw));
  return out;
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

  // Each scanline starts with its filter type; 0 (None) keeps the bytes as they are.
  const std::size_t row_bytes = static_cast<std::size_t>(image.width) * 3;
  std::vector<std::uint8_t> raw;
  raw.reserve((row_bytes + 1) * static_cast<std::size_t>(image.height));
  for (int y = 0; y < image.height; ++y) {
    raw.push_back(0);
    const auto row = image.rgb.begin() + static_cast<std::ptrdiff_t>(y * row_bytes);
    raw.insert(raw.end(), row, row + static_cast<std::ptrdiff_t>(row_bytes));
  }
  detail::put_chunk(out, "IDAT", detail::zlib_stored(raw));
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
