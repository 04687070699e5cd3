// A parent for the tests: `failure_reader EXITCODE FILE...` reads each FILE as
// the error file of one failed rank (rank = position) the way a launcher does,
// prints the summary on stdout and its peak memory on stderr as "maxrss_kib=N".
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <elastic/errors.hpp>
#include <map>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: failure_reader EXITCODE FILE...\n");
    return 2;
  }
  const int exitcode = std::stoi(argv[1]);
  elastic::ChildFailedError::Failures failures;
  for (int i = 2; i < argc; ++i) {
    const int rank = i - 2;
    failures.emplace(rank, elastic::ProcessFailure::read_or_describe(rank, 1000 + rank, exitcode, argv[i]));
  }
  const elastic::ChildFailedError error("failure_reader", std::move(failures));
  std::fputs(error.what(), stdout);
  std::fputc('\n', stdout);
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  std::fprintf(stderr, "maxrss_kib=%ld\n", usage.ru_maxrss);
  return 0;
}
