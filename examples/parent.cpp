// An example parent: starts N copies of a worker with the library's own
// start_processes (each worker in its own process group, with its own error file
// under a new log directory), waits for them, and reports the failures as one
// ChildFailedError summary. When one worker fails, the others are stopped at once.
//
//   ./parent 3 ./worker --fail-rank 1
//
// elastic::launch (<elastic/launcher.hpp>) does all of this and more (restarts,
// TorchElastic's full worker environment, signal forwarding); this shows the
// layer below it.
#include <cstdio>
#include <cstdlib>
#include <elastic/errors.hpp>
#include <elastic/multiprocessing.hpp>
#include <map>
#include <string>
#include <vector>

extern char** environ;

namespace {

elastic::multiprocessing::Env current_environment() {
  elastic::multiprocessing::Env env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text = *entry;
    const auto equals = text.find('=');
    if (equals != std::string::npos) env.emplace(text.substr(0, equals), text.substr(equals + 1));
  }
  return env;
}

int supervise(int argc, char** argv) {
  int nprocs = 0;
  if (argc >= 3) nprocs = std::atoi(argv[1]);
  if (nprocs <= 0 || nprocs > 1024) {
    std::fprintf(stderr, "usage: %s NPROCS WORKER [ARGS...]   (1 <= NPROCS <= 1024)\n", argv[0]);
    throw elastic::SystemExit{2};
  }
  const std::string worker = argv[2];
  const std::vector<std::string> worker_args(argv + 3, argv + argc);

  // Each rank: the same arguments, and the environment plus its rank.
  std::map<int, std::vector<std::string>> args;
  std::map<int, elastic::multiprocessing::Env> envs;
  const elastic::multiprocessing::Env base = current_environment();
  for (int rank = 0; rank < nprocs; ++rank) {
    args[rank] = worker_args;
    envs[rank] = base;
    envs[rank]["RANK"] = envs[rank]["LOCAL_RANK"] = std::to_string(rank);
    envs[rank]["WORLD_SIZE"] = envs[rank]["LOCAL_WORLD_SIZE"] = std::to_string(nprocs);
  }

  // TorchElastic's log layout under a new torchelastic_XXXXXX directory in
  // $TMPDIR; start_processes gives each rank TORCHELASTIC_ERROR_FILE in it.
  elastic::multiprocessing::DefaultLogsSpecs logs;
  auto context = elastic::multiprocessing::start_processes(worker, worker, args, envs, logs);
  std::printf("started %d workers; logs and error files under %s\n", nprocs, logs.root_log_dir().c_str());

  // Blocks until every worker succeeded or one failed (the rest are then stopped).
  const elastic::multiprocessing::RunProcsResult result = *context->wait();
  if (result.is_failed()) throw elastic::ChildFailedError(worker, result.failures);
  std::puts("all workers succeeded");
  return 0;
}

}  // namespace

ELASTIC_RECORD_MAIN(supervise)
