// SPDX-License-Identifier: MIT
// attend-conformance: runs every FIXTURES.md case under the given files or folders.
#include "runner.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::vector<std::string> collect(int argc, char** argv, std::vector<std::string>& missing) {
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path p(argv[i]);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(p, ec)) {
        if (e.is_regular_file(ec) && e.path().extension() == ".safetensors") {
          files.push_back(e.path().string());
        }
      }
    } else if (fs::exists(p, ec)) {
      files.push_back(p.string());
    } else {
      missing.push_back(p.string());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::uint8_t> read_all(const std::string& path, bool& ok) {
  std::ifstream in(path, std::ios::binary);
  ok = static_cast<bool>(in);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: attend-conformance <file.safetensors | folder>...\n"
                 "Runs every fixture case (FIXTURES.md) and prints PASS, FAIL or UNSUPPORTED.\n";
    return 2;
  }
  std::vector<std::string> missing;
  const std::vector<std::string> files = collect(argc, argv, missing);
  int passed = 0, failed = 0;
  for (const std::string& m : missing) {
    std::cout << "FAIL   " << m << "  no such file or folder\n";
    ++failed;
  }
  for (const std::string& f : files) {
    bool ok = false;
    std::vector<std::uint8_t> bytes = read_all(f, ok);
    if (!ok) {
      std::cout << "FAIL   " << f << "  cannot read the file\n";
      ++failed;
      continue;
    }
    using attend::conformance::CaseResult;
    const CaseResult r = attend::conformance::run_case_bytes(std::move(bytes), f);
    switch (r.status) {
      case CaseResult::Status::pass: {
        char err[32];
        std::snprintf(err, sizeof err, "%.3e", r.max_abs_err);
        std::cout << "PASS   " << f << "  max_abs_err=" << err << "\n";
        ++passed;
        break;
      }
      case CaseResult::Status::fail:
        std::cout << "FAIL   " << f << "  " << r.detail << "\n";
        ++failed;
        break;
      case CaseResult::Status::unsupported:
        std::cout << "UNSUPPORTED " << f << "  " << r.detail << "\n";
        ++failed;
        break;
    }
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 ? 0 : 1;
}
