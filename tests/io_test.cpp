// SPDX-License-Identifier: MIT
// Tests of the safetensors reader/writer and of state-dict parameter loading.
#include "attend/io/safetensors.hpp"
#include "attend/io/safetensors_writer.hpp"
#include "attend/io/state_dict.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

using attend::DType;
using attend::Index;
using attend::SafeTensors;
using attend::SafeTensorsWriter;
using attend::Shape;
using attend::Tensor;

namespace {

using Bytes = std::vector<std::uint8_t>;

/// A file: 8-byte little-endian length of `header`, `header`, then `data`.
Bytes file_bytes(const std::string& header, const Bytes& data = {}) {
  Bytes out(8);
  const std::uint64_t n = header.size();
  for (int k = 0; k < 8; ++k) out[k] = static_cast<std::uint8_t>(n >> (8 * k));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

/// 16-bit words as little-endian bytes.
Bytes le16(std::initializer_list<std::uint16_t> words) {
  Bytes out;
  for (const std::uint16_t w : words) {
    out.push_back(static_cast<std::uint8_t>(w & 0xFF));
    out.push_back(static_cast<std::uint8_t>(w >> 8));
  }
  return out;
}

/// Bit pattern of a float or double, to compare values bit for bit (NaN, -0.0 included).
template <typename S>
auto bits_of(S v) {
  using U = std::conditional_t<sizeof(S) == 4, std::uint32_t, std::uint64_t>;
  U u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

/// A fresh directory under the system temp dir, removed with its contents at scope exit.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("attend-io-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directory(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

SafeTensors parse(const Bytes& bytes) { return SafeTensors::parse(bytes); }

/// A valid one-tensor entry, for cases about the other parts of a header.
const char* const k_ok_entry = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";

}  // namespace

TEST_CASE("safetensors: dtype names and sizes", "[io]") {
  REQUIRE(attend::to_string(DType::F16) == "F16");
  REQUIRE(attend::to_string(DType::BF16) == "BF16");
  REQUIRE(attend::to_string(DType::F32) == "F32");
  REQUIRE(attend::to_string(DType::F64) == "F64");
  REQUIRE(attend::to_string(DType::I64) == "I64");
  REQUIRE(attend::to_string(DType::BOOL) == "BOOL");
  REQUIRE(attend::dtype_size(DType::F16) == 2);
  REQUIRE(attend::dtype_size(DType::BF16) == 2);
  REQUIRE(attend::dtype_size(DType::F32) == 4);
  REQUIRE(attend::dtype_size(DType::F64) == 8);
  REQUIRE(attend::dtype_size(DType::I64) == 8);
  REQUIRE(attend::dtype_size(DType::BOOL) == 1);
}

TEMPLATE_TEST_CASE("safetensors: round trip of every writable dtype is bit-identical", "[io]",
                   float, double) {
  using S = TestType;
  using lim = std::numeric_limits<S>;
  const DType float_dtype = sizeof(S) == 4 ? DType::F32 : DType::F64;
  const std::vector<S> values = {S(0),
                                 -S(0),
                                 S(1),
                                 S(-2.5),
                                 lim::denorm_min(),
                                 lim::min(),
                                 lim::max(),
                                 lim::lowest(),
                                 lim::infinity(),
                                 -lim::infinity(),
                                 lim::quiet_NaN(),
                                 lim::epsilon()};
  const Tensor<S> x({3, 4}, values);  // [3, 4]
  const Tensor<S> scalar(Shape{}, S(3.25));
  const Tensor<S> empty(Shape{0, 3});
  const Tensor<std::int64_t> ids(
      {5}, std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min(),
                                     std::numeric_limits<std::int64_t>::max(), -1, 0, 42});
  const Tensor<bool> mask({2, 3}, std::vector<bool>{true, false, false, true, true, false});

  SafeTensorsWriter w;
  w.add("x", x);
  w.add("scalar", scalar);
  w.add("empty", empty);
  w.add("ids", ids);
  w.add("mask", mask);

  auto check = [&](const SafeTensors& st) {
    REQUIRE(st.names() == std::vector<std::string>{"empty", "ids", "mask", "scalar", "x"});
    REQUIRE(st.dtype("x") == float_dtype);
    REQUIRE(st.dtype("ids") == DType::I64);
    REQUIRE(st.dtype("mask") == DType::BOOL);
    REQUIRE(st.shape("x") == Shape{3, 4});
    REQUIRE(st.shape("scalar").empty());
    REQUIRE(st.shape("empty") == Shape{0, 3});

    const Tensor<S> x2 = st.get<S>("x");
    REQUIRE(x2.shape() == x.shape());
    for (Index i = 0; i < x.size(); ++i) REQUIRE(bits_of(x2.data()[i]) == bits_of(x.data()[i]));
    REQUIRE(bits_of(st.get<S>("scalar").data()[0]) == bits_of(S(3.25)));
    REQUIRE(st.get<S>("empty").size() == 0);
    REQUIRE(st.get<S>("empty").shape() == Shape{0, 3});

    const Tensor<std::int64_t> ids2 = st.get<std::int64_t>("ids");
    REQUIRE(ids2.shape() == ids.shape());
    for (Index i = 0; i < ids.size(); ++i) REQUIRE(ids2.data()[i] == ids.data()[i]);
    const Tensor<bool> mask2 = st.get<bool>("mask");
    REQUIRE(mask2.shape() == mask.shape());
    for (Index i = 0; i < mask.size(); ++i) REQUIRE(mask2.data()[i] == mask.data()[i]);
    // BOOL read as int64 gives 0/1.
    const Tensor<std::int64_t> mask_ints = st.get<std::int64_t>("mask");
    REQUIRE(mask_ints.data()[0] == 1);
    REQUIRE(mask_ints.data()[1] == 0);
  };

  SECTION("in memory") { check(SafeTensors::parse(w.to_bytes())); }
  SECTION("through a file") {
    TempDir dir;
    const std::string path = dir.file("round.safetensors");
    w.save(path);
    const SafeTensors st = SafeTensors::load(path);
    REQUIRE(st.source() == path);
    check(st);
  }
}

TEMPLATE_TEST_CASE("safetensors: F32 and F64 convert to either float type", "[io]", float, double) {
  using S = TestType;
  SafeTensorsWriter w;
  w.add("f", Tensor<float>({2}, std::vector<float>{0.1f, -3.0f}));
  w.add("d", Tensor<double>({2}, std::vector<double>{0.1, -3.0}));
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  const Tensor<S> f = st.get<S>("f");
  const Tensor<S> d = st.get<S>("d");
  // Each value is converted once with static_cast, exactly as the source value would be.
  REQUIRE(f.data()[0] == static_cast<S>(0.1f));
  REQUIRE(f.data()[1] == S(-3));
  REQUIRE(d.data()[0] == static_cast<S>(0.1));
  REQUIRE(d.data()[1] == S(-3));
}

TEST_CASE("safetensors: writer lays out the header and data as the reference does", "[io]") {
  SafeTensorsWriter w;
  w.add("a", Tensor<float>({1}, std::vector<float>{1.0f}));
  w.add("m", Tensor<bool>({2}, std::vector<bool>{true, false}));
  w.add("z", Tensor<std::int64_t>(Shape{}, std::int64_t{-2}));
  w.set_metadata("k", "v");
  // Tensors by decreasing element size, then name: z (8 bytes), a (4), m (1); the header
  // is 188 bytes of JSON padded with 4 spaces to 192 = 24 * 8.
  const std::string header = R"({"__metadata__":{"k":"v"},)"
                             R"("z":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
                             R"("m":{"dtype":"BOOL","shape":[2],"data_offsets":[12,14]}}    )";
  REQUIRE(header.size() == 192);
  const Bytes data = {0xFE, 0xFF, 0xFF, 0xFF,
                      0xFF, 0xFF, 0xFF, 0xFF,  // -2 as little-endian two's complement
                      0x00, 0x00, 0x80, 0x3F,  // 1.0f = 0x3F800000
                      0x01, 0x00};             // true, false
  REQUIRE(w.to_bytes() == file_bytes(header, data));
}

TEMPLATE_TEST_CASE("safetensors: reads F16 from hand-built bytes", "[io]", float, double) {
  using S = TestType;
  const Bytes data = le16({
      0x3C00,  // sign 0, exponent 15 (bias 15), mantissa 0: 1.0
      0xC000,  // sign 1, exponent 16, mantissa 0: -2.0
      0x7C00,  // exponent 31, mantissa 0: +inf
      0xFC00,  // -inf
      0x0001,  // subnormal: 1 * 2^-24 = 5.9604644775390625e-08
      0x03FF,  // largest subnormal: 1023 * 2^-24 = 6.097555160522461e-05
      0x0400,  // smallest normal: 2^-14 = 6.103515625e-05
      0x7BFF,  // largest finite: (1 + 1023/1024) * 2^15 = 65504
      0x3555,  // exponent 13, mantissa 341: (1 + 341/1024) / 4 = 1365/4096 = 0.333251953125
      0x8000,  // -0.0
      0x7E00,  // exponent 31, mantissa != 0: NaN
      0x7C01,  // signalling NaN (quiet bit 0x0200 clear), mantissa 1
  });
  const SafeTensors st =
      parse(file_bytes(R"({"h":{"dtype":"F16","shape":[12],"data_offsets":[0,24]}})", data));
  REQUIRE(st.dtype("h") == DType::F16);
  const Tensor<S> h = st.get<S>("h");
  REQUIRE(h.shape() == Shape{12});
  REQUIRE(h(0) == S(1));
  REQUIRE(h(1) == S(-2));
  REQUIRE(h(2) == std::numeric_limits<S>::infinity());
  REQUIRE(h(3) == -std::numeric_limits<S>::infinity());
  REQUIRE(h(4) == S(5.9604644775390625e-08));
  REQUIRE(h(5) == S(6.097555160522461e-05));
  REQUIRE(h(6) == S(6.103515625e-05));
  REQUIRE(h(7) == S(65504));
  REQUIRE(h(8) == S(0.333251953125));
  REQUIRE(h(9) == S(0));
  REQUIRE(std::signbit(h(9)));
  REQUIRE(std::isnan(h(10)));
  REQUIRE(std::isnan(h(11)));
  if constexpr (std::is_same_v<S, float>) {
    // Payload shifted up by 23 - 10 = 13 bits and quieted, as F16C and PyTorch do:
    // 0x7F800000 | 0x00400000 (quiet) | 1 << 13 = 0x7FC02000; 0x7E00 -> 0x7FC00000.
    REQUIRE(bits_of(h(10)) == 0x7FC00000u);
    REQUIRE(bits_of(h(11)) == 0x7FC02000u);
  }
}

TEMPLATE_TEST_CASE("safetensors: reads BF16 from hand-built bytes", "[io]", float, double) {
  using S = TestType;
  const Bytes data = le16({
      0x3F80,  // the top half of float 1.0f = 0x3F800000
      0xC040,  // sign 1, exponent 128 (bias 127), mantissa 64/128: -(1.5 * 2) = -3.0
      0x4049,  // exponent 128, mantissa 73/128: (1 + 73/128) * 2 = 3.140625
      0x7F80,  // +inf
      0x0001,  // float bits 0x00010000: subnormal 2^16 * 2^-149 = 2^-133
      0x7FC0,  // NaN
  });
  const SafeTensors st =
      parse(file_bytes(R"({"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}})", data));
  const Tensor<S> b = st.get<S>("b");
  REQUIRE(b.shape() == Shape{2, 3});
  REQUIRE(b(0, 0) == S(1));
  REQUIRE(b(0, 1) == S(-3));
  REQUIRE(b(0, 2) == S(3.140625));
  REQUIRE(b(1, 0) == std::numeric_limits<S>::infinity());
  REQUIRE(b(1, 1) == static_cast<S>(std::ldexp(1.0, -133)));
  REQUIRE(std::isnan(b(1, 2)));
}

TEST_CASE("safetensors: reads unaligned data byte-wise", "[io]") {
  // Header padded to 37 bytes, so the data buffer starts at file offset 45 (odd); the
  // BOOL first makes every later tensor start at an odd offset within the buffer too.
  std::string header = R"({"m":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]},)"
                       R"("d":{"dtype":"F64","shape":[1],"data_offsets":[1,9]},)"
                       R"("i":{"dtype":"I64","shape":[1],"data_offsets":[9,17]},)"
                       R"("f":{"dtype":"F32","shape":[1],"data_offsets":[17,21]},)"
                       R"("h":{"dtype":"F16","shape":[1],"data_offsets":[21,23]}})";
  header.append(header.size() % 2 == 0 ? 1 : 0, ' ');
  REQUIRE(header.size() % 2 == 1);
  const Bytes data = {0x01,                                            // true
                      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xF8, 0xBF,  // -1.5 = 0xBFF8000000000000
                      0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x00,  // 0x0001020304050607
                      0x00, 0x00, 0x20, 0x41,                          // 10.0f = 0x41200000
                      0x00, 0xC4};                                     // F16 0xC400 = -4.0
  const SafeTensors st = parse(file_bytes(header, data));
  REQUIRE(st.get<bool>("m")(0));
  REQUIRE(st.get<double>("d")(0) == -1.5);
  REQUIRE(st.get<std::int64_t>("i")(0) == std::int64_t{0x0001020304050607});
  REQUIRE(st.get<float>("f")(0) == 10.0f);
  REQUIRE(st.get<float>("h")(0) == -4.0f);
}

TEST_CASE("safetensors: metadata round trip", "[io]") {
  SafeTensorsWriter w;
  w.set_metadata("module", "multihead_attention");
  w.set_metadata("options", R"({"embed_dim": 8, "num_heads": 2})");
  w.set_metadata("description", "quotes \" backslash \\ newline \n and UTF-8 \xC3\xA9");
  w.set_metadata("empty", "");
  w.set_metadata("rtol", "1e-06");
  w.set_metadata("rtol", "1e-05");  // replaces the earlier value
  w.add("x", Tensor<float>({1}, 2.0f));
  const SafeTensors st = SafeTensors::parse(w.to_bytes());
  const std::map<std::string, std::string> want = {
      {"module", "multihead_attention"},
      {"options", R"({"embed_dim": 8, "num_heads": 2})"},
      {"description", "quotes \" backslash \\ newline \n and UTF-8 \xC3\xA9"},
      {"empty", ""},
      {"rtol", "1e-05"}};
  REQUIRE(st.metadata() == want);
  REQUIRE(st.names() == std::vector<std::string>{"x"});

  SECTION("a file without __metadata__ has empty metadata") {
    SafeTensorsWriter plain;
    REQUIRE(SafeTensors::parse(plain.to_bytes()).metadata().empty());
    REQUIRE(plain.to_bytes() == file_bytes("{}      "));  // "{}" padded to 8 bytes
  }
}

TEST_CASE("safetensors: lookup by name", "[io]") {
  SafeTensorsWriter w;
  w.add("b", Tensor<float>({1}, 1.0f));
  w.add("a.weight", Tensor<float>({1}, 1.0f));
  const SafeTensors st = SafeTensors::parse(w.to_bytes(), "model.safetensors");
  REQUIRE(st.contains("a.weight"));
  REQUIRE_FALSE(st.contains("c"));
  REQUIRE(st.names() == std::vector<std::string>{"a.weight", "b"});
  const std::string msg = "SafeTensors: no tensor named 'c' in model.safetensors";
  REQUIRE_THROWS_AS(st.dtype("c"), attend::index_error);
  REQUIRE_THROWS_WITH(st.dtype("c"), msg);
  REQUIRE_THROWS_AS(st.shape("c"), attend::index_error);
  REQUIRE_THROWS_WITH(st.shape("c"), msg);
  REQUIRE_THROWS_AS(st.get<float>("c"), attend::index_error);
  REQUIRE_THROWS_WITH(st.get<float>("c"), msg);
}

TEST_CASE("safetensors: get rejects incompatible dtypes", "[io]") {
  SafeTensorsWriter w;
  w.add("ids", Tensor<std::int64_t>({3}, std::vector<std::int64_t>{0, 1, 2}));
  w.add("bits", Tensor<std::int64_t>({2}, std::vector<std::int64_t>{1, 0}));
  w.add("x", Tensor<float>({1}, 1.0f));
  w.add("m", Tensor<bool>({1}, true));
  const SafeTensors st = SafeTensors::parse(w.to_bytes());

  REQUIRE_THROWS_AS(st.get<float>("ids"), attend::value_error);
  REQUIRE_THROWS_WITH(st.get<float>("ids"),
                      "SafeTensors::get: tensor 'ids' in <buffer> is I64, expected F16, BF16, "
                      "F32 or F64 (reading as float)");
  REQUIRE_THROWS_WITH(st.get<double>("m"),
                      "SafeTensors::get: tensor 'm' in <buffer> is BOOL, expected F16, BF16, "
                      "F32 or F64 (reading as double)");
  REQUIRE_THROWS_AS(st.get<std::int64_t>("x"), attend::value_error);
  REQUIRE_THROWS_WITH(st.get<std::int64_t>("x"),
                      "SafeTensors::get: tensor 'x' in <buffer> is F32, expected I64 or BOOL "
                      "(reading as int64)");
  REQUIRE_THROWS_AS(st.get<bool>("x"), attend::value_error);
  REQUIRE_THROWS_WITH(st.get<bool>("x"),
                      "SafeTensors::get: tensor 'x' in <buffer> is F32, expected BOOL or I64 "
                      "(reading as bool)");

  // I64 holding only 0/1 reads as bool (docs/fixtures.md: masks may come as I64 0/1).
  const Tensor<bool> bits = st.get<bool>("bits");
  REQUIRE(bits(0));
  REQUIRE_FALSE(bits(1));
  REQUIRE_THROWS_AS(st.get<bool>("ids"), attend::value_error);
  REQUIRE_THROWS_WITH(st.get<bool>("ids"),
                      "SafeTensors::get: tensor 'ids' in <buffer>: element 2 is 2, expected 0 "
                      "or 1 (reading I64 as bool)");
}

TEST_CASE("safetensors: writer rejects bad names and metadata", "[io]") {
  SafeTensorsWriter w;
  w.add("x", Tensor<float>({1}, 1.0f));
  REQUIRE_THROWS_AS(w.add("x", Tensor<double>({1}, 1.0)), attend::value_error);
  REQUIRE_THROWS_WITH(w.add("x", Tensor<double>({1}, 1.0)),
                      "SafeTensorsWriter::add: tensor 'x' was already added");
  REQUIRE_THROWS_AS(w.add("__metadata__", Tensor<float>({1}, 1.0f)), attend::value_error);
  REQUIRE_THROWS_WITH(w.add("__metadata__", Tensor<float>({1}, 1.0f)),
                      "SafeTensorsWriter::add: name '__metadata__' is reserved for metadata");
  REQUIRE_THROWS_AS(w.add("bad\xFF", Tensor<float>({1}, 1.0f)), attend::value_error);
  REQUIRE_THROWS_WITH(w.add("bad\xFF", Tensor<float>({1}, 1.0f)),
                      "SafeTensorsWriter::add: name is not valid UTF-8");
  REQUIRE_THROWS_AS(w.set_metadata("k", "\xC3"), attend::value_error);
  REQUIRE_THROWS_WITH(w.set_metadata("k", "\xC3"),
                      "SafeTensorsWriter::set_metadata: value of 'k' is not valid UTF-8");
  REQUIRE_THROWS_WITH(w.set_metadata("\xC3", "v"),
                      "SafeTensorsWriter::set_metadata: key is not valid UTF-8");
  // The failed calls left the writer as it was.
  REQUIRE(SafeTensors::parse(w.to_bytes()).names() == std::vector<std::string>{"x"});
  REQUIRE(SafeTensors::parse(w.to_bytes()).metadata().empty());
}

TEST_CASE("safetensors: file I/O errors name the path", "[io]") {
  TempDir dir;
  const std::string missing = dir.file("missing.safetensors");
  REQUIRE_THROWS_AS(SafeTensors::load(missing), attend::error);
  REQUIRE_THROWS_WITH(SafeTensors::load(missing), "SafeTensors::load: cannot open '" + missing +
                                                      "': No such file or directory");
  const std::string as_dir = dir.path.string();
  REQUIRE_THROWS_AS(SafeTensors::load(as_dir), attend::error);
  REQUIRE_THROWS_WITH(SafeTensors::load(as_dir),
                      "SafeTensors::load: cannot read '" + as_dir + "': Is a directory");

  const std::string nowhere = dir.file("no/such/dir.safetensors");
  SafeTensorsWriter w;
  REQUIRE_THROWS_AS(w.save(nowhere), attend::error);
  REQUIRE_THROWS_WITH(w.save(nowhere), "SafeTensorsWriter::save: cannot open '" + nowhere +
                                           "': No such file or directory");

  // A malformed file is a format_error naming the path.
  const std::string short_file = dir.file("short.safetensors");
  std::ofstream(short_file, std::ios::binary) << "abc";
  REQUIRE_THROWS_AS(SafeTensors::load(short_file), attend::format_error);
  REQUIRE_THROWS_WITH(
      SafeTensors::load(short_file),
      "SafeTensors: " + short_file +
          ": truncated file or not a safetensors file: file is 3 bytes, expected at least 8 (the "
          "header length)");
}

// ---------------------------------------------------------------------------------------
// Malformed files: each is a format_error naming the source (and the tensor), never a
// crash or an out-of-bounds read.

namespace {

void require_format_error(const Bytes& bytes, const std::string& message) {
  REQUIRE_THROWS_AS(SafeTensors::parse(bytes), attend::format_error);
  REQUIRE_THROWS_WITH(SafeTensors::parse(bytes), message);
}

const Bytes k_zeros16(16, 0);

}  // namespace

TEST_CASE("safetensors: rejects a file shorter than 8 bytes", "[io]") {
  require_format_error(Bytes{1, 0, 0, 0, 0},
                       "SafeTensors: <buffer>: truncated file or not a safetensors file: file is "
                       "5 bytes, expected at least 8 (the header length)");
  require_format_error(Bytes{},
                       "SafeTensors: <buffer>: empty file or not a safetensors file: file is 0 "
                       "bytes, expected at least 8 (the header length)");
}

TEST_CASE("safetensors: rejects a header length past the end of the file", "[io]") {
  Bytes bytes = file_bytes("{}", Bytes(8, 0));  // 18 bytes: length, "{}", 8 data bytes
  bytes[0] = 100;                               // claims 100 header bytes, 10 follow
  require_format_error(bytes,
                       "SafeTensors: <buffer>: truncated file: header length is 100, expected at "
                       "most 10 (the bytes after the length field)");
  // The same length before a header that does not start with '{': something else.
  bytes[8] = 'x';
  require_format_error(bytes,
                       "SafeTensors: <buffer>: not a safetensors file: header length is 100, "
                       "expected at most 10 (the bytes after the length field)");
  // A file of the 8 length bytes alone (nothing follows): cut short.
  require_format_error(Bytes{4, 0, 0, 0, 0, 0, 0, 0},
                       "SafeTensors: <buffer>: truncated file: header length is 4, expected at "
                       "most 0 (the bytes after the length field)");
}

TEST_CASE("safetensors: rejects an absurd header length before allocating", "[io]") {
  require_format_error(Bytes(8, 0xFF),
                       "SafeTensors: <buffer>: not a safetensors file: it begins with "
                       "\"\\xFF\\xFF\\xFF\\xFF\\xFF\\xFF\\xFF\\xFF\", read as a header length of "
                       "18446744073709551615, expected at most 100000000");
  // 100000001 = 0x05F5E101: just over the reference implementation's limit.
  require_format_error(Bytes{0x01, 0xE1, 0xF5, 0x05, 0, 0, 0, 0},
                       "SafeTensors: <buffer>: not a safetensors file: it begins with "
                       "\"\\x01\\xE1\\xF5\\x05\\x00\\x00\\x00\\x00\", read as a header length of "
                       "100000001, expected at most 100000000");
  // Text, and a zip archive (what torch.save writes): their first 8 bytes as a length.
  // "hello, w" little-endian is 0x77202C6F6C6C6568 = 8583909746840200552.
  const std::string text = "hello, world\n";
  require_format_error(Bytes(text.begin(), text.end()),
                       "SafeTensors: <buffer>: not a safetensors file: it begins with \"hello, "
                       "w\", read as a header length of 8583909746840200552, expected at most "
                       "100000000");
  // "PK\3\4" then version 20 (0x14) and flags 0: 0x0000001404034B50 = 85966670672.
  require_format_error(Bytes{'P', 'K', 3, 4, 0x14, 0, 0, 0, 8, 0},
                       "SafeTensors: <buffer>: not a safetensors file: it begins with "
                       "\"PK\\x03\\x04\\x14\\x00\\x00\\x00\", read as a header length of "
                       "85966670672, expected at most 100000000");
}

TEST_CASE("safetensors: rejects a header that is not valid JSON, with its offset", "[io]") {
  // Header byte 5 is the '1' where ':' was expected; file offset 8 + 5 = 13.
  require_format_error(file_bytes(R"({"a" 1})"),
                       "SafeTensors: <buffer>: header is not valid JSON near file offset 13");
  // Trailing garbage: 'x' is header byte 3, file offset 11.
  require_format_error(file_bytes("{} x"),
                       "SafeTensors: <buffer>: header is not valid JSON near file offset 11");
  // Truncated: the end of input, just past header byte 4, is file offset 8 + 5 = 13.
  require_format_error(file_bytes(R"({"a":)"),
                       "SafeTensors: <buffer>: header is not valid JSON near file offset 13");
  // An empty header: the end of input at file offset 8.
  require_format_error(file_bytes(""),
                       "SafeTensors: <buffer>: header is not valid JSON near file offset 8");
  // Invalid UTF-8 (0xFF) in a key, at header byte 2.
  require_format_error(file_bytes("{\"\xFF\":1}"),
                       "SafeTensors: <buffer>: header is not valid JSON near file offset 10");
  // A number too large for a double: "1e999" spans header bytes 5-9 (file offsets 13-17),
  // reported at its last byte.
  require_format_error(file_bytes(R"({"a":1e999})"),
                       "SafeTensors: <buffer>: header has a JSON number out of range near "
                       "file offset 17");
}

TEST_CASE("safetensors: rejects a header that is not a JSON object", "[io]") {
  require_format_error(file_bytes("[1, 2]"),
                       "SafeTensors: <buffer>: header is a JSON array, expected an object");
  require_format_error(file_bytes(R"("a")"),
                       "SafeTensors: <buffer>: header is a JSON string, expected an object");
  require_format_error(file_bytes("null"),
                       "SafeTensors: <buffer>: header is a JSON null, expected an object");
}

TEST_CASE("safetensors: rejects JSON nested deeper than a header can be", "[io]") {
  require_format_error(file_bytes(R"({"a":{"shape":[[1]]}})"),
                       "SafeTensors: <buffer>: header nests JSON containers deeper than 3 "
                       "levels");
  // A hostile "[[[[...": rejected at the 4th bracket, without building the rest.
  require_format_error(file_bytes(std::string(1000000, '[')),
                       "SafeTensors: <buffer>: header nests JSON containers deeper than 3 "
                       "levels");
}

TEST_CASE("safetensors: rejects duplicate keys", "[io]") {
  require_format_error(
      file_bytes(std::string("{") + k_ok_entry + "," + k_ok_entry + "}", Bytes(4, 0)),
      "SafeTensors: <buffer>: header has key 'a' twice");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[1],"dtype":"F32","data_offsets":[0,4]}})",
                 Bytes(4, 0)),
      "SafeTensors: <buffer>: header entry 'a' has key 'dtype' twice");
}

TEST_CASE("safetensors: rejects an entry that is not an object", "[io]") {
  require_format_error(file_bytes(R"({"a":3})"),
                       "SafeTensors: <buffer>: tensor 'a' is a JSON number, expected an object");
}

TEST_CASE("safetensors: rejects an entry missing dtype, shape or data_offsets", "[io]") {
  require_format_error(file_bytes(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", Bytes(4, 0)),
                       "SafeTensors: <buffer>: tensor 'a' has no 'dtype'");
  require_format_error(file_bytes(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", Bytes(4, 0)),
                       "SafeTensors: <buffer>: tensor 'a' has no 'shape'");
  require_format_error(file_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", Bytes(4, 0)),
                       "SafeTensors: <buffer>: tensor 'a' has no 'data_offsets'");
}

TEST_CASE("safetensors: rejects entry fields of the wrong JSON type", "[io]") {
  require_format_error(
      file_bytes(R"({"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': dtype is a JSON number, expected a string");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': shape is a JSON string, expected an array");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":{"begin":0}}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': data_offsets is a JSON object, expected an array");
}

TEST_CASE("safetensors: rejects an unknown dtype", "[io]") {
  require_format_error(
      file_bytes(R"({"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': dtype is 'I32', expected one of F16, BF16, F32, "
      "F64, I64, BOOL");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': dtype is 'f32', expected one of F16, BF16, F32, "
      "F64, I64, BOOL");
}

TEST_CASE("safetensors: rejects negative, non-integer or huge shape values", "[io]") {
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[2,-3],"data_offsets":[0,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': shape[1] is -3, expected a non-negative integer");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': shape[0] is 2.5, expected a non-negative integer");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': shape[0] is a JSON string, expected a "
      "non-negative integer");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]}})",
                 Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': shape[0] is 18446744073709551615, expected at most "
      "9223372036854775807");
}

TEST_CASE("safetensors: rejects data_offsets that are not [begin, end] with begin <= end", "[io]") {
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': data_offsets has 1 values, expected 2 ([begin, "
      "end])");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", Bytes(8, 0)),
      "SafeTensors: <buffer>: tensor 'a': data_offsets has 3 values, expected 2 ([begin, "
      "end])");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-1,4]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': data_offsets[0] is -1, expected a non-negative "
      "integer");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}})", Bytes(4, 0)),
      "SafeTensors: <buffer>: tensor 'a': data_offsets[1] is a JSON string, expected a "
      "non-negative integer");
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", k_zeros16),
      "SafeTensors: <buffer>: tensor 'a': data_offsets are [8, 4], expected begin <= end");
}

TEST_CASE("safetensors: rejects offsets outside the data buffer", "[io]") {
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})", k_zeros16),
      "SafeTensors: <buffer>: truncated file: tensor 'a': data_offsets are [0, 64], expected "
      "end <= 16 (the data buffer's size)");
  // An end near 2^64 (4 bytes, as [1] of F32 needs): compared without overflow.
  require_format_error(file_bytes(R"({"a":{"dtype":"F32","shape":[1],)"
                                  R"("data_offsets":[18446744073709551611,18446744073709551615]}})",
                                  k_zeros16),
                       "SafeTensors: <buffer>: truncated file: tensor 'a': data_offsets are "
                       "[18446744073709551611, 18446744073709551615], expected end <= 16 (the "
                       "data buffer's size)");
}

TEST_CASE("safetensors: rejects overlapping tensors", "[io]") {
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                 Bytes(24, 0)),
      "SafeTensors: <buffer>: tensor 'b': data_offsets are [8, 24], overlapping tensor 'a' at "
      "[0, 16]");
  // Containment, found past an earlier disjoint neighbour: z holds [0, 16], y sits inside.
  require_format_error(
      file_bytes(R"({"z":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                 R"("y":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                 k_zeros16),
      "SafeTensors: <buffer>: tensor 'x': data_offsets are [4, 8], overlapping tensor 'z' at "
      "[0, 16]");
  // Adjacent ranges, an empty tensor inside another's range and a gap are all fine.
  const SafeTensors ok =
      parse(file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                       R"("e":{"dtype":"F32","shape":[0,5],"data_offsets":[2,2]},)"
                       R"("g":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                       k_zeros16));
  REQUIRE(ok.names() == std::vector<std::string>{"a", "b", "e", "g"});
  REQUIRE(ok.get<float>("e").shape() == Shape{0, 5});
}

TEST_CASE("safetensors: rejects a byte count other than prod(shape) * dtype size", "[io]") {
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", k_zeros16),
      "SafeTensors: <buffer>: tensor 'a': data_offsets are [0, 12] (12 bytes), expected 16 "
      "bytes (shape [2, 2] of F32)");
  // A scalar (shape []) holds one element.
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F64","shape":[],"data_offsets":[0,4]}})", k_zeros16),
      "SafeTensors: <buffer>: tensor 'a': data_offsets are [0, 4] (4 bytes), expected 8 bytes "
      "(shape [] of F64)");
  // 2^32 * 2^32 = 2^64 elements: the product overflows before the final 0 is reached.
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})"),
      "SafeTensors: <buffer>: tensor 'a': shape [4294967296, 4294967296, 0] overflows the "
      "element count");
  // 2^62 elements fit an Index, 2^62 * 4 bytes do not; a wrapped product would be 0 bytes.
  require_format_error(
      file_bytes(R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
      "SafeTensors: <buffer>: tensor 'a': shape [4611686018427387904] of F32 overflows the "
      "byte count");
}

TEST_CASE("safetensors: rejects __metadata__ that is not an object of strings", "[io]") {
  require_format_error(
      file_bytes(std::string(R"({"__metadata__":["k","v"],)") + k_ok_entry + "}", Bytes(4, 0)),
      "SafeTensors: <buffer>: __metadata__ is a JSON array, expected an object");
  require_format_error(
      file_bytes(std::string(R"({"__metadata__":{"k":"v","n":3},)") + k_ok_entry + "}",
                 Bytes(4, 0)),
      "SafeTensors: <buffer>: __metadata__ 'n' is a JSON number, expected a "
      "string");
}

TEST_CASE("safetensors: rejects BOOL bytes other than 0 and 1", "[io]") {
  require_format_error(
      file_bytes(R"({"m":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})", Bytes{1, 0, 2, 1}),
      "SafeTensors: <buffer>: tensor 'm': element 2 is 2, expected 0 or 1 (BOOL)");
}

TEST_CASE("safetensors: format errors name the source", "[io]") {
  const Bytes bytes = file_bytes(R"({"a":3})");
  REQUIRE_THROWS_AS(SafeTensors::parse(bytes, "weights/model.safetensors"), attend::format_error);
  REQUIRE_THROWS_WITH(SafeTensors::parse(bytes, "weights/model.safetensors"),
                      "SafeTensors: weights/model.safetensors: tensor 'a' is a JSON number, "
                      "expected an object");
}

TEST_CASE("safetensors: survives every truncation of a valid file", "[io]") {
  SafeTensorsWriter w;
  w.add("a", Tensor<float>({2, 3}, 1.5f));
  w.add("m", Tensor<bool>({2}, true));
  w.set_metadata("k", "v");
  const Bytes full = w.to_bytes();
  // Every proper prefix is malformed (too short, header cut, or data cut), never a crash.
  for (std::size_t n = 0; n < full.size(); ++n) {
    INFO("prefix of " << n << " bytes");
    REQUIRE_THROWS_AS(SafeTensors::parse(Bytes(full.begin(), full.begin() + n)),
                      attend::format_error);
  }
  REQUIRE(SafeTensors::parse(full).get<float>("a")(1, 2) == 1.5f);
}

TEST_CASE("safetensors: survives every single-byte corruption of a valid file", "[io]") {
  SafeTensorsWriter w;
  w.add("a", Tensor<float>({2, 3}, 1.5f));
  w.add("i", Tensor<std::int64_t>({2}, std::int64_t{7}));
  w.add("m", Tensor<bool>({2}, true));
  w.set_metadata("k", "v");
  const Bytes full = w.to_bytes();
  // Each byte replaced by values that break JSON syntax, digits, quotes and lengths: the
  // parse either succeeds (e.g. a changed data byte) or throws format_error, and whatever
  // it accepts can be read in full.
  for (std::size_t pos = 0; pos < full.size(); ++pos) {
    for (const std::uint8_t v : {0x00, 0x01, 0x02, 0x22, 0x2C, 0x39, 0x5B, 0x7B, 0x7D, 0xFF}) {
      Bytes bytes = full;
      bytes[pos] = v;
      INFO("byte " << pos << " set to " << int(v));
      try {
        const SafeTensors st = SafeTensors::parse(bytes);
        for (const std::string& name : st.names()) {
          if (st.dtype(name) == DType::I64 || st.dtype(name) == DType::BOOL) {
            REQUIRE(st.get<std::int64_t>(name).shape() == st.shape(name));
          } else {
            REQUIRE(st.get<double>(name).shape() == st.shape(name));
          }
        }
      } catch (const attend::format_error&) {
        // expected for most corruptions of the length or the header
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// state_dict.hpp

TEMPLATE_TEST_CASE("state_dict: load_matrix and load_vector", "[io]", float, double) {
  using S = TestType;
  SafeTensorsWriter w;
  // in_proj_weight [3, 2] row-major: row r holds (10r + 1, 10r + 2).
  w.add("in_proj_weight", Tensor<float>({3, 2}, std::vector<float>{1, 2, 11, 12, 21, 22}));
  w.add("in_proj_bias", Tensor<double>({3}, std::vector<double>{0.5, -0.5, 0.25}));
  w.add("bad.weight", Tensor<float>({2, 2}, std::vector<float>{1, 2, std::nanf(""), 4}));
  w.add("bad.bias", Tensor<double>({3}, std::vector<double>{0, 1, -HUGE_VAL}));
  w.add("big", Tensor<double>({1, 1}, 1e300));  // finite in F64, inf as float
  w.add("ids", Tensor<std::int64_t>({2, 2}, std::int64_t{1}));
  const SafeTensors st = SafeTensors::parse(w.to_bytes());

  const attend::Matrix<S> W = attend::load_matrix<S>(st, "in_proj_weight", 3, 2);
  attend::Matrix<S> want_W(3, 2);
  want_W << 1, 2, 11, 12, 21, 22;
  REQUIRE(W == want_W);
  const attend::Vector<S> b = attend::load_vector<S>(st, "in_proj_bias", 3);
  REQUIRE(b == attend::Vector<S>((attend::Vector<S>(3) << 0.5, -0.5, 0.25).finished()));

  REQUIRE_THROWS_AS(attend::load_matrix<S>(st, "out_proj.weight", 2, 2), attend::index_error);
  REQUIRE_THROWS_WITH(attend::load_matrix<S>(st, "out_proj.weight", 2, 2),
                      "load_matrix: no parameter named 'out_proj.weight' in <buffer>");
  REQUIRE_THROWS_AS(attend::load_vector<S>(st, "out_proj.bias", 2), attend::index_error);
  REQUIRE_THROWS_WITH(attend::load_vector<S>(st, "out_proj.bias", 2),
                      "load_vector: no parameter named 'out_proj.bias' in <buffer>");

  REQUIRE_THROWS_AS(attend::load_matrix<S>(st, "in_proj_weight", 12, 2), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::load_matrix<S>(st, "in_proj_weight", 12, 2),
                      "load_matrix: \'in_proj_weight\' in <buffer> is [3, 2], expected [12, 2]");
  REQUIRE_THROWS_WITH(attend::load_matrix<S>(st, "in_proj_bias", 3, 1),
                      "load_matrix: \'in_proj_bias\' in <buffer> is [3], expected [3, 1]");
  REQUIRE_THROWS_AS(attend::load_vector<S>(st, "in_proj_weight", 6), attend::shape_error);
  REQUIRE_THROWS_WITH(attend::load_vector<S>(st, "in_proj_weight", 6),
                      "load_vector: \'in_proj_weight\' in <buffer> is [3, 2], expected [6]");

  REQUIRE_THROWS_AS(attend::load_matrix<S>(st, "bad.weight", 2, 2), attend::value_error);
  REQUIRE_THROWS_WITH(attend::load_matrix<S>(st, "bad.weight", 2, 2),
                      "load_matrix: \'bad.weight\' in <buffer> holds nan at [1, 0], expected finite values");
  REQUIRE_THROWS_AS(attend::load_vector<S>(st, "bad.bias", 3), attend::value_error);
  REQUIRE_THROWS_WITH(attend::load_vector<S>(st, "bad.bias", 3),
                      "load_vector: \'bad.bias\' in <buffer> holds -inf at [2], expected finite values");
  REQUIRE_THROWS_AS(attend::load_matrix<S>(st, "ids", 2, 2), attend::value_error);
  REQUIRE_THROWS_WITH(attend::load_matrix<S>(st, "ids", 2, 2),
                      "load_matrix: \'ids\' in <buffer> is I64, expected F16, BF16, F32 or F64");

  if constexpr (std::is_same_v<S, float>) {
    REQUIRE_THROWS_AS(attend::load_matrix<S>(st, "big", 1, 1), attend::value_error);
    REQUIRE_THROWS_WITH(attend::load_matrix<S>(st, "big", 1, 1),
                        "load_matrix: \'big\' in <buffer> holds inf at [0, 0], expected finite values");
  } else {
    REQUIRE(attend::load_matrix<S>(st, "big", 1, 1)(0, 0) == 1e300);
  }
}

TEST_CASE("state_dict: load_matrix reads F16 parameters", "[io]") {
  // F16 words 0x3C00 = 1.0, 0xC000 = -2.0, 0x3800 = 0.5, 0x4200 = 3.0 as a [2, 2] matrix.
  const SafeTensors st =
      parse(file_bytes(R"({"w":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}})",
                       le16({0x3C00, 0xC000, 0x3800, 0x4200})));
  attend::Matrix<float> want(2, 2);
  want << 1.0f, -2.0f, 0.5f, 3.0f;
  REQUIRE(attend::load_matrix<float>(st, "w", 2, 2) == want);
}
