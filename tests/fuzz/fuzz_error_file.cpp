// libFuzzer target: the bytes of an error file, read as a launcher reads a
// failed rank's file and turned into its summary. Any crash, hang, sanitizer
// report or escaping exception is a bug; so is a summary that cannot itself be
// serialized, or a parsed value nested deeper than the reader's limit.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <elastic/errors.hpp>
#include <string>
#include <vector>

namespace {

// Deepest nesting of a parsed value, without recursion.
std::size_t depth_of(const nlohmann::json& root) {
  std::size_t deepest = 0;
  std::vector<std::pair<const nlohmann::json*, std::size_t>> pending{{&root, 1}};
  while (!pending.empty()) {
    auto [value, depth] = pending.back();
    pending.pop_back();
    if (!value->is_structured()) continue;
    deepest = std::max(deepest, depth);
    for (const auto& child : *value) pending.emplace_back(&child, depth + 1);
  }
  return deepest;
}

void check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  elastic::log::set_level(elastic::log::Level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // An in-memory regular file, opened by path the way the reader opens any file.
  static const int fd = ::memfd_create("error.json", MFD_CLOEXEC);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  check(fd >= 0);
  check(::ftruncate(fd, 0) == 0);
  check(size == 0 || ::pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));

  const int exitcode = size > 0 && data[0] % 2 ? -6 : 1;
  auto failure = elastic::ProcessFailure::read_or_describe(0, 4242, exitcode, path);
  check(failure.error_file == path);
  // Both what a summary shows and what a copy would write must serialize.
  (void)nlohmann::json(failure.message).dump();
  (void)elastic::errors::detail::python_json_dumps(nlohmann::ordered_json(failure.error_file_data));
  (void)failure.timestamp_isoformat();
  elastic::ChildFailedError::Failures failures;
  failures.emplace(0, failure);
  failures.emplace(1, elastic::ProcessFailure(1, 4243, -9, "/nonexistent/error.json"));
  const elastic::ChildFailedError error("fuzz", std::move(failures));
  check(std::string(error.what()).find("error_file: " + path) != std::string::npos);

  // What the reader accepted stays within its nesting limit.
  check(depth_of(failure.error_file_data) <= elastic::ErrorFileLimits::max_depth);
  return 0;
}
