// What each worker of a round is given: TorchElastic's environment, its arguments
// with {local_rank} substituted, its log-line prefix, and the summary's name for
// the command.
#pragma once

#include <cctype>
#include <cstdlib>
#include <elastic/errors/signals.hpp>
#include <elastic/launcher/config.hpp>
#include <elastic/launcher/membership.hpp>
#include <elastic/multiprocessing/pcontext.hpp>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

namespace elastic::launcher {

namespace detail {

inline multiprocessing::Env current_environment() {
  multiprocessing::Env env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) env.emplace(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return env;
}

inline std::string getenv_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : fallback;
}

// Python string.Template's ${name} and $name forms, for the names given; other
// text is kept. `dollar_escape`: "$$" becomes "$" (Template's escape). Worker
// arguments are substituted without it, so a shell worker's "$$" stays intact.
inline std::string substitute(const std::string& text, const std::map<std::string, std::string>& values,
                              bool dollar_escape = true) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] == '$' && i + 1 < text.size()) {
      if (text[i + 1] == '$' && dollar_escape) {
        out += '$';
        i += 2;
        continue;
      }
      bool braced = text[i + 1] == '{';
      std::size_t start = i + (braced ? 2 : 1);
      std::size_t end = start;
      while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_')) ++end;
      auto found = values.find(text.substr(start, end - start));
      if (found != values.end() && (!braced || (end < text.size() && text[end] == '}'))) {
        out += found->second;
        i = end + (braced ? 1 : 0);
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

inline std::pair<std::string, int> split_endpoint(const std::string& endpoint, int default_port) {
  auto colon = endpoint.rfind(':');
  if (colon == std::string::npos) return {endpoint, default_port};
  std::string port = endpoint.substr(colon + 1);
  if (!all_digits(port)) throw UsageError("invalid rendezvous endpoint: " + endpoint);
  std::string host = endpoint.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return {host, std::stoi(port)};
}

// One worker's log-line prefix, from --log-line-prefix-template.
inline std::string worker_prefix(const std::string& prefix_template, const std::string& role, int rank,
                                 int local_rank) {
  return substitute(prefix_template,
                    {{"rank", std::to_string(rank)}, {"local_rank", std::to_string(local_rank)}, {"role_name", role}});
}

// One worker's arguments, `{local_rank}` substituted as torchrun does.
inline std::vector<std::string> worker_arguments(const std::vector<std::string>& args, int local_rank) {
  std::vector<std::string> result;
  for (const auto& arg : args) result.push_back(substitute(arg, {{"local_rank", std::to_string(local_rank)}}, false));
  return result;
}

}  // namespace detail

// --virtual-local-rank with a parent's device list that has no device for `local_rank`.
inline std::string virtual_local_rank_error(const std::string& visible, int local_rank) {
  return "--virtual-local-rank: local rank " + std::to_string(local_rank) +
         " has no device of its own in CUDA_VISIBLE_DEVICES='" + visible + "'";
}

// MASTER_ADDR and MASTER_PORT of a static launch: --rdzv-endpoint when given, else
// --master-addr and --master-port.
inline std::pair<std::string, int> master_endpoint(const LaunchConfig& config) {
  if (config.rdzv_endpoint.empty()) return {config.master_addr, config.master_port};
  return detail::split_endpoint(config.rdzv_endpoint, config.master_port);
}

// The environment TorchElastic gives local rank `local_rank` of this node in the
// round `node` describes.
inline multiprocessing::Env worker_environment(const LaunchConfig& config, const NodeAssignment& node, int local_rank,
                                               int restart_count, const multiprocessing::Env& base) {
  multiprocessing::Env env = base;
  const int rank = node.rank_offset + local_rank;
  env["LOCAL_RANK"] = config.virtual_local_rank ? "0" : std::to_string(local_rank);
  env["RANK"] = std::to_string(rank);
  env["GROUP_RANK"] = std::to_string(node.group_rank);
  env["ROLE_RANK"] = std::to_string(rank);
  env["ROLE_NAME"] = config.role;
  env["LOCAL_WORLD_SIZE"] = std::to_string(config.nproc_per_node);
  env["WORLD_SIZE"] = std::to_string(node.world_size);
  env["GROUP_WORLD_SIZE"] = std::to_string(node.group_world_size);
  env["ROLE_WORLD_SIZE"] = std::to_string(node.world_size);
  env["MASTER_ADDR"] = node.master_addr;
  env["MASTER_PORT"] = std::to_string(node.master_port);
  env["TORCHELASTIC_RESTART_COUNT"] = std::to_string(restart_count);
  env["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(config.max_restarts);
  env["TORCHELASTIC_RUN_ID"] = config.run_id;
  // True: the launcher of group rank 0 serves the workers' store (agent_store.hpp);
  // False: worker rank 0 hosts it.
  env["TORCHELASTIC_USE_AGENT_STORE"] = config.agent_store ? "True" : "False";
  // As newest torchrun, which sets it for itself and its workers inherit it.
  std::string handled;
  for (int sig : config.signals_to_handle) handled += (handled.empty() ? "" : ",") + signal_name(sig);
  env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = handled;
  // PyTorch 2.2's name, and the older one only for workers that read it (it makes 2.2+ warn);
  // a value the user set is kept.
  env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = detail::getenv_or("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1");
  if (config.legacy_nccl_async_error_handling)
    env["NCCL_ASYNC_ERROR_HANDLING"] = detail::getenv_or("NCCL_ASYNC_ERROR_HANDLING", "1");
  if (config.virtual_local_rank) {
    // Each worker sees only its own device; an existing list is narrowed, and one
    // too short for this rank is an error (validate() refuses it before any start).
    std::string device = std::to_string(local_rank);
    if (auto visible = base.find("CUDA_VISIBLE_DEVICES"); visible != base.end()) {
      std::vector<std::string> items(1);
      for (char c : visible->second) {
        if (c == ',')
          items.emplace_back();
        else
          items.back() += c;
      }
      if (local_rank >= static_cast<int>(items.size()))
        throw UsageError(virtual_local_rank_error(visible->second, local_rank));
      device = items[static_cast<std::size_t>(local_rank)];
    }
    env["CUDA_VISIBLE_DEVICES"] = device;
  }
  return env;
}

// This node's place in a static job: node_rank of max_nodes, every node with
// nproc_per_node workers, the master endpoint as configured.
inline NodeAssignment static_assignment(const LaunchConfig& config) {
  NodeAssignment node;
  node.group_rank = config.node_rank;
  node.group_world_size = config.max_nodes;
  node.rank_offset = config.node_rank * config.nproc_per_node;
  node.world_size = config.max_nodes * config.nproc_per_node;
  std::tie(node.master_addr, node.master_port) = master_endpoint(config);
  if (config.node_rank == 0 && !config.local_addr.empty()) node.master_addr = config.local_addr;
  return node;
}

// The environment TorchElastic gives local rank `local_rank` of this node in a
// static launch.
inline multiprocessing::Env worker_environment(const LaunchConfig& config, int local_rank, int restart_count,
                                               const multiprocessing::Env& base) {
  return worker_environment(config, static_assignment(config), local_rank, restart_count, base);
}

// The summary's name for a command: for an interpreter, the script or module.
inline std::string entrypoint_name(const std::string& entrypoint, const std::vector<std::string>& args) {
  const std::string python = detail::getenv_or("PYTHON_EXEC", "python3");
  auto base = [](const std::string& p) { return p.substr(p.rfind('/') == std::string::npos ? 0 : p.rfind('/') + 1); };
  if (entrypoint == python || base(entrypoint).rfind("python", 0) == 0)
    for (const auto& arg : args)
      if (!arg.empty() && arg[0] != '-') return arg;
  return entrypoint;
}

}  // namespace elastic::launcher
