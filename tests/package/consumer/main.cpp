#include <elastic/errors.hpp>
#include <stdexcept>
#include <string>

namespace {
// Not inlined, so the crash report's innermost frame is this function, by name.
[[gnu::noinline]] void crash_here_on_purpose(volatile int* null) { *null = 1; }
}  // namespace

// `consumer fail`: throws; `consumer crash`: SIGSEGV; no argument: succeeds.
int run(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "crash") crash_here_on_purpose(nullptr);
  if (!mode.empty()) throw std::runtime_error("consumer failed on purpose");
  return 0;
}

ELASTIC_RECORD_MAIN(run)
