// elastic::launch: run `nproc_per_node` workers of one command on this node, as
// torchrun's elastic agent does: TorchElastic's worker environment, per-attempt
// logs, restarts, signal forwarding, and a ChildFailedError with every failed rank
// when the job fails. The backend only decides the node's membership
// (static_membership.hpp, dynamic_membership.hpp); every launch runs the same
// attempt loop (attempt_loop.hpp).
#pragma once

#include <elastic/launcher/attempt_loop.hpp>
#include <elastic/launcher/config.hpp>
#include <elastic/launcher/dynamic_membership.hpp>
#include <elastic/launcher/static_barrier.hpp>
#include <elastic/launcher/static_membership.hpp>
#include <map>
#include <string>
#include <vector>

namespace elastic::launcher {

// Checks what this launcher can do; throws UsageError / NotSupportedError.
inline void validate(const LaunchConfig& config) {
  if (config.min_nodes <= 0 || config.min_nodes > config.max_nodes) throw UsageError("need 0 < min_nodes <= max_nodes");
  const bool dynamic = is_dynamic_backend(config.rdzv_backend);
  if (!dynamic && config.rdzv_backend != "static")
    throw UsageError("unknown rendezvous backend '" + config.rdzv_backend + "' (static, c10d, etcd, etcd-v2)");
  if (config.min_nodes != config.max_nodes && !dynamic)
    throw UsageError("--nnodes=" + std::to_string(config.min_nodes) + ":" + std::to_string(config.max_nodes) +
                     " needs a dynamic rendezvous backend (--rdzv-backend=c10d, etcd or etcd-v2)");
  if (config.nproc_per_node <= 0) throw UsageError("nproc_per_node must be positive");
  if (config.max_restarts < 0) throw UsageError("max_restarts must not be negative");
  if (config.virtual_local_rank)
    if (auto devices = visible_device_list(); devices && static_cast<int>(devices->size()) < config.nproc_per_node)
      throw UsageError(
          virtual_local_rank_error(std::getenv("CUDA_VISIBLE_DEVICES"), static_cast<int>(devices->size())));
  if (dynamic) return validate_dynamic(config);  // --node-rank is ignored, as by PyTorch
  if (config.node_rank < 0 || config.node_rank >= config.max_nodes)
    throw UsageError("node_rank " + std::to_string(config.node_rank) + " is not in [0, " +
                     std::to_string(config.max_nodes) + ")");
  try {
    detail::static_join_timeout(config.rdzv_configs);
  } catch (const rendezvous::RendezvousConfigError& e) {
    throw UsageError(e.what());
  }
}

// Runs the job; returns each global rank's exit code (all 0). Throws
// ChildFailedError (failed ranks, by global rank) when the last attempt failed,
// SignalException when a handled signal stopped it, rendezvous::RendezvousError
// subclasses (closed, timeout, connection) when the nodes could not meet, and
// UsageError for a config this launcher cannot run.
inline std::map<int, int> launch(const LaunchConfig& config, const std::string& entrypoint,
                                 const std::vector<std::string>& args, std::string name = "") {
  validate(config);
  const detail::Job job = detail::prepare_job(config, entrypoint, args, std::move(name));
  SignalReader signals(config.signals_to_handle);
  detail::ConsoleLog console_log(detail::attempt_options(config).console_stall_limit);
  if (is_dynamic_backend(config.rdzv_backend)) {
    DynamicMembership membership(config);
    return run_attempts(config, job, membership, signals);
  }
  StaticMembership membership(config);
  return run_attempts(config, job, membership, signals);
}

}  // namespace elastic::launcher
