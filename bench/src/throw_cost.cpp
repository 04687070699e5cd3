// The throw figure: the cost of one throw + catch through a few frames, in the
// same program built three ways: without the library, with the library linked
// but record never run
// (ELASTIC_BENCH_THROW_LINKED), and inside record (ELASTIC_BENCH_THROW_RECORDED,
// throw-site traces on). Prints {"ns_per_throw": [one median per batch...]}.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <vector>

#if defined(ELASTIC_BENCH_THROW_LINKED) || defined(ELASTIC_BENCH_THROW_RECORDED)
#include <elastic/errors.hpp>
#endif

namespace {

volatile int depth_limit = 3;

__attribute__((noinline)) int throw_at(int depth) {
  if (depth >= depth_limit) throw std::runtime_error("bench");
  return throw_at(depth + 1) + 1;
}

double ns_per_throw(int throws) {
  const auto start = std::chrono::steady_clock::now();
  int caught = 0;
  for (int i = 0; i < throws; ++i) {
    try {
      throw_at(0);
    } catch (const std::runtime_error&) {
      ++caught;
    }
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  if (caught != throws) std::abort();
  return std::chrono::duration<double, std::nano>(elapsed).count() / throws;
}

int bench(int, char**) {
  ns_per_throw(2000);  // warm-up: first throws bind and cache
  std::vector<double> batches;
  for (int batch = 0; batch < 15; ++batch) batches.push_back(ns_per_throw(20000));
  std::printf("{\"ns_per_throw\": [");
  for (std::size_t i = 0; i < batches.size(); ++i) std::printf("%s%.2f", i ? ", " : "", batches[i]);
  std::printf("]}\n");
  return 0;
}

}  // namespace

#if defined(ELASTIC_BENCH_THROW_RECORDED)
ELASTIC_RECORD_MAIN(bench)
#elif defined(ELASTIC_BENCH_THROW_LINKED)
// record is linked in but never runs: no program has 100 arguments here.
int main(int argc, char** argv) { return argc > 99 ? elastic::record(bench)(argc, argv) : bench(argc, argv); }
#else
int main(int argc, char** argv) { return bench(argc, argv); }
#endif
