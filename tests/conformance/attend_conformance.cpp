// SPDX-License-Identifier: MIT
// attend-conformance: runs every docs/fixtures.md case under the given files or folders.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "runner.hpp"

namespace fs = std::filesystem;

namespace {

// The case files under the arguments, sorted; `problems` gets "<path>  <reason>" for an
// argument that does not exist or a folder that cannot be walked to the end.
std::vector<std::string> collect(int argc, char** argv, std::vector<std::string>& problems) {
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path p(argv[i]);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      // increment(ec), not a range-for: its operator++ throws on an unreadable entry.
      fs::recursive_directory_iterator it(p, ec), end;
      for (; !ec && it != end; it.increment(ec)) {
        std::error_code type_ec;
        if (it->is_regular_file(type_ec) && it->path().extension() == ".safetensors") {
          files.push_back(it->path().string());
        }
      }
      if (ec) problems.push_back(p.string() + "  cannot read the folder: " + ec.message());
    } else if (fs::exists(p, ec)) {
      files.push_back(p.string());
    } else {
      problems.push_back(p.string() + "  no such file or folder");
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

// `s` on one line: control characters (a tensor name may hold a newline) become spaces.
std::string one_line(std::string s) {
  for (char& ch : s) {
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = ' ';
  }
  return s;
}

std::vector<std::uint8_t> read_all(const std::string& path, bool& ok) {
  std::ifstream in(path, std::ios::binary);
  ok = static_cast<bool>(in);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: attend-conformance [--] <file.safetensors | folder>...\n"
      "       attend-conformance -h | --help\n"
      "Runs every fixture case (docs/fixtures.md) under the given files and folders and\n"
      "prints PASS, FAIL or UNSUPPORTED per case, then 'N passed, N failed'.\n"
      "Exit status: 0 when every case passed, 1 otherwise, 2 on a usage error.\n";
  // Options first; after "--" every argument is a path (a file may be named "--help").
  std::vector<char*> paths{argv[0]};
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (!options_done && arg == "--") {
      options_done = true;
    } else if (!options_done && (arg == "-h" || arg == "--help")) {
      std::cout << usage;
      return 0;
    } else if (!options_done && arg.size() > 1 && arg[0] == '-') {
      std::cerr << "attend-conformance: unknown option '" << arg << "'\n" << usage;
      return 2;
    } else {
      paths.push_back(argv[i]);
    }
  }
  if (paths.size() < 2) {
    std::cerr << usage;
    return 2;
  }
  std::vector<std::string> problems;
  const std::vector<std::string> files =
      collect(static_cast<int>(paths.size()), paths.data(), problems);
  int passed = 0, failed = 0;
  for (const std::string& m : problems) {
    std::cout << "FAIL   " << one_line(m) << "\n";
    ++failed;
  }
  for (const std::string& f : files) {
    bool ok = false;
    std::vector<std::uint8_t> bytes = read_all(f, ok);
    if (!ok) {
      std::cout << "FAIL   " << one_line(f) << "  cannot read the file\n";
      ++failed;
      continue;
    }
    using attend::conformance::CaseResult;
    const CaseResult r = attend::conformance::run_case_bytes(std::move(bytes), f);
    switch (r.status) {
      case CaseResult::Status::pass: {
        char err[32];
        std::snprintf(err, sizeof err, "%.3e", r.max_abs_err);
        std::cout << "PASS   " << one_line(f) << "  max_abs_err=" << err << "\n";
        ++passed;
        break;
      }
      case CaseResult::Status::fail:
        std::cout << "FAIL   " << one_line(f) << "  " << one_line(r.detail) << "\n";
        ++failed;
        break;
      case CaseResult::Status::unsupported:
        std::cout << "UNSUPPORTED " << one_line(f) << "  " << one_line(r.detail) << "\n";
        ++failed;
        break;
    }
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  if (passed + failed == 0) {  // an empty or misspelt folder must not look like success
    std::cerr << "attend-conformance: no .safetensors case found\n";
    return 1;
  }
  return failed == 0 ? 0 : 1;
}
