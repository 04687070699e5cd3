// An example worker. Every rank "trains" for a moment; the rank named by
// --fail-rank throws, as a real training bug would, and the rank named by
// --crash-rank dereferences a null pointer, as a real memory bug would.
//
//   TORCHELASTIC_ERROR_FILE=/tmp/e.json RANK=1 ./worker --fail-rank 1
//   elastic-run --nproc-per-node=4 ./worker --fail-rank 1 --crash-rank 2
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <elastic/errors.hpp>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value && *value ? std::atoi(value) : fallback;
}

void load_batch(int rank, int step) {
  if (step == 3)
    throw std::runtime_error("rank " + std::to_string(rank) + ": corrupt batch at step " + std::to_string(step));
}

volatile std::sig_atomic_t stop_requested = 0;
void on_sigterm(int) { stop_requested = 1; }

// Not inlined, so a stack trace of the crash names it.
[[gnu::noinline]] void crash_here_on_purpose(volatile int* where) { *where = 42; }

}  // namespace

int train(int argc, char** argv) {
  int fail_rank = -1;
  int crash_rank = -1;
  int steps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--fail-rank") == 0) fail_rank = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--crash-rank") == 0) crash_rank = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  }
  const int rank = env_int("RANK", 0);
  // Graceful stop: a launcher's SIGTERM ends the worker after its current step,
  // as a trainer that checkpoints before leaving would.
  std::signal(SIGTERM, on_sigterm);
  for (int step = 0; step < steps; ++step) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (rank == crash_rank && step == 3) crash_here_on_purpose(nullptr);
    if (rank == fail_rank) {
      try {
        load_batch(rank, step);
      } catch (const std::exception&) {
        std::throw_with_nested(std::runtime_error("training step failed"));
      }
    }
    if (stop_requested) return 0;
  }
  return 0;
}

ELASTIC_RECORD_MAIN(train)
