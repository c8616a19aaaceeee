// SPDX-License-Identifier: MIT
// Reads safetensors files (a hostile input: every malformation is a format_error).
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/io/safetensors_format.hpp"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace attend {

/// A parsed safetensors file, held in memory, with typed access to its tensors.
///
/// Format: an 8-byte little-endian u64 header length N, N bytes of JSON header
/// `{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
/// "__metadata__": {"key": "value"}}`, then the data buffer; offsets are relative to its
/// start. Follows https://github.com/huggingface/safetensors (format description).
///
/// Every check happens in `parse`, so a `SafeTensors` that exists is consistent: known
/// dtypes, offsets ordered, inside the buffer and non-overlapping, byte counts equal to
/// prod(shape) * dtype_size (overflow-checked), BOOL bytes 0 or 1, metadata values strings,
/// no duplicate keys, JSON nested at most 3 deep, header at most 100,000,000 bytes.
/// Unlike the reference implementation, gaps between tensors and trailing bytes after
/// the last tensor are accepted (they are harmless to a reader).
/// Data may be unaligned: values are decoded byte-wise, never cast in place.
class SafeTensors {
 public:
  /// Reads and parses the file at `path`.
  /// \throws error when the file cannot be opened or read (names the path and the reason).
  /// \throws format_error when the contents are malformed (names the path).
  static SafeTensors load(const std::string& path) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                         &std::fclose);
    if (!file) {
      const int err = errno;
      throw error("SafeTensors::load: cannot open '" + path +
                  "': " + std::generic_category().message(err));
    }
    std::vector<std::uint8_t> bytes;
    constexpr std::size_t chunk = std::size_t{1} << 20;
    for (;;) {
      const std::size_t old_size = bytes.size();
      bytes.resize(old_size + chunk);
      const std::size_t got = std::fread(bytes.data() + old_size, 1, chunk, file.get());
      bytes.resize(old_size + got);
      if (got < chunk) {
        if (std::ferror(file.get())) {
          const int err = errno;
          throw error("SafeTensors::load: cannot read '" + path +
                      "': " + std::generic_category().message(err));
        }
        break;
      }
    }
    return parse(std::move(bytes), path);
  }

  /// Parses a whole safetensors file held in `bytes`; `source` names it in messages.
  /// \throws format_error naming `source` (and the tensor, where one is involved) for any
  ///   malformation; see the class comment for the list of checks.
  static SafeTensors parse(std::vector<std::uint8_t> bytes, std::string source = "<buffer>") {
    SafeTensors st;
    st.bytes_ = std::move(bytes);
    st.source_ = std::move(source);
    detail::SafeTensorsLayout layout = detail::parse_safetensors(st.bytes_, st.source_);
    st.data_start_ = layout.data_start;
    st.entries_ = std::move(layout.entries);
    st.metadata_ = std::move(layout.metadata);
    return st;
  }

  /// The name given to `parse` (the path for `load`).
  const std::string& source() const noexcept { return source_; }

  bool contains(const std::string& name) const { return entries_.count(name) != 0; }

  /// All tensor names, sorted (byte-wise).
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& kv : entries_) out.push_back(kv.first);
    return out;
  }

  /// \throws index_error when there is no tensor `name`.
  DType dtype(const std::string& name) const { return entry(name).dtype; }

  /// \throws index_error when there is no tensor `name`.
  const Shape& shape(const std::string& name) const { return entry(name).shape; }

  /// The `__metadata__` map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// Tensor `name` decoded into a `Tensor<T>` of its shape.
  ///
  /// T = float or double reads F16, BF16, F32 and F64 (converted; F64 -> float rounds and
  /// may overflow to inf). T = std::int64_t reads I64 and BOOL (0/1). T = bool reads BOOL
  /// and I64 holding only 0 and 1.
  /// \throws index_error when there is no tensor `name`.
  /// \throws value_error when the dtype cannot be read as T, or (T = bool) an I64 value is
  ///   neither 0 nor 1.
  template <typename T>
  Tensor<T> get(const std::string& name) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                      std::is_same_v<T, std::int64_t> || std::is_same_v<T, bool>,
                  "SafeTensors::get reads float, double, std::int64_t or bool");
    const detail::SafeTensorsEntry& e = entry(name);
    const DType dt = e.dtype;
    const bool floating =
        dt == DType::F16 || dt == DType::BF16 || dt == DType::F32 || dt == DType::F64;
    const bool integral = dt == DType::I64 || dt == DType::BOOL;
    const char* wanted = "bool";
    const char* accepted = "BOOL or I64";
    bool ok = integral;
    if constexpr (std::is_floating_point_v<T>) {
      wanted = std::is_same_v<T, float> ? "float" : "double";
      accepted = "F16, BF16, F32 or F64";
      ok = floating;
    } else if constexpr (std::is_same_v<T, std::int64_t>) {
      wanted = "int64";
      accepted = "I64 or BOOL";
    }
    if (!ok) {
      throw value_error("SafeTensors::get: tensor '" + name + "' in " + source_ + " is " +
                        to_string(dt) + ", expected " + accepted + " (reading as " + wanted + ")");
    }

    Tensor<T> out(e.shape);
    const std::uint8_t* src = bytes_.data() + data_start_ + e.begin;
    T* dst = out.data();
    const Index n = out.size();
    for (Index i = 0; i < n; ++i) {
      const std::uint8_t* p = src + static_cast<std::size_t>(i) * dtype_size(dt);
      switch (dt) {
        case DType::F16:
          dst[i] = static_cast<T>(detail::half_to_float(detail::load_le<std::uint16_t>(p)));
          break;
        case DType::BF16:
          dst[i] = static_cast<T>(detail::bfloat16_to_float(detail::load_le<std::uint16_t>(p)));
          break;
        case DType::F32:
          dst[i] = static_cast<T>(detail::load_f32(p));
          break;
        case DType::F64:
          dst[i] = static_cast<T>(detail::load_f64(p));
          break;
        case DType::I64: {
          const auto v = static_cast<std::int64_t>(detail::load_le<std::uint64_t>(p));
          if constexpr (std::is_same_v<T, bool>) {
            if (v != 0 && v != 1) {
              throw value_error("SafeTensors::get: tensor '" + name + "' in " + source_ +
                                ": element " + std::to_string(i) + " is " + std::to_string(v) +
                                ", expected 0 or 1 (reading I64 as bool)");
            }
            dst[i] = v == 1;
          } else {
            dst[i] = static_cast<T>(v);
          }
          break;
        }
        case DType::BOOL:
          // Bytes were checked to be 0 or 1 by parse.
          dst[i] = static_cast<T>(*p != 0);
          break;
      }
    }
    return out;
  }

 private:
  SafeTensors() = default;

  const detail::SafeTensorsEntry& entry(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) {
      throw index_error("SafeTensors: no tensor named '" + name + "' in " + source_);
    }
    return it->second;
  }

  std::vector<std::uint8_t> bytes_;  // the whole file
  std::string source_;
  std::size_t data_start_ = 0;  // 8 + header length
  std::map<std::string, detail::SafeTensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace attend
