# SPDX-License-Identifier: MIT
# Builds tests/consumer against attend one way (MODE) and checks what it prints.
#
#   cmake -DMODE=find_package|build_tree|add_subdirectory -DSOURCE_DIR=<repo>
#         -DBUILD_DIR=<attend build dir> -DWORK_DIR=<scratch> [-DGENERATOR=...]
#         [-DCXX_COMPILER=...] [-DCXX_LAUNCHER=...]
#         [-DINSTALL_INCLUDEDIR=include] [-DINSTALL_CMAKEDIR=share/cmake/attend]
#         -P attend_package_test.cmake
#
# find_package:     `cmake --install BUILD_DIR --prefix WORK_DIR/stage`, then the consumer
#                   finds attend there through CMAKE_PREFIX_PATH.
# build_tree:       the consumer finds BUILD_DIR's export() through attend_DIR.
# add_subdirectory: the consumer adds SOURCE_DIR as a subdirectory.
# blas:             add_subdirectory with ATTEND_USE_BLAS=ON (EIGEN_USE_BLAS + OpenBLAS).
# The consumer's stdout must equal tests/consumer/expected.txt.
cmake_minimum_required(VERSION 3.21)

foreach(var IN ITEMS MODE SOURCE_DIR BUILD_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "attend_package_test.cmake: -D${var}=... is required")
  endif()
endforeach()

if(NOT INSTALL_INCLUDEDIR)
  set(INSTALL_INCLUDEDIR include)
endif()
if(NOT INSTALL_CMAKEDIR)
  set(INSTALL_CMAKEDIR share/cmake/attend)
endif()

function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    list(JOIN ARGN " " command)
    message(STATUS "${command}\n${out}")  # as is: FATAL_ERROR would re-wrap the lines
    message(FATAL_ERROR "${MODE}: ${step} failed (${rc})")
  endif()
  message(STATUS "${MODE}: ${step} ok")
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_build "${WORK_DIR}/build")
set(configure_args -S "${SOURCE_DIR}/tests/consumer" -B "${consumer_build}"
                   -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
if(GENERATOR)
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(CXX_LAUNCHER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${CXX_LAUNCHER}")
endif()

if(MODE STREQUAL "find_package")
  set(stage "${WORK_DIR}/stage")
  run("install into ${stage}" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${stage}")
  foreach(file IN ITEMS "${INSTALL_INCLUDEDIR}/attend/attend.hpp"
                        "${INSTALL_CMAKEDIR}/attendConfig.cmake"
                        "${INSTALL_CMAKEDIR}/attendConfigVersion.cmake"
                        "${INSTALL_CMAKEDIR}/attendTargets.cmake")
    if(NOT EXISTS "${stage}/${file}")
      message(FATAL_ERROR "${MODE}: the install did not produce ${file}")
    endif()
  endforeach()
  list(APPEND configure_args -DATTEND_CONSUMER_MODE=find_package "-DCMAKE_PREFIX_PATH=${stage}")
  set(expected_attend_dir "${stage}/${INSTALL_CMAKEDIR}")
elseif(MODE STREQUAL "build_tree")
  list(APPEND configure_args -DATTEND_CONSUMER_MODE=find_package "-Dattend_DIR=${BUILD_DIR}")
  set(expected_attend_dir "${BUILD_DIR}")
elseif(MODE STREQUAL "add_subdirectory")
  list(APPEND configure_args -DATTEND_CONSUMER_MODE=add_subdirectory
                             "-DATTEND_SOURCE_DIR=${SOURCE_DIR}")
elseif(MODE STREQUAL "blas")
  # The optional BLAS backend: Eigen hands its large products to OpenBLAS. The consumer's
  # output must be the same as without it.
  list(APPEND configure_args -DATTEND_CONSUMER_MODE=add_subdirectory
                             "-DATTEND_SOURCE_DIR=${SOURCE_DIR}" -DATTEND_USE_BLAS=ON)
else()
  message(FATAL_ERROR "unknown MODE '${MODE}'")
endif()

run("configure" "${CMAKE_COMMAND}" ${configure_args})
if(DEFINED expected_attend_dir)
  # Make sure the package came from where this test put it, not from the system.
  file(STRINGS "${consumer_build}/CMakeCache.txt" found REGEX "^attend_DIR:")
  string(REGEX REPLACE "^attend_DIR:[A-Z]*=" "" found "${found}")
  file(REAL_PATH "${found}" found)
  file(REAL_PATH "${expected_attend_dir}" expected_attend_dir)
  if(NOT found STREQUAL expected_attend_dir)
    message(FATAL_ERROR "${MODE}: attend was found in '${found}', expected '${expected_attend_dir}'")
  endif()
endif()
run("build" "${CMAKE_COMMAND}" --build "${consumer_build}")

execute_process(COMMAND "${consumer_build}/attend-consumer"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(STATUS "${out}${err}")
  message(FATAL_ERROR "${MODE}: attend-consumer exited with ${rc}")
endif()
file(READ "${SOURCE_DIR}/tests/consumer/expected.txt" expected)
if(NOT out STREQUAL expected)
  message(STATUS "attend-consumer printed:\n${out}expected (tests/consumer/expected.txt):\n${expected}")
  message(FATAL_ERROR "${MODE}: attend-consumer's output differs from expected.txt")
endif()
message(STATUS "${MODE}: attend-consumer printed the expected output")
