// SPDX-License-Identifier: MIT
// Writes tensors and string metadata to the safetensors format.
#pragma once

#include "attend/core/errors.hpp"
#include "attend/core/tensor.hpp"
#include "attend/io/safetensors_format.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

namespace attend {

/// Collects named tensors and metadata, then serializes them as one safetensors file.
///
/// Layout as the reference implementation writes it: the JSON header is padded with
/// spaces to a multiple of 8 bytes, and tensors are laid out by decreasing element size,
/// then by name, so every tensor is aligned to its element size within the file.
/// Writes F32, F64, I64 and BOOL (one byte 0/1); F16/BF16 are read-only in attend.
class SafeTensorsWriter {
 public:
  /// Adds `t` as F32 (F64, I64, BOOL for the other overloads) under `name`.
  /// \throws value_error when `name` was already added, is "__metadata__", or is not
  ///   valid UTF-8.
  void add(const std::string& name, const Tensor<float>& t) {
    add_encoded(name, DType::F32, t, [](float v, std::uint8_t* p) {
      std::uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      detail::store_le(bits, p);
    });
  }
  void add(const std::string& name, const Tensor<double>& t) {
    add_encoded(name, DType::F64, t, [](double v, std::uint8_t* p) {
      std::uint64_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      detail::store_le(bits, p);
    });
  }
  void add(const std::string& name, const Tensor<std::int64_t>& t) {
    add_encoded(name, DType::I64, t, [](std::int64_t v, std::uint8_t* p) {
      detail::store_le(static_cast<std::uint64_t>(v), p);
    });
  }
  void add(const std::string& name, const Tensor<bool>& t) {
    add_encoded(name, DType::BOOL, t,
                [](bool v, std::uint8_t* p) { *p = static_cast<std::uint8_t>(v ? 1 : 0); });
  }

  /// Sets `__metadata__[key] = value`, replacing an earlier value of the same key.
  /// \throws value_error when `key` or `value` is not valid UTF-8.
  void set_metadata(const std::string& key, const std::string& value) {
    require_utf8(key, "SafeTensorsWriter::set_metadata: key");
    require_utf8(value, "SafeTensorsWriter::set_metadata: value of '" + key + "'");
    metadata_[key] = value;
  }

  /// The whole file: length, padded header, data.
  std::vector<std::uint8_t> to_bytes() const {
    std::vector<const std::pair<const std::string, Pending>*> order;
    order.reserve(tensors_.size());
    for (const auto& kv : tensors_) order.push_back(&kv);
    std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
      return dtype_size(a->second.dtype) > dtype_size(b->second.dtype);
    });

    std::string header = "{";
    bool first = true;
    if (!metadata_.empty()) {
      header += "\"__metadata__\":{";
      for (const auto& kv : metadata_) {
        if (!first) header += ',';
        header += nlohmann::json(kv.first).dump() + ':' + nlohmann::json(kv.second).dump();
        first = false;
      }
      header += '}';
      first = false;
    }
    std::uint64_t offset = 0;
    for (const auto* kv : order) {
      const Pending& p = kv->second;
      if (!first) header += ',';
      first = false;
      header += nlohmann::json(kv->first).dump() + ":{\"dtype\":\"" + to_string(p.dtype) +
                "\",\"shape\":[";
      for (std::size_t k = 0; k < p.shape.size(); ++k) {
        header += (k == 0 ? "" : ",") + std::to_string(p.shape[k]);
      }
      const std::uint64_t end = offset + p.bytes.size();
      header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
      offset = end;
    }
    header += '}';
    header.append((8 - header.size() % 8) % 8, ' ');

    std::vector<std::uint8_t> out(8 + header.size());
    detail::store_le(static_cast<std::uint64_t>(header.size()), out.data());
    std::copy(header.begin(), header.end(), out.begin() + 8);
    out.reserve(out.size() + offset);
    for (const auto* kv : order) {
      out.insert(out.end(), kv->second.bytes.begin(), kv->second.bytes.end());
    }
    return out;
  }

  /// Writes `to_bytes()` to `path`, replacing the file.
  /// \throws error when the file cannot be opened or written (names the path and reason).
  void save(const std::string& path) const {
    const std::vector<std::uint8_t> bytes = to_bytes();
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "wb"),
                                                         &std::fclose);
    if (!file) fail_io("cannot open '" + path + "'");
    if (std::fwrite(bytes.data(), 1, bytes.size(), file.get()) != bytes.size()) {
      fail_io("cannot write '" + path + "'");
    }
    if (std::fclose(file.release()) != 0) fail_io("cannot write '" + path + "'");
  }

 private:
  struct Pending {
    DType dtype;
    Shape shape;
    std::vector<std::uint8_t> bytes;  // little-endian encoded elements
  };

  template <typename T, typename Encode>
  void add_encoded(const std::string& name, DType dtype, const Tensor<T>& t, Encode encode) {
    if (name == "__metadata__") {
      throw value_error("SafeTensorsWriter::add: name '__metadata__' is reserved for metadata");
    }
    require_utf8(name, "SafeTensorsWriter::add: name");
    if (tensors_.count(name) != 0) {
      throw value_error("SafeTensorsWriter::add: tensor '" + name + "' was already added");
    }
    Pending p{dtype, t.shape(), {}};
    const std::size_t size = dtype_size(dtype);
    p.bytes.resize(static_cast<std::size_t>(t.size()) * size);
    for (Index i = 0; i < t.size(); ++i) {
      encode(t.data()[i], p.bytes.data() + static_cast<std::size_t>(i) * size);
    }
    tensors_.emplace(name, std::move(p));
  }

  static void require_utf8(const std::string& s, const std::string& what) {
    try {
      (void)nlohmann::json(s).dump();
    } catch (const nlohmann::json::type_error&) {
      throw value_error(what + " is not valid UTF-8");
    }
  }

  [[noreturn]] static void fail_io(const std::string& what) {
    const int err = errno;
    throw error("SafeTensorsWriter::save: " + what + ": " + std::generic_category().message(err));
  }

  std::map<std::string, Pending> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace attend
