// An example parent: starts N copies of a worker, each with its own error file,
// waits for them, and reports the failures as one ChildFailedError summary.
//
//   ./parent 3 ./worker --fail-rank 1
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <elastic/errors.hpp>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

int supervise(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s NPROCS WORKER [ARGS...]\n", argv[0]);
    throw elastic::SystemExit{2};
  }
  const int nprocs = std::atoi(argv[1]);
  const auto log_dir = std::filesystem::temp_directory_path() / ("elastic_example_" + std::to_string(::getpid()));

  std::map<pid_t, int> ranks;
  std::map<int, std::string> error_files;
  for (int rank = 0; rank < nprocs; ++rank) {
    error_files[rank] = (log_dir / std::to_string(rank) / "error.json").string();
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
    env_strings.push_back("RANK=" + std::to_string(rank));
    env_strings.push_back("TORCHELASTIC_ERROR_FILE=" + error_files[rank]);
    std::vector<char*> env;
    for (auto& s : env_strings) env.push_back(s.data());
    env.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, argv[2], nullptr, nullptr, argv + 2, env.data()) != 0)
      throw std::runtime_error(std::string("cannot start ") + argv[2]);
    ranks[pid] = rank;
  }

  std::map<int, elastic::ProcessFailure> failures;
  for (int left = nprocs; left > 0; --left) {
    int status = 0;
    pid_t pid = ::wait(&status);
    int exitcode = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
    if (exitcode != 0) {
      int rank = ranks[pid];
      failures.emplace(rank, elastic::ProcessFailure::read_or_describe(rank, pid, exitcode, error_files[rank]));
    }
  }
  if (!failures.empty()) throw elastic::ChildFailedError(argv[2], std::move(failures));
  std::puts("all workers succeeded");
  return 0;
}

ELASTIC_RECORD_MAIN(supervise)
