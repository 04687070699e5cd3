// The exception-path figure: from a throw 30 frames deep inside record() to the
// moment record() has the complete error file on disk, source file:line included
// when elastic-symbolize is there (record() waits for it). One process, `runs`
// throws, each writing the file again.
//
//   throw_record_timer [runs]   prints {"throw_to_record_s": [...], "file_has_lines": ...}
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <elastic/errors.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

long throw_ns = 0;

long now_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000L + t.tv_nsec;
}

__attribute__((noinline)) int descend_then_throw(int depth) {
  if (depth <= 1) {
    throw_ns = now_ns();
    throw std::runtime_error("thrown 30 frames deep");
  }
  const int below = descend_then_throw(depth - 1);
  std::atomic_signal_fence(std::memory_order_seq_cst);  // no tail call: every frame stays
  return below + 1;
}

int throw_30_frames_deep() { return descend_then_throw(28); }

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::atoi(argv[1]) : 20;
  char dir_template[] = "/tmp/elastic-throw-timer-XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  if (dir == nullptr) return 2;
  const std::string path = std::string(dir) + "/error.json";
  ::setenv("TORCHELASTIC_ERROR_FILE", path.c_str(), 1);
  ::setenv("ELASTIC_LOG_LEVEL", "off", 1);
  std::vector<double> seconds;
  for (int i = 0; i < runs; ++i) {
    try {
      elastic::record(throw_30_frames_deep)();
    } catch (const std::runtime_error&) {
      seconds.push_back((now_ns() - throw_ns) * 1e-9);
    }
  }
  auto failure = elastic::ProcessFailure::read_or_describe(0, ::getpid(), 1, path);
  const bool lines = failure.message.is_object() && failure.message.dump().find(".cpp:") != std::string::npos;
  std::printf("{\"throw_to_record_s\": [");
  for (std::size_t i = 0; i < seconds.size(); ++i) std::printf("%s%.9f", i > 0 ? ", " : "", seconds[i]);
  std::printf("], \"file_has_lines\": %s}\n", lines ? "true" : "false");
  ::unlink(path.c_str());
  ::rmdir(dir);
  return seconds.size() == static_cast<std::size_t>(runs) ? 0 : 1;
}
