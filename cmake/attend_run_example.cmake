# SPDX-License-Identifier: MIT
# Runs one example in a fresh directory and compares its stdout with <name>.expected.
#
#   cmake -DEXE=<program> -DWORK_DIR=<dir> [-DEXPECTED=<file>] [-DARGS="<words>"] -P attend_run_example.cmake
#
# The run fails when the program exits non-zero, or when EXPECTED exists and stdout
# differs from it byte for byte. stdout is saved as WORK_DIR/<name>.stdout.
cmake_minimum_required(VERSION 3.21)

foreach(var IN ITEMS EXE WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "attend_run_example.cmake: -D${var}=... is required")
  endif()
endforeach()

get_filename_component(name "${EXE}" NAME_WE)
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

separate_arguments(arguments UNIX_COMMAND "${ARGS}")
execute_process(COMMAND "${EXE}" ${arguments} WORKING_DIRECTORY "${WORK_DIR}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(actual "${WORK_DIR}/${name}.stdout")
file(WRITE "${actual}" "${out}")
if(err)
  message(STATUS "${name} wrote to stderr:\n${err}")
endif()
if(NOT rc EQUAL 0)
  message(STATUS "${name}'s stdout:\n${out}")
  message(FATAL_ERROR "${name} exited with ${rc}")
endif()

if(EXPECTED AND EXISTS "${EXPECTED}")
  file(READ "${EXPECTED}" expected)
  if(NOT out STREQUAL expected)
    # Printed as is (FATAL_ERROR would re-wrap the lines).
    find_program(DIFF diff)
    if(DIFF)
      execute_process(COMMAND "${DIFF}" -u "${EXPECTED}" "${actual}")
    else()
      message(STATUS "expected:\n${expected}\nactual:\n${out}")
    endif()
    message(FATAL_ERROR "${name}: stdout differs from ${EXPECTED}")
  endif()
  message(STATUS "${name}: stdout matches ${name}.expected")
else()
  message(STATUS "${name}: ran (no ${name}.expected to compare with)\n${out}")
endif()
