// SPDX-License-Identifier: MIT
// The safetensors format: dtypes, little-endian byte codecs and the validating header parser.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace attend {

/// Element types of a safetensors file that attend reads (F16 and BF16 are read only).
enum class DType { F16, BF16, F32, F64, I64, BOOL };

/// The format's spelling: "F16", "BF16", "F32", "F64", "I64", "BOOL".
inline std::string to_string(DType dtype) {
  switch (dtype) {
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::I64:
      return "I64";
    case DType::BOOL:
      return "BOOL";
  }
  return "?";
}

/// Bytes per element: 2, 2, 4, 8, 8, 1.
inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::F32:
      return 4;
    case DType::F64:
      return 8;
    case DType::I64:
      return 8;
    case DType::BOOL:
      return 1;
  }
  return 0;
}

namespace detail {

/// Parses the format's spelling of a dtype; false when it is not one attend reads.
inline bool dtype_from_string(const std::string& s, DType& out) {
  for (const DType d : {DType::F16, DType::BF16, DType::F32, DType::F64, DType::I64, DType::BOOL}) {
    if (s == to_string(d)) {
      out = d;
      return true;
    }
  }
  return false;
}

/// Unsigned integer U from sizeof(U) little-endian bytes at `p` (any alignment).
template <typename U>
U load_le(const std::uint8_t* p) {
  U v = 0;
  for (std::size_t k = 0; k < sizeof(U); ++k) v = static_cast<U>(v | (U(p[k]) << (8 * k)));
  return v;
}

/// Writes `v` as sizeof(U) little-endian bytes at `p` (any alignment).
template <typename U>
void store_le(U v, std::uint8_t* p) {
  for (std::size_t k = 0; k < sizeof(U); ++k) p[k] = static_cast<std::uint8_t>(v >> (8 * k));
}

inline float load_f32(const std::uint8_t* p) {
  const std::uint32_t bits = load_le<std::uint32_t>(p);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline double load_f64(const std::uint8_t* p) {
  const std::uint64_t bits = load_le<std::uint64_t>(p);
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

/// IEEE binary16 -> binary32, exact (every half is a float). A NaN keeps its payload and
/// is made quiet, as the F16C instruction and PyTorch's conversion do.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (std::uint32_t{h} & 0x8000u) << 16;
  const std::uint32_t exponent = (std::uint32_t{h} >> 10) & 0x1Fu;
  const std::uint32_t mantissa = std::uint32_t{h} & 0x3FFu;
  std::uint32_t bits = 0;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 31) {
    const std::uint32_t quiet = mantissa != 0 ? 0x00400000u : 0u;
    bits = sign | 0x7F800000u | quiet | (mantissa << 13);  // inf or NaN
  } else {
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);  // rebias 15 -> 127
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// bfloat16 -> binary32, exact: bfloat16 is the top half of a float.
inline float bfloat16_to_float(std::uint16_t b) {
  const std::uint32_t bits = std::uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/// Where one tensor lives in a parsed file; offsets are relative to the data buffer.
struct SafeTensorsEntry {
  DType dtype = DType::F32;
  Shape shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

/// The validated contents of a header.
struct SafeTensorsLayout {
  std::size_t data_start = 0;  // 8 + header length: file offset of the data buffer
  std::map<std::string, SafeTensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};

/// The reference implementation's limit on the header length (100 MB).
inline constexpr std::uint64_t max_safetensors_header = 100000000;

/// A valid header nests JSON containers 3 deep: top object, entry, shape/offsets array.
inline constexpr int max_safetensors_depth = 3;

/// The first `n` bytes at `p` as a quoted string for a message: printable ASCII as is,
/// anything else as \xNN (e.g. "PK\x03\x04\x14\x00\x00\x00" for a zip archive).
inline std::string quote_bytes(const std::uint8_t* p, std::size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  std::string out = "\"";
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xF];
    }
  }
  return out + "\"";
}

[[noreturn]] inline void safetensors_fail(const std::string& source, const std::string& what) {
  throw format_error("SafeTensors: " + source + ": " + what);
}

/// First pass over the header with nlohmann's SAX parser, before any DOM is built:
/// syntax errors with their file offset, nesting depth (a deep "[[[[..." header would
/// otherwise cost gigabytes) and duplicate keys (a DOM keeps only the last silently).
class SafeTensorsHeaderScan : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit SafeTensorsHeaderScan(const std::string& source) : source_(source) {}

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    if (depth_ == 0) top_is_object_ = true;
    if (depth_ == 1) entry_keys_.clear();
    return enter();
  }
  bool key(string_t& k) override {
    if (depth_ == 1) {
      if (!top_keys_.insert(k).second)
        safetensors_fail(source_, "header has key '" + k + "' twice");
      current_ = k;
    } else if (depth_ == 2 && top_is_object_ && !entry_keys_.insert(k).second) {
      safetensors_fail(source_, "header entry '" + current_ + "' has key '" + k + "' twice");
    }
    return true;
  }
  bool end_object() override {
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return enter(); }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::json::exception& ex) override {
    // `position` counts bytes read, so the offending byte is header byte position - 1.
    const std::size_t offset = 8 + (position > 0 ? position - 1 : 0);
    const std::string what =
        ex.id == 406 ? "header has a JSON number out of range" : "header is not valid JSON";
    safetensors_fail(source_, what + " near file offset " + std::to_string(offset));
  }

 private:
  bool enter() {
    if (depth_ >= max_safetensors_depth) {
      safetensors_fail(source_, "header nests JSON containers deeper than " +
                                    std::to_string(max_safetensors_depth) + " levels");
    }
    ++depth_;
    return true;
  }

  const std::string& source_;
  int depth_ = 0;
  bool top_is_object_ = false;
  std::set<std::string> top_keys_;
  std::set<std::string> entry_keys_;
  std::string current_;  // the top-level key whose value is being scanned
};

/// "a JSON string", or the number itself, for messages about a JSON value.
inline std::string json_describe(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return std::to_string(v.get<std::uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<std::int64_t>());
  if (v.is_number_float()) return v.dump();
  return std::string("a JSON ") + v.type_name();
}

/// The value of a JSON integer in [0, limit]; `what` names it in the message otherwise.
inline std::uint64_t json_count(const nlohmann::json& v, const std::string& what,
                                std::uint64_t limit, const std::string& source) {
  if (!v.is_number_unsigned() || v.get<std::uint64_t>() > limit) {
    const std::string expected = v.is_number_unsigned() ? "at most " + std::to_string(limit)
                                                        : std::string("a non-negative integer");
    safetensors_fail(source, what + " is " + json_describe(v) + ", expected " + expected);
  }
  return v.get<std::uint64_t>();
}

/// The member `key` of entry `name`, required to exist and to have JSON type `type`.
inline const nlohmann::json& json_member(const nlohmann::json& entry, const char* key,
                                         nlohmann::json::value_t type, const char* type_text,
                                         const std::string& name, const std::string& source) {
  const auto it = entry.find(key);
  if (it == entry.end()) safetensors_fail(source, "tensor '" + name + "' has no '" + key + "'");
  if (it->type() != type) {
    safetensors_fail(source, "tensor '" + name + "': " + key + " is a JSON " + it->type_name() +
                                 ", expected " + type_text);
  }
  return *it;
}

/// Validates one header entry against a data buffer of `data_size` bytes.
inline SafeTensorsEntry parse_safetensors_entry(const std::string& name, const nlohmann::json& j,
                                                std::uint64_t data_size,
                                                const std::string& source) {
  const std::string who = "tensor '" + name + "'";
  if (!j.is_object()) {
    safetensors_fail(source, who + " is a JSON " + j.type_name() + ", expected an object");
  }
  SafeTensorsEntry e;
  const auto& dtype =
      json_member(j, "dtype", nlohmann::json::value_t::string, "a string", name, source);
  if (!dtype_from_string(dtype.get_ref<const std::string&>(), e.dtype)) {
    safetensors_fail(source, who + ": dtype is '" + dtype.get_ref<const std::string&>() +
                                 "', expected one of F16, BF16, F32, F64, I64, BOOL");
  }

  const auto& shape =
      json_member(j, "shape", nlohmann::json::value_t::array, "an array", name, source);
  constexpr auto index_max = static_cast<std::uint64_t>(std::numeric_limits<Index>::max());
  for (std::size_t k = 0; k < shape.size(); ++k) {
    e.shape.push_back(static_cast<Index>(
        json_count(shape[k], who + ": shape[" + std::to_string(k) + "]", index_max, source)));
  }

  const auto& offsets =
      json_member(j, "data_offsets", nlohmann::json::value_t::array, "an array", name, source);
  if (offsets.size() != 2) {
    safetensors_fail(source, who + ": data_offsets has " + std::to_string(offsets.size()) +
                                 " values, expected 2 ([begin, end])");
  }
  constexpr auto u64_max = std::numeric_limits<std::uint64_t>::max();
  e.begin = json_count(offsets[0], who + ": data_offsets[0]", u64_max, source);
  e.end = json_count(offsets[1], who + ": data_offsets[1]", u64_max, source);
  const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
  if (e.begin > e.end) {
    safetensors_fail(source, who + ": data_offsets are " + range + ", expected begin <= end");
  }

  // Same overflow rule as Tensor's checked_numel, so every accepted shape fits a Tensor.
  std::uint64_t numel = 1;
  for (const Index d : e.shape) {
    const auto ud = static_cast<std::uint64_t>(d);
    if (ud != 0 && numel > index_max / ud) {
      safetensors_fail(source,
                       who + ": shape " + shape_string(e.shape) + " overflows the element count");
    }
    numel *= ud;
  }
  const std::uint64_t size = dtype_size(e.dtype);
  if (numel > index_max / size) {
    safetensors_fail(source, who + ": shape " + shape_string(e.shape) + " of " +
                                 to_string(e.dtype) + " overflows the byte count");
  }
  if (e.end - e.begin != numel * size) {
    safetensors_fail(source, who + ": data_offsets are " + range + " (" +
                                 std::to_string(e.end - e.begin) + " bytes), expected " +
                                 std::to_string(numel * size) + " bytes (shape " +
                                 shape_string(e.shape) + " of " + to_string(e.dtype) + ")");
  }
  // Checked last: a consistent entry whose bytes are not all there means a cut-off file.
  if (e.end > data_size) {
    safetensors_fail(source, "truncated file: " + who + ": data_offsets are " + range +
                                 ", expected end <= " + std::to_string(data_size) +
                                 " (the data buffer's size)");
  }
  return e;
}

/// Validates the whole file in `bytes` and returns where each tensor lives.
inline SafeTensorsLayout parse_safetensors(const std::vector<std::uint8_t>& bytes,
                                           const std::string& source) {
  // Each message says plainly what the file is (truncated, or not safetensors at all),
  // then the details.
  if (bytes.size() < 8) {
    safetensors_fail(source, (bytes.empty() ? std::string("empty file") : "truncated file") +
                                 " or not a safetensors file: file is " +
                                 std::to_string(bytes.size()) +
                                 " bytes, expected at least 8 (the header length)");
  }
  // Both checks come before anything is allocated or read from the header.
  const std::uint64_t header_size = load_le<std::uint64_t>(bytes.data());
  const std::uint64_t after = bytes.size() - 8;
  if (header_size > max_safetensors_header) {
    // Text, a zip archive (torch.save's .pt/.bin) or anything else read as a length.
    safetensors_fail(source, "not a safetensors file: it begins with " +
                                 quote_bytes(bytes.data(), 8) + ", read as a header length of " +
                                 std::to_string(header_size) + ", expected at most " +
                                 std::to_string(max_safetensors_header));
  }
  if (header_size > after) {
    // A JSON header starts with '{': then the file was cut short, else it is something else.
    const bool looks_like_header = after == 0 || bytes[8] == '{';
    safetensors_fail(source, std::string(looks_like_header ? "truncated file"
                                                           : "not a safetensors file") +
                                 ": header length is " + std::to_string(header_size) +
                                 ", expected at most " + std::to_string(after) +
                                 " (the bytes after the length field)");
  }
  const std::uint8_t* first = bytes.data() + 8;
  const std::uint8_t* last = first + header_size;

  SafeTensorsHeaderScan scan(source);
  nlohmann::json::sax_parse(first, last, &scan);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(first, last);
  } catch (const nlohmann::json::exception& ex) {  // unreachable after the scan
    safetensors_fail(source, std::string("header is not valid JSON: ") + ex.what());
  }
  if (!header.is_object()) {
    safetensors_fail(
        source, std::string("header is a JSON ") + header.type_name() + ", expected an object");
  }

  SafeTensorsLayout layout;
  layout.data_start = static_cast<std::size_t>(8 + header_size);
  const std::uint64_t data_size = after - header_size;
  for (const auto& item : header.items()) {
    const nlohmann::json& value = item.value();
    if (item.key() == "__metadata__") {
      if (!value.is_object()) {
        safetensors_fail(source, std::string("__metadata__ is a JSON ") + value.type_name() +
                                     ", expected an object");
      }
      for (const auto& kv : value.items()) {
        if (!kv.value().is_string()) {
          safetensors_fail(source, "__metadata__ '" + kv.key() + "' is a JSON " +
                                       kv.value().type_name() + ", expected a string");
        }
        layout.metadata[kv.key()] = kv.value().get<std::string>();
      }
      continue;
    }
    layout.entries[item.key()] = parse_safetensors_entry(item.key(), value, data_size, source);
  }

  // Overlaps: sweep the non-empty ranges by begin, remembering the furthest end so far.
  std::vector<std::pair<const std::string*, const SafeTensorsEntry*>> ranges;
  for (const auto& kv : layout.entries) {
    if (kv.second.begin < kv.second.end) ranges.emplace_back(&kv.first, &kv.second);
  }
  std::stable_sort(ranges.begin(), ranges.end(),
                   [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  const std::pair<const std::string*, const SafeTensorsEntry*>* furthest = nullptr;
  for (const auto& r : ranges) {
    if (furthest != nullptr && r.second->begin < furthest->second->end) {
      const auto text = [](const SafeTensorsEntry& e) {
        return "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
      };
      safetensors_fail(source, "tensor '" + *r.first + "': data_offsets are " + text(*r.second) +
                                   ", overlapping tensor '" + *furthest->first + "' at " +
                                   text(*furthest->second));
    }
    if (furthest == nullptr || r.second->end > furthest->second->end) furthest = &r;
  }

  // BOOL bytes must be 0 or 1, so readers may trust them.
  for (const auto& kv : layout.entries) {
    if (kv.second.dtype != DType::BOOL) continue;
    const std::uint8_t* p = bytes.data() + layout.data_start + kv.second.begin;
    for (std::uint64_t i = 0; i < kv.second.end - kv.second.begin; ++i) {
      if (p[i] > 1) {
        safetensors_fail(source, "tensor '" + kv.first + "': element " + std::to_string(i) +
                                     " is " + std::to_string(p[i]) + ", expected 0 or 1 (BOOL)");
      }
    }
  }
  return layout;
}

}  // namespace detail
}  // namespace attend
