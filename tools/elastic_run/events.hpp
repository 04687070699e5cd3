// TorchElastic's worker status events (--event-log-handler console): one JSON object per
// worker when the job ends, in the shape PyTorch's agent records them:
//   {"name": "torchelastic.worker.status.FAILED", "source": "WORKER", "timestamp": 0,
//    "metadata": {"run_id": ..., "global_rank": 1, "group_rank": 0, "worker_id": "<pid>",
//                 "role": ..., "hostname": ..., "state": "FAILED", "total_run_time": <s>,
//                 "rdzv_backend": "static", "raw_error": "<error file JSON>" or null,
//                 "metadata": "<JSON: group_world_size, entry_point, local_rank, ...>",
//                 "agent_restarts": <n>, "duration_ms": null}}
#pragma once

#include <netdb.h>
#include <unistd.h>

#include <climits>
#include <elastic/launcher/config.hpp>
#include <elastic/multiprocessing/pcontext.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace elastic_run {

namespace detail {

// The host's fully qualified name where the resolver knows it, else its plain name.
inline std::string fq_hostname() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  addrinfo hints{};
  hints.ai_flags = AI_CANONNAME;
  addrinfo* found = nullptr;
  std::string result = name;
  if (::getaddrinfo(name, nullptr, &hints, &found) == 0) {
    if (found != nullptr && found->ai_canonname != nullptr) result = found->ai_canonname;
    ::freeaddrinfo(found);
  }
  return result;
}

}  // namespace detail

// The events of an attempt's workers: SUCCEEDED, FAILED, or TERMINATED for a worker the
// launcher stopped because another failed.
inline std::vector<nlohmann::json> worker_status_events(const elastic::launcher::LaunchConfig& config,
                                                        const std::string& entry_point,
                                                        const elastic::launcher::WorkerGroupInfo& group,
                                                        const elastic::multiprocessing::RunProcsResult& result,
                                                        long total_run_time_s) {
  std::vector<nlohmann::json> events;
  const std::string hostname = detail::fq_hostname();
  for (const auto& [local_rank, pid] : group.pids) {
    const int global_rank = group.rank_offset + local_rank;
    auto failure = result.failures.find(local_rank);
    std::string state = !result.is_failed() ? "SUCCEEDED" : failure != result.failures.end() ? "FAILED" : "TERMINATED";
    nlohmann::json raw_error = nullptr;
    if (failure != result.failures.end()) raw_error = failure->second.error_file_data.dump();
    nlohmann::json md = {{"group_world_size", group.group_world_size},
                         {"entry_point", entry_point},
                         {"local_rank", {local_rank}},
                         {"role_rank", {global_rank}},
                         {"role_world_size", {group.world_size}}};
    nlohmann::json metadata = {{"run_id", config.run_id},
                               {"global_rank", global_rank},
                               {"group_rank", group.group_rank},
                               {"worker_id", std::to_string(pid)},
                               {"role", config.role},
                               {"hostname", hostname},
                               {"state", state},
                               {"total_run_time", total_run_time_s},
                               {"rdzv_backend", config.rdzv_backend},
                               {"raw_error", raw_error},
                               {"metadata", md.dump()},
                               {"agent_restarts", group.restart_count},
                               {"duration_ms", nullptr}};
    events.push_back({{"name", "torchelastic.worker.status." + state},
                      {"source", "WORKER"},
                      {"timestamp", 0},
                      {"metadata", std::move(metadata)}});
  }
  return events;
}

}  // namespace elastic_run
