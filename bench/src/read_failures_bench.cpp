// Ours for the reading-failures figure: for N error files under
// $ELASTIC_BENCH_ERROR_DIR/<rank>/error.json, build a ProcessFailure each and a
// ChildFailedError, then call format_msg(): what a launcher does once its
// workers failed, and the same steps python/read_failures.py times in PyTorch.
//
//   read_failures_bench [google-benchmark flags]     N = 1, 64, 10000
//   read_failures_bench --summary N                  print the summary for N files
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elastic/errors.hpp>
#include <map>
#include <string>

namespace {

std::string error_dir() {
  const char* dir = std::getenv("ELASTIC_BENCH_ERROR_DIR");
  return dir && *dir ? dir : "error_files";
}

std::string read_all(const std::string& root, int n) {
  std::map<int, elastic::ProcessFailure> failures;
  for (int rank = 0; rank < n; ++rank)
    failures.emplace(
        rank, elastic::ProcessFailure(rank, 100000 + rank, 1, root + "/" + std::to_string(rank) + "/error.json"));
  return elastic::ChildFailedError("train", std::move(failures)).format_msg();
}

void BM_read_failures(benchmark::State& state) {
  const std::string root = error_dir();
  const int n = static_cast<int>(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(read_all(root, n));
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_read_failures)->Arg(1)->Arg(64)->Arg(10000)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--summary") == 0) {
    std::fputs(read_all(error_dir(), std::atoi(argv[2])).c_str(), stdout);
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
