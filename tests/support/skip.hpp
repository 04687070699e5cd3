// Test support: a case that cannot run here (no tmpfs, no cgroup v2, a sanitizer
// that cannot start under the case's limits) says so instead of passing.
// Under CTest each case runs alone with ELASTIC_TEST_ONE_CASE=1 and exit code 77
// marks it skipped (SKIP_RETURN_CODE); run by hand, the program warns and goes on.
#pragma once

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace elastic::testing {

inline constexpr int skip_exit_code = 77;

[[maybe_unused]] inline void skip_case(const std::string& reason) {
  if (std::getenv("ELASTIC_TEST_ONE_CASE") != nullptr) {
    std::fprintf(stderr, "SKIPPED: %s\n", reason.c_str());
    std::fflush(nullptr);
    std::_Exit(skip_exit_code);
  }
  WARN("skipped: " << reason);
}

}  // namespace elastic::testing

// Ends the current case as skipped, saying why.
#define ELASTIC_SKIP(reason)               \
  do {                                     \
    ::elastic::testing::skip_case(reason); \
    return;                                \
  } while (false)
