// elastic::launcher::launch() as a library call, on every rendezvous backend: the
// same attempt loop runs the workers, so the hooks that services hang on (timer
// server, event log, NUMA binding) see every attempt with the round's ranks.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <elastic/launcher.hpp>
#include <map>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/subprocess.hpp"

using namespace elastic::testing;
using elastic::launcher::LaunchConfig;
using elastic::launcher::WorkerGroupInfo;

namespace {

// A one-node config of `backend`, as elastic-run would make it from on_backend().
LaunchConfig one_node_config(const std::string& backend, const TempDir& logs) {
  LaunchConfig config;
  config.nproc_per_node = 2;
  config.term_timeout = std::chrono::seconds(5);
  config.logs_specs = std::make_shared<elastic::multiprocessing::DefaultLogsSpecs>(logs.path().string());
  const auto args = rendezvous_args(backend);
  for (const auto& arg : args) {
    const auto eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
    if (key == "--rdzv-backend") config.rdzv_backend = value;
    if (key == "--rdzv-endpoint") config.rdzv_endpoint = value;
    if (key == "--rdzv-id") config.run_id = value;
  }
  if (backend == "static") {
    config.master_addr = "127.0.0.1";
    config.master_port = free_port();
  }
  return config;
}

struct Seen {
  std::vector<WorkerGroupInfo> started;
  std::vector<WorkerGroupInfo> ended;
  std::vector<bool> final;
  std::vector<bool> failed;
};

void hook(LaunchConfig& config, Seen& seen) {
  config.on_workers_started = [&seen](const WorkerGroupInfo& group) { seen.started.push_back(group); };
  config.on_workers_ended = [&seen](const WorkerGroupInfo& group, elastic::multiprocessing::RunProcsResult& result,
                                    bool final) {
    seen.ended.push_back(group);
    seen.final.push_back(final);
    seen.failed.push_back(result.is_failed());
  };
}

}  // namespace

TEST_CASE("launch(): the hooks see every attempt, its pids and its ranks, whatever the backend") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir logs;
  LaunchConfig config = one_node_config(backend, logs);
  config.max_restarts = 1;
  Seen seen;
  hook(config, seen);
  // Rank 1 fails on the first attempt; the restart succeeds.
  auto codes = elastic::launcher::launch(
      config, "/bin/sh", {"-c", "[ \"$TORCHELASTIC_RESTART_COUNT\" -ge 1 ] || [ \"$RANK\" = 0 ] || exit 3"});
  CHECK(codes == std::map<int, int>{{0, 0}, {1, 0}});
  REQUIRE(seen.started.size() == 2);
  REQUIRE(seen.ended.size() == 2);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto& group = seen.started[static_cast<std::size_t>(attempt)];
    CHECK(group.restart_count == attempt);
    CHECK(group.pids.size() == 2);
    for (const auto& [local_rank, pid] : group.pids) CHECK(pid > 0);
    CHECK(group.rank_offset == 0);
    CHECK(group.world_size == 2);
    CHECK(group.group_world_size == 1);
    CHECK(seen.ended[static_cast<std::size_t>(attempt)].pids == group.pids);
  }
  CHECK(seen.started[0].pids != seen.started[1].pids);
  CHECK(seen.failed == std::vector<bool>{true, false});
  CHECK(seen.final == std::vector<bool>{false, true});
}

TEST_CASE("launch(): a failure with no restart left reaches the hook as final, then ChildFailedError") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir logs;
  LaunchConfig config = one_node_config(backend, logs);
  Seen seen;
  hook(config, seen);
  CHECK_THROWS_AS(elastic::launcher::launch(config, "/bin/sh", {"-c", "[ \"$RANK\" = 0 ] || exit 4"}),
                  elastic::ChildFailedError);
  REQUIRE(seen.started.size() == 1);
  CHECK(seen.failed == std::vector<bool>{true});
  CHECK(seen.final == std::vector<bool>{true});
}
