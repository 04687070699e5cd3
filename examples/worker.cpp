// An example worker. Every rank "trains" for a moment; the rank named by
// --fail-rank throws, as a real training bug would.
//
//   TORCHELASTIC_ERROR_FILE=/tmp/e.json RANK=1 ./worker --fail-rank 1
#include <elastic/errors.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
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

}  // namespace

int train(int argc, char** argv) {
  int fail_rank = -1;
  int steps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--fail-rank") == 0) fail_rank = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  }
  const int rank = env_int("RANK", 0);
  for (int step = 0; step < steps; ++step) {
    if (rank == fail_rank) {
      try {
        load_batch(rank, step);
      } catch (const std::exception&) {
        std::throw_with_nested(std::runtime_error("training step failed"));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return 0;
}

ELASTIC_RECORD_MAIN(train)
