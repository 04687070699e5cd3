# `cpack -G DEB` in the build directory: one Debian package with elastic-run, its
# man page, the headers, the CMake package config and elastic.pc. Configure with
# -DCMAKE_INSTALL_PREFIX=/usr for Debian's multiarch library directory.

# Depends is computed, never listed by hand: dpkg-shlibdeps reads elastic-run's
# shared libraries, and the packages that provide the headers' dependencies
# (the ones find_package found) are asked of dpkg. A consumer compiles against
# those headers and links abseil's static archives, so they are needed at build
# time, which is what a -dev package is for.
function(_elastic_debian_package_of file minimum out)
  execute_process(COMMAND dpkg-query --search ${file} OUTPUT_VARIABLE owner RESULT_VARIABLE rc ERROR_QUIET)
  if(rc EQUAL 0 AND owner MATCHES "^([^:,]+)(:[^:,]+)?: ")
    set(dependency ${CMAKE_MATCH_1})
    if(minimum)
      string(APPEND dependency " (>= ${minimum})")
    endif()
    set(${out} ${${out}} "${dependency}" PARENT_SCOPE)
  else()
    message(STATUS "elastic: no Debian package owns ${file}; it is not in the package's Depends")
  endif()
endfunction()
set(elastic_debian_depends "")
_elastic_debian_package_of(${nlohmann_json_DIR}/nlohmann_jsonConfig.cmake 3.9 elastic_debian_depends)
_elastic_debian_package_of(${fmt_DIR}/fmt-config.cmake 8 elastic_debian_depends)
_elastic_debian_package_of(${ELASTIC_ASIO_INCLUDE_DIR}/asio.hpp "" elastic_debian_depends)
_elastic_debian_package_of(${OPENSSL_INCLUDE_DIR}/openssl/hmac.h "" elastic_debian_depends)
if(ELASTIC_WITH_ETCD)
  _elastic_debian_package_of(${CPP_HTTPLIB_INCLUDEDIR}/httplib.h "" elastic_debian_depends)
endif()
list(GET ELASTIC_ABSL_STATIC_ARCHIVES 0 elastic_absl_archive)
_elastic_debian_package_of(${elastic_absl_archive} "" elastic_debian_depends)
list(JOIN elastic_debian_depends ", " CPACK_DEBIAN_PACKAGE_DEPENDS)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME ${ELASTIC_PACKAGE_NAME})
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "the elastic authors")
set(CPACK_PACKAGE_CONTACT "the elastic authors")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "TorchElastic-compatible failure propagation for native workers")
# The summary is the first line; CPack puts it there.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
  "A header-only C++17 library (errors, multiprocessing, launcher) whose workers write\n"
  "PyTorch-compatible error files, and elastic-run, a torchrun-compatible launcher.\n"
  "Consumers use find_package(elastic) or pkg-config elastic.")
string(JOIN "" CPACK_DEBIAN_PACKAGE_DESCRIPTION ${CPACK_DEBIAN_PACKAGE_DESCRIPTION})
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "cmake, pkg-config, python3-torch")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# As `cmake --install --strip`: elastic-run without its debug information.
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_SOURCE_GENERATOR "")
include(CPack)
