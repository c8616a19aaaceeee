// SPDX-License-Identifier: MIT
// The library's version, for code that must tell releases apart at compile time.
#pragma once

/// \file
/// attend's version as macros. The top-level CMakeLists.txt checks at configure time that
/// they agree with its `project(attend VERSION ...)`; CHANGELOG.md says what each holds.

/// Major version: raised when a release breaks source compatibility (0 while unstable).
#define ATTEND_VERSION_MAJOR 0
/// Minor version: raised when a release adds to the API.
#define ATTEND_VERSION_MINOR 1
/// Patch version: raised for fixes only.
#define ATTEND_VERSION_PATCH 0
/// The three numbers as a string literal, "MAJOR.MINOR.PATCH".
#define ATTEND_VERSION_STRING "0.1.0"
/// One comparable number, MAJOR * 10000 + MINOR * 100 + PATCH: `#if ATTEND_VERSION >= 100`.
#define ATTEND_VERSION \
  (ATTEND_VERSION_MAJOR * 10000 + ATTEND_VERSION_MINOR * 100 + ATTEND_VERSION_PATCH)
