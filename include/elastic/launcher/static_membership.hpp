// The static backend's membership: one round for the whole job, ranks fixed by
// --node-rank. Several nodes meet once, before their first workers start
// (static_barrier.hpp); a restarted group meets in PyTorch's store again.
#pragma once

#include <elastic/launcher/config.hpp>
#include <elastic/launcher/membership.hpp>
#include <elastic/launcher/static_barrier.hpp>
#include <elastic/launcher/worker_env.hpp>
#include <elastic/log.hpp>
#include <tuple>

namespace elastic::launcher {

class StaticMembership final : public Membership {
 public:
  explicit StaticMembership(const LaunchConfig& config) : config_(config) {}

  std::optional<NodeAssignment> join(int restart_count, SignalReader& signals) override {
    if (restart_count == 0 && config_.max_nodes > 1) meet_the_other_nodes(signals);
    return static_assignment(config_);
  }
  std::chrono::milliseconds poll_interval() const override { return std::chrono::milliseconds(-1); }
  std::optional<std::string> round_changed() override { return std::nullopt; }
  void finish() override {}

 private:
  void meet_the_other_nodes(SignalReader& signals) {
    detail::StaticBarrierOptions barrier;
    std::tie(barrier.master_addr, barrier.master_port) = master_endpoint(config_);
    barrier.node_rank = config_.node_rank;
    barrier.nnodes = config_.max_nodes;
    barrier.run_id = config_.run_id;
    barrier.timeout = detail::static_join_timeout(config_.rdzv_configs);
    barrier.pending_signal = [&] { return signals.next(); };
    log::info("[{}] waiting for the other {} nodes at {}:{}", config_.role, config_.max_nodes - 1, barrier.master_addr,
              barrier.master_port);
    if (int sig = detail::static_barrier(barrier); sig != 0) {
      log::warning("Received {} death signal before the workers started", sig);
      throw SignalException(sig);
    }
  }

  const LaunchConfig& config_;
};

}  // namespace elastic::launcher
