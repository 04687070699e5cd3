// The static backend's membership: one round for the whole job, ranks fixed by
// --node-rank. Several nodes meet once, before their first workers start
// (static_barrier.hpp); a restarted group meets in PyTorch's store again.
// Node 0 serves a store for the job's failures (job_failures.hpp) for as long as
// it runs, on a free port it gives the others at the barrier; each attempt has
// its own failure keys. When that store is gone (node 0 ended or died), the other
// nodes go on without it: a failure elsewhere then no longer stops them.
#pragma once

#include <algorithm>
#include <elastic/launcher/config.hpp>
#include <elastic/launcher/membership.hpp>
#include <elastic/launcher/static_barrier.hpp>
#include <elastic/launcher/worker_env.hpp>
#include <elastic/log.hpp>
#include <elastic/rendezvous/c10d_store.hpp>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

namespace elastic::launcher {

class StaticMembership final : public Membership {
 public:
  explicit StaticMembership(const LaunchConfig& config) : config_(config) {}

  std::optional<NodeAssignment> join(int restart_count, SignalReader& signals) override {
    if (restart_count == 0 && config_.max_nodes > 1) {
      meet_the_other_nodes(signals);
      connect_failure_store();
    }
    if (store_)
      board_.emplace(*store_, "static/" + config_.run_id + "/attempt/" + std::to_string(restart_count) + "/failures/");
    return static_assignment(config_);
  }
  std::chrono::milliseconds poll_interval() const override {
    if (!store_) return std::chrono::milliseconds(-1);
    return std::chrono::milliseconds(std::clamp(static_cast<long>(config_.monitor_interval * 1000), 100L, 1000L));
  }
  std::optional<std::string> round_changed() override { return std::nullopt; }

  void publish_failure(const FailureReport& report) override {
    if (!board_) return;
    failed_ = true;
    FailureReport mine = report;
    mine.node = "node " + std::to_string(config_.node_rank);
    try {
      board_->publish(std::move(mine));
    } catch (const rendezvous::StoreError& e) {
      lose_store(e.what());
    }
  }

  std::vector<FailureReport> job_failures() override {
    if (!board_) return {};
    try {
      auto reports = board_->others();
      if (!reports.empty()) failed_ = true;
      return reports;
    } catch (const rendezvous::StoreError& e) {
      lose_store(e.what());
      return {};
    }
  }

  // Node 0 keeps the failure store up until the others have read the job's
  // failure (they mark themselves done at their end), for 3 s at most.
  void finish() override {
    if (!store_) return;
    const std::string prefix = "static/" + config_.run_id + "/done/";
    try {
      if (!server_) {
        store_->set(prefix + std::to_string(config_.node_rank), "1");
      } else if (failed_) {
        std::vector<std::string> others;
        for (int r = 1; r < config_.max_nodes; ++r) others.push_back(prefix + std::to_string(r));
        if (!store_->wait(others, std::chrono::seconds(3)))
          log::warning("[{}] not every node acknowledged the job's failure within 3 s", config_.role);
      }
    } catch (const rendezvous::StoreError& e) {
      lose_store(e.what());
    }
  }

 private:
  void connect_failure_store() {
    rendezvous::StoreOptions options;
    options.host = server_ ? "127.0.0.1" : master_endpoint(config_).first;
    options.port = failure_port_;
    options.read_timeout = std::chrono::seconds(5);
    if (options.port <= 0) {
      log::warning("[{}] node 0 gave no failure store: failures on other nodes will not stop this one", config_.role);
      return;
    }
    try {
      store_ = std::make_unique<rendezvous::C10dStoreClient>(options);
    } catch (const rendezvous::StoreError& e) {
      log::warning(
          "[{}] cannot reach the job's failure store at {}:{}: {}; failures on other nodes will not stop "
          "this one",
          config_.role, options.host, options.port, e.what());
    }
  }

  void lose_store(const std::string& why) {
    log::warning("[{}] the job's failure store is gone ({}); failures on other nodes will not stop this one",
                 config_.role, why);
    board_.reset();
    store_.reset();
  }

  void meet_the_other_nodes(SignalReader& signals) {
    detail::StaticBarrierOptions barrier;
    std::tie(barrier.master_addr, barrier.master_port) = master_endpoint(config_);
    barrier.node_rank = config_.node_rank;
    barrier.nnodes = config_.max_nodes;
    barrier.run_id = config_.run_id;
    barrier.timeout = detail::static_join_timeout(config_.rdzv_configs);
    barrier.pending_signal = [&] { return signals.next(); };
    if (config_.node_rank == 0) {
      try {
        server_ = std::make_unique<rendezvous::C10dStoreServer>(0, std::chrono::seconds(10));
        failure_port_ = server_->port();
      } catch (const std::system_error& e) {
        log::warning("[{}] cannot serve the job's failure store: {}", config_.role, e.code().message());
      }
    }
    barrier.failure_port = &failure_port_;
    log::info("[{}] waiting for the other {} nodes at {}:{}", config_.role, config_.max_nodes - 1, barrier.master_addr,
              barrier.master_port);
    if (int sig = detail::static_barrier(barrier); sig != 0) {
      log::warning("Received {} death signal before the workers started", sig);
      throw SignalException(sig);
    }
  }

  const LaunchConfig& config_;
  int failure_port_ = 0;
  std::unique_ptr<rendezvous::C10dStoreServer> server_;  // node 0's failure store
  std::unique_ptr<rendezvous::Store> store_;
  std::optional<FailureBoard> board_;  // the attempt's failure keys
  bool failed_ = false;
};

}  // namespace elastic::launcher
