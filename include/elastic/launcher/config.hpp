// What a launch needs to know, and the parsing of torchrun's values for it.
#pragma once

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <elastic/multiprocessing/gpus.hpp>
#include <elastic/multiprocessing/logs_specs.hpp>
#include <elastic/multiprocessing/pcontext.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace elastic::launcher {

// A command line that cannot be run: the tool prints it and exits 2, starting nothing.
class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A valid request this launcher does not implement yet (elastic node counts,
// dynamic rendezvous backends).
class NotSupportedError : public UsageError {
 public:
  explicit NotSupportedError(const std::string& what) : UsageError(what + ": not supported yet") {}
};

// One attempt's worker group on this node, as LaunchConfig's hooks see it.
struct WorkerGroupInfo {
  int restart_count = 0;  // TORCHELASTIC_RESTART_COUNT of the workers
  int round = 0;          // the rendezvous round (0 on the static backend)
  int group_rank = 0;     // this node's rank among the round's nodes
  int group_world_size = 1;
  int rank_offset = 0;  // the global rank of local rank 0
  int world_size = 1;
  std::map<int, pid_t> pids;  // by local rank
};

struct LaunchConfig {
  int min_nodes = 1;
  int max_nodes = 1;
  int nproc_per_node = 1;
  std::string run_id = "none";
  std::string role = "default";
  std::string rdzv_endpoint;  // host:port; empty: master_addr:master_port
  std::string rdzv_backend = "static";
  std::map<std::string, std::string> rdzv_configs;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // This node's address (--local-addr): its name in a dynamic rendezvous and, where
  // it hosts group rank 0, its workers' MASTER_ADDR. Empty: its FQDN (dynamic) or
  // master_addr (static).
  std::string local_addr;
  // Serve PyTorch's TCPStore for the workers from the launcher on the node hosting
  // group rank 0, at MASTER_ADDR:MASTER_PORT, and tell them so
  // (TORCHELASTIC_USE_AGENT_STORE=True), as torchrun does. Off: worker rank 0 hosts
  // it (False).
  bool agent_store = true;
  int max_restarts = 0;
  double monitor_interval = 0.1;  // accepted for compatibility: monitoring is event-driven
  std::string start_method = "spawn";
  std::shared_ptr<multiprocessing::LogsSpecs> logs_specs;  // null: DefaultLogsSpecs()
  std::optional<std::string> log_line_prefix_template;
  bool virtual_local_rank = false;
  // Also give NCCL_ASYNC_ERROR_HANDLING=1 (unless set), the name torch before 2.2 reads;
  // TORCH_NCCL_ASYNC_ERROR_HANDLING is always given. elastic-run decides from the torch
  // a Python entry would import (torch_env.hpp).
  bool legacy_nccl_async_error_handling = true;
  // Teed lines containing any of these also go to attempt_<n>/filtered_std{out,err}.log.
  std::vector<std::string> duplicate_stdout_filters;
  std::vector<std::string> duplicate_stderr_filters;
  // How long workers get between SIGTERM and SIGKILL.
  std::chrono::milliseconds term_timeout{std::chrono::seconds(30)};
  // Signals forwarded to the workers; the launch then ends with SignalException.
  std::vector<int> signals_to_handle{SIGTERM, SIGINT, SIGHUP, SIGQUIT};
  // For a launcher process of its own: become a subreaper and kill any
  // descendant left over at the end. Off for library use inside a bigger program.
  bool own_process_tree = false;
  // Hooks for services that live beside the workers (timer server, event log, NUMA
  // binding), called on every backend: with an attempt's workers once they run, and
  // with its result before the launcher acts on it, which they may amend (e.g. say
  // why a worker died). `final`: no restart follows.
  std::function<void(const WorkerGroupInfo& group)> on_workers_started;
  std::function<void(const WorkerGroupInfo& group, multiprocessing::RunProcsResult& result, bool final)>
      on_workers_ended;
};

inline bool all_digits(const std::string& text) {
  return !text.empty() && text.size() <= 9 && text.find_first_not_of("0123456789") == std::string::npos;
}

// "1" -> (1, 1); "2:20" -> (2, 20); anything else is a usage error.
inline std::pair<int, int> parse_min_max_nnodes(const std::string& nnodes) {
  auto colon = nnodes.find(':');
  std::pair<int, int> result;
  if (colon == std::string::npos) {
    if (!all_digits(nnodes))
      throw UsageError("nnodes=" + nnodes + " is not a positive integer or in \"MIN:MAX\" format");
    result = {std::stoi(nnodes), std::stoi(nnodes)};
  } else {
    std::string min = nnodes.substr(0, colon), max = nnodes.substr(colon + 1);
    if (!all_digits(min) || !all_digits(max)) throw UsageError("nnodes=" + nnodes + " is not in \"MIN:MAX\" format");
    result = {std::stoi(min), std::stoi(max)};
  }
  if (result.first <= 0 || result.first > result.second) throw UsageError("nnodes=" + nnodes + ": need 0 < MIN <= MAX");
  return result;
}

// GPUs this process may use (NVML or the device nodes, narrowed by CUDA_VISIBLE_DEVICES).
inline int gpu_count() { return multiprocessing::gpu_count(); }

// The devices of CUDA_VISIBLE_DEVICES, split as Python's str.split(","); nullopt
// when it is not set.
inline std::optional<std::vector<std::string>> visible_device_list() {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible == nullptr) return std::nullopt;
  std::vector<std::string> items(1);
  for (const char* c = visible; *c != '\0'; ++c) {
    if (*c == ',')
      items.emplace_back();
    else
      items.back() += *c;
  }
  return items;
}

inline int cpu_count() {
  long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

// Workers per node that elastic-run accepts. Far above any machine's core count,
// low enough that a typo cannot make the launcher prepare millions of workers.
inline constexpr int max_local_world_size = 4096;

// int, "auto" (GPUs if any, else CPUs), "cpu", "gpu" (error without one), "xpu".
inline int determine_local_world_size(const std::string& nproc_per_node) {
  if (all_digits(nproc_per_node)) {
    int n = std::stoi(nproc_per_node);
    if (n <= 0) throw UsageError("Unsupported nproc_per_node value: " + nproc_per_node);
    if (n > max_local_world_size)
      throw UsageError("nproc_per_node=" + nproc_per_node + " is over the limit of " +
                       std::to_string(max_local_world_size) + " workers per node");
    return n;
  }
  if (nproc_per_node == "cpu") return cpu_count();
  if (nproc_per_node == "gpu") {
    int n = gpu_count();
    if (n == 0) throw UsageError("nproc_per_node=gpu: Cuda is not available.");
    return n;
  }
  if (nproc_per_node == "xpu") throw UsageError("nproc_per_node=xpu: no XPU device is available");
  if (nproc_per_node == "auto") {
    int n = gpu_count();
    return n > 0 ? n : cpu_count();
  }
  throw UsageError("Unsupported nproc_per_node value: " + nproc_per_node);
}

// "k1=v1,k2=v2" -> map, as PyTorch reads --rdzv-conf: keys and values are trimmed,
// a key without a value is an error, and nothing else about a key is checked (a
// backend ignores the keys it does not read, however they are spelt).
inline std::map<std::string, std::string> parse_rendezvous_config(const std::string& text) {
  auto trim = [](const std::string& s) {
    const auto first = s.find_first_not_of(" \t\n\r\f\v");
    if (first == std::string::npos) return std::string();
    return s.substr(first, s.find_last_not_of(" \t\n\r\f\v") - first + 1);
  };
  std::map<std::string, std::string> result;
  const std::string all = trim(text);
  if (all.empty()) return result;
  std::size_t start = 0;
  for (;;) {
    std::size_t comma = all.find(',', start);
    std::string item = all.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::size_t eq = item.find('=');
    const std::string key = trim(item.substr(0, eq));
    if (key.empty())
      throw UsageError("--rdzv-conf must be of the form <key1>=<value1>,...,<keyN>=<valueN>, got '" + text + "'");
    const std::string value = eq == std::string::npos ? std::string() : trim(item.substr(eq + 1));
    if (value.empty()) throw UsageError("--rdzv-conf: the option '" + key + "' must have a value");
    result[key] = value;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return result;
}

}  // namespace elastic::launcher
