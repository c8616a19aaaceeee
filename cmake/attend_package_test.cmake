# SPDX-License-Identifier: MIT
# Builds tests/consumer against attend one way (MODE) and checks what it prints.
#
#   cmake -DMODE=find_package|build_tree|add_subdirectory -DSOURCE_DIR=<repo>
#         -DBUILD_DIR=<attend build dir> -DWORK_DIR=<scratch> [-DGENERATOR=...]
#         [-DCXX_COMPILER=...] [-DCXX_LAUNCHER=...]
#         [-DINSTALL_INCLUDEDIR=include] [-DINSTALL_CMAKEDIR=share/cmake/attend]
#         [-DINSTALL_PKGCONFIGDIR=share/pkgconfig] [-DPKG_CONFIG=pkg-config]
#         -P attend_package_test.cmake
#
# find_package:     `cmake --install BUILD_DIR --prefix WORK_DIR/stage`, then the consumer
#                   finds attend there through CMAKE_PREFIX_PATH.
# build_tree:       the consumer finds BUILD_DIR's export() through attend_DIR.
# add_subdirectory: the consumer adds SOURCE_DIR as a subdirectory.
# blas:             add_subdirectory with ATTEND_USE_BLAS=ON (EIGEN_USE_BLAS + OpenBLAS).
# pkg_config:       the staged install as above, without CMake on the consumer's side: the
#                   consumer's main.cpp compiled with `pkg-config --cflags attend` (needs
#                   -DPKG_CONFIG=<pkg-config>), whose --modversion must be version.hpp's.
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
if(NOT INSTALL_PKGCONFIGDIR)
  set(INSTALL_PKGCONFIGDIR share/pkgconfig)
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

if(MODE STREQUAL "pkg_config")
  if(NOT PKG_CONFIG)
    message(FATAL_ERROR "pkg_config: -DPKG_CONFIG=<pkg-config program> is required")
  endif()
  set(stage "${WORK_DIR}/stage")
  run("install into ${stage}" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${stage}")
  set(pc_dir "${stage}/${INSTALL_PKGCONFIGDIR}")
  if(NOT EXISTS "${pc_dir}/attend.pc")
    message(FATAL_ERROR "${MODE}: the install did not produce ${INSTALL_PKGCONFIGDIR}/attend.pc")
  endif()
  # Only the staged attend.pc (plus the system's for Eigen and nlohmann-json).
  set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
  execute_process(COMMAND "${PKG_CONFIG}" --modversion attend RESULT_VARIABLE rc
                  OUTPUT_VARIABLE pc_version ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
  file(STRINGS "${SOURCE_DIR}/include/attend/version.hpp" header_version
       REGEX "^#define ATTEND_VERSION_STRING ")
  string(REGEX REPLACE ".*\"(.*)\".*" "\\1" header_version "${header_version}")
  if(NOT rc EQUAL 0 OR NOT pc_version STREQUAL header_version)
    message(FATAL_ERROR "${MODE}: pkg-config --modversion attend gave '${pc_version}' (${rc}) "
                        "${err}, expected ATTEND_VERSION_STRING '${header_version}'")
  endif()
  execute_process(COMMAND "${PKG_CONFIG}" --cflags attend RESULT_VARIABLE rc
                  OUTPUT_VARIABLE cflags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${MODE}: pkg-config --cflags attend failed (${rc}): ${err}")
  endif()
  message(STATUS "${MODE}: pkg-config --cflags attend: ${cflags}")
  separate_arguments(cflags UNIX_COMMAND "${cflags}")
  # The include dir must be the stage's (relocated through ${pcfiledir}), not the system's.
  file(REAL_PATH "${stage}/${INSTALL_INCLUDEDIR}" stage_include)
  set(found_stage_include FALSE)
  foreach(flag IN LISTS cflags)
    if(flag MATCHES "^-I(.*)$")
      file(REAL_PATH "${CMAKE_MATCH_1}" dir)
      if(dir STREQUAL stage_include)
        set(found_stage_include TRUE)
      endif()
    endif()
  endforeach()
  if(NOT found_stage_include)
    message(FATAL_ERROR "${MODE}: pkg-config --cflags attend lacks -I${stage_include}")
  endif()
  if(NOT CXX_COMPILER)
    set(CXX_COMPILER c++)
  endif()
  file(MAKE_DIRECTORY "${consumer_build}")
  run("build" ${CXX_LAUNCHER} "${CXX_COMPILER}" -std=c++17 -Wall -Wextra -Wpedantic -Werror
      ${cflags} "${SOURCE_DIR}/tests/consumer/main.cpp" -o "${consumer_build}/attend-consumer")
elseif(MODE STREQUAL "find_package")
  set(stage "${WORK_DIR}/stage")
  run("install into ${stage}" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${stage}")
  foreach(file IN ITEMS "${INSTALL_INCLUDEDIR}/attend/attend.hpp"
                        "${INSTALL_CMAKEDIR}/attendConfig.cmake"
                        "${INSTALL_CMAKEDIR}/attendConfigVersion.cmake"
                        "${INSTALL_CMAKEDIR}/attendTargets.cmake"
                        "${INSTALL_PKGCONFIGDIR}/attend.pc")
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

if(NOT MODE STREQUAL "pkg_config")
  run("configure" "${CMAKE_COMMAND}" ${configure_args})
endif()
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
if(NOT MODE STREQUAL "pkg_config")
  run("build" "${CMAKE_COMMAND}" --build "${consumer_build}")
endif()

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
