# SPDX-License-Identifier: MIT
# Compiles every public header under INCLUDE_DIR/attend alone (-fsyntax-only) with COMPILER.
#
#   cmake -DCOMPILER=g++ -DINCLUDE_DIR=<repo>/include -DWORK_DIR=<dir>
#         [-DSYSTEM_INCLUDES=a|b] [-DDEFINES=X|Y=1] -P attend_header_check.cmake
#
# Each header goes into a one-line translation unit, included twice (so a missing
# `#pragma once` shows), with the strict warning set (-Wall -Wextra -Wpedantic -Wshadow
# -Wconversion -Werror). `*_impl.hpp` files are skipped:
# users never include them; their main header does. Headers are globbed when the check
# runs, so a new header is checked without reconfiguring. When neither the headers nor
# the command changed since the last run that passed, the run is skipped (a stamp in
# WORK_DIR records it); delete WORK_DIR to force a full run.
cmake_minimum_required(VERSION 3.21)

foreach(var IN ITEMS COMPILER INCLUDE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "attend_header_check.cmake: -D${var}=... is required")
  endif()
endforeach()

# The warnings consumers commonly build with: -Wshadow and -Wconversion on top of the
# usual set (clang's -Wconversion includes -Wsign-conversion; g++'s does not).
set(flags -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Werror
          "-I${INCLUDE_DIR}")
if(SYSTEM_INCLUDES)
  string(REPLACE "|" ";" SYSTEM_INCLUDES "${SYSTEM_INCLUDES}")
  foreach(dir IN LISTS SYSTEM_INCLUDES)
    list(APPEND flags -isystem "${dir}")
  endforeach()
endif()
if(DEFINES)
  string(REPLACE "|" ";" DEFINES "${DEFINES}")
  foreach(def IN LISTS DEFINES)
    list(APPEND flags "-D${def}")
  endforeach()
endif()

file(GLOB_RECURSE headers RELATIVE "${INCLUDE_DIR}" "${INCLUDE_DIR}/attend/*.hpp")
list(FILTER headers EXCLUDE REGEX "_impl\\.hpp$")
list(SORT headers)
list(LENGTH headers count)
if(count EQUAL 0)
  message(FATAL_ERROR "no headers found under ${INCLUDE_DIR}/attend")
endif()

# Fingerprint of everything the result depends on, apart from the system headers.
set(fingerprint "${COMPILER};${flags}")
file(GLOB_RECURSE all_headers "${INCLUDE_DIR}/attend/*.hpp")
list(SORT all_headers)
foreach(header IN LISTS all_headers)
  file(SHA256 "${header}" digest)
  string(APPEND fingerprint ";${header}=${digest}")
endforeach()
string(SHA256 fingerprint "${fingerprint}")
set(stamp "${WORK_DIR}/passed.stamp")
if(EXISTS "${stamp}")
  file(READ "${stamp}" previous)
  if(previous STREQUAL fingerprint)
    message(STATUS "${count} headers unchanged since the last passing check with ${COMPILER}; "
                   "skipped (remove ${WORK_DIR} to force)")
    return()
  endif()
  file(REMOVE "${stamp}")
endif()

file(MAKE_DIRECTORY "${WORK_DIR}")
set(failed "")
foreach(header IN LISTS headers)
  string(MAKE_C_IDENTIFIER "${header}" unit_name)
  set(unit "${WORK_DIR}/${unit_name}.cpp")
  file(WRITE "${unit}" "#include \"${header}\"\n#include \"${header}\"\n")
  execute_process(COMMAND "${COMPILER}" ${flags} "${unit}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc EQUAL 0)
    message(STATUS "ok      ${header}")
  else()
    message(STATUS "FAILED  ${header}\n${out}")
    list(APPEND failed "${header}")
  endif()
endforeach()

if(failed)
  list(LENGTH failed nfailed)
  list(JOIN failed "\n  " failed_lines)
  list(JOIN flags " " flag_line)
  message(FATAL_ERROR "${nfailed} of ${count} headers do not compile alone with ${COMPILER}:\n"
                      "  ${failed_lines}\nflags: ${flag_line}")
endif()
file(WRITE "${stamp}" "${fingerprint}")
message(STATUS "all ${count} headers compile alone with ${COMPILER}")
