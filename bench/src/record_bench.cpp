// In-process cost of elastic::record on the happy path: a call through
// record(fn) against a direct call of fn, and the whole ELASTIC_RECORD_MAIN
// path (handler lookup, entry-point name, record, success).
#include <benchmark/benchmark.h>

#include <elastic/errors.hpp>

namespace {

// Opaque to the optimizer, so neither variant is folded away.
__attribute__((noinline)) int work(int argc, char**) {
  benchmark::ClobberMemory();
  return argc - 1;
}

void BM_direct_call(benchmark::State& state) {
  char* argv[] = {nullptr};
  for (auto _ : state) benchmark::DoNotOptimize(work(1, argv));
}
BENCHMARK(BM_direct_call);

void BM_record_call(benchmark::State& state) {
  char* argv[] = {nullptr};
  for (auto _ : state) benchmark::DoNotOptimize(elastic::record(work)(1, argv));
}
BENCHMARK(BM_record_call);

void BM_record_main(benchmark::State& state) {
  char* argv[] = {nullptr};
  for (auto _ : state) benchmark::DoNotOptimize(elastic::errors::detail::run_recorded_main("work", work, 1, argv));
}
BENCHMARK(BM_record_main);

}  // namespace

BENCHMARK_MAIN();
