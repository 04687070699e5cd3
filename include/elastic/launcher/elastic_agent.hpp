// The elastic agent: `--nnodes MIN:MAX` over a dynamic rendezvous (c10d, etcd).
// Each round: join the rendezvous, share the nodes' worker counts in the round's
// keys, derive ranks and the worker environment, start the workers, then watch
// them and the round:
//   - a worker failed: with restarts left, a counted restart in a new round; else
//     the exit barrier and ChildFailedError;
//   - nodes in the wait list: an uncounted restart at the larger size;
//   - a participant lost (its launcher's session ended): the survivors restart at
//     once at the smaller size (uncounted), as long as MIN nodes remain;
//   - all succeeded: the exit barrier (skipping nodes known dead), then the end.
// The job's end (success or failure, not a signal) closes the rendezvous.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <elastic/errors/hostname.hpp>
#include <elastic/launcher/launch.hpp>
#include <elastic/launcher/port.hpp>
#include <elastic/rendezvous/backends.hpp>
#include <elastic/rendezvous/dynamic_rendezvous.hpp>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace elastic::launcher {

namespace detail {

inline rendezvous::RendezvousSettings rendezvous_settings(const LaunchConfig& config) {
  try {
    return rendezvous::parse_settings(config.run_id, config.min_nodes, config.max_nodes, config.rdzv_configs);
  } catch (const rendezvous::RendezvousConfigError& e) {
    throw UsageError(e.what());
  }
}

// Renews the node's session every keep_alive_interval on its own thread; remembers
// the first failure (the store is gone) for the agent's loop to act on.
class KeepAlive {
 public:
  KeepAlive(rendezvous::DynamicRendezvous& rdzv, std::chrono::milliseconds interval)
      : thread_([this, &rdzv, interval] {
          std::unique_lock<std::mutex> lock(mutex_);
          while (!stop_) {
            if (cv_.wait_for(lock, interval, [this] { return stop_; })) break;
            lock.unlock();
            try {
              rdzv.keep_alive();
            } catch (const rendezvous::RendezvousError& e) {
              lock.lock();
              if (!error_) error_ = e.what();
              continue;
            }
            lock.lock();
          }
        }) {}
  ~KeepAlive() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  std::optional<std::string> error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::optional<std::string> error_;
  std::thread thread_;
};

// Runs `step` (a blocking rendezvous step) on another thread while this one reads
// the launcher's signals: a signal cancels the step and ends the launch.
template <typename Step>
auto interruptible(rendezvous::DynamicRendezvous& rdzv, SignalReader& signals, Step&& step) -> decltype(step()) {
  auto result = std::async(std::launch::async, std::forward<Step>(step));
  while (result.wait_for(std::chrono::milliseconds(0)) != std::future_status::ready) {
    pollfd fd{signals.fd(), POLLIN, 0};
    if (::poll(&fd, 1, 100) > 0) {
      if (int sig = signals.next(); sig != 0) {
        log::warning("Received {} death signal, leaving the rendezvous", sig);
        rdzv.cancel();
        result.wait();
        throw SignalException(sig);
      }
    }
  }
  return result.get();
}

// What a completed round gives this node.
struct RoundPlan {
  rendezvous::RendezvousInfo info;
  int rank_offset = 0;  // nproc of the nodes before this one
  int world_size = 0;
  std::string master_addr;
  int master_port = 0;
  // On group rank 0: MASTER_PORT held for as long as the round's workers run (see
  // port.hpp), so that no other process on this host is handed it before rank 0
  // listens there.
  PortReservation master_port_hold;
};

// Shares this node's worker count (and, from group rank 0, MASTER_ADDR/PORT) in the
// round's keys and reads the others'. Empty when the round fell apart meanwhile.
inline std::optional<RoundPlan> plan_round(rendezvous::DynamicRendezvous& rdzv, const rendezvous::RendezvousInfo& info,
                                           int nproc) {
  using namespace std::chrono;
  auto& store = rdzv.store();
  RoundPlan plan;
  plan.info = info;
  const std::string master_key = rdzv.round_key(info.round, "master");
  if (info.group_rank == 0) plan.master_port_hold = PortReservation::any();
  rdzv.guarded([&] {
    store.set(rdzv.round_key(info.round, "nproc/" + std::to_string(info.group_rank)), std::to_string(nproc));
    if (info.group_rank == 0)
      store.set(master_key, elastic::fqdn() + "\n" + std::to_string(plan.master_port_hold.port()));
  });
  std::vector<std::string> keys{master_key};
  for (int r = 0; r < info.group_world_size(); ++r)
    keys.push_back(rdzv.round_key(info.round, "nproc/" + std::to_string(r)));
  const auto deadline = steady_clock::now() + rdzv.settings().join_timeout;
  for (;;) {
    bool all = false;
    rdzv.guarded([&] { all = store.wait(keys, milliseconds(500)); });
    if (all) break;
    if (rdzv.cancelled()) throw rendezvous::RendezvousError("joining the rendezvous was cancelled");
    auto health = rdzv.check_round(info);
    if (health != rendezvous::RoundHealth::healthy && health != rendezvous::RoundHealth::waiting_nodes)
      return std::nullopt;
    if (steady_clock::now() > deadline)
      throw rendezvous::RendezvousTimeoutError("the nodes of round " + std::to_string(info.round) +
                                               " did not share their worker counts within join_timeout");
  }
  std::vector<std::optional<std::string>> values;
  rdzv.guarded([&] { values = store.get_many(keys); });
  if (!values[0]) return std::nullopt;
  const auto newline = values[0]->find('\n');
  plan.master_addr = values[0]->substr(0, newline);
  plan.master_port = newline == std::string::npos ? 0 : std::atoi(values[0]->c_str() + newline + 1);
  for (int r = 0; r < info.group_world_size(); ++r) {
    const auto& value = values[static_cast<std::size_t>(r) + 1];
    const int n = value ? std::atoi(value->c_str()) : 0;
    if (r < info.group_rank) plan.rank_offset += n;
    plan.world_size += n;
  }
  return plan;
}

// Waits (up to `limit`) until every other node of the round has finished it too:
// written its exit key, died, or moved on to a later round.
inline void exit_barrier(rendezvous::DynamicRendezvous& rdzv, const rendezvous::RendezvousInfo& info,
                         std::chrono::seconds limit) {
  using namespace std::chrono;
  auto& store = rdzv.store();
  try {
    rdzv.guarded([&] { store.set(rdzv.round_key(info.round, "exit/" + std::to_string(info.group_rank)), "1"); });
    const auto deadline = steady_clock::now() + limit;
    std::vector<rendezvous::NodeDesc> others;
    std::vector<std::string> keys;
    for (int r = 0; r < info.group_world_size(); ++r) {
      if (r == info.group_rank) continue;
      others.push_back(info.nodes[static_cast<std::size_t>(r)]);
      keys.push_back(rdzv.round_key(info.round, "exit/" + std::to_string(r)));
    }
    for (;;) {
      // Usually every node gets here within moments: wait for their keys first, and
      // look for the dead and the moved-on only when that takes a while.
      bool all = false;
      rdzv.guarded([&] { all = store.wait(keys, milliseconds(500)); });
      if (all) return;
      std::vector<std::optional<std::string>> exited;
      rdzv.guarded([&] { exited = store.get_many(keys); });
      auto alive = rdzv.alive_nodes(others);
      const bool moved_on = rdzv.check_round(info) == rendezvous::RoundHealth::left_behind;
      bool done = true;
      for (std::size_t i = 0; i < others.size(); ++i)
        if (!exited[i] && alive.count(others[i]) > 0 && !moved_on) done = false;
      if (done) return;
      if (steady_clock::now() > deadline) {
        log::warning("Exit barrier of round {} timed out after {} s", info.round, limit.count());
        return;
      }
    }
  } catch (const rendezvous::RendezvousError& e) {
    log::warning("Exit barrier of round {}: {}", info.round, e.what());
  }
}

inline multiprocessing::Env round_worker_environment(const LaunchConfig& config, const RoundPlan& plan, int local_rank,
                                                     int restart_count, const multiprocessing::Env& base) {
  multiprocessing::Env env = worker_environment(config, local_rank, restart_count, base);
  const int rank = plan.rank_offset + local_rank;
  env["RANK"] = std::to_string(rank);
  env["ROLE_RANK"] = std::to_string(rank);
  env["GROUP_RANK"] = std::to_string(plan.info.group_rank);
  env["GROUP_WORLD_SIZE"] = std::to_string(plan.info.group_world_size());
  env["WORLD_SIZE"] = std::to_string(plan.world_size);
  env["ROLE_WORLD_SIZE"] = std::to_string(plan.world_size);
  env["MASTER_ADDR"] = plan.master_addr;
  env["MASTER_PORT"] = std::to_string(plan.master_port);
  return env;
}

}  // namespace detail

// Checks a dynamic-rendezvous configuration (usage errors), opening nothing.
inline void validate_dynamic(const LaunchConfig& config) {
  auto settings = detail::rendezvous_settings(config);
  try {
    rendezvous::parse_endpoint(config.rdzv_endpoint, config.rdzv_backend == "c10d" ? 29400 : 2379);
  } catch (const rendezvous::RendezvousConfigError& e) {
    throw UsageError(e.what());
  }
#if !ELASTIC_RENDEZVOUS_HAS_ETCD
  if (config.rdzv_backend != "c10d")
    throw NotSupportedError("rendezvous backend '" + config.rdzv_backend + "' (this build has no etcd store)");
#else
  if (config.rdzv_backend != "c10d") {
    try {
      rendezvous::validate_etcd_config(config.rdzv_configs);
    } catch (const rendezvous::RendezvousConfigError& e) {
      throw UsageError(e.what());
    }
  }
#endif
}

// launch() for a dynamic rendezvous backend (launch() calls it). Returns each global
// rank's exit code of the last round; throws ChildFailedError, SignalException, and
// rendezvous::RendezvousError subclasses (closed, timeout, connection).
inline std::map<int, int> launch_elastic(const LaunchConfig& config, const std::string& entrypoint,
                                         const std::vector<std::string>& args, std::string name) {
  using rendezvous::RoundHealth;
  validate_dynamic(config);
  const auto settings = detail::rendezvous_settings(config);
  auto setup = detail::prepare_launch(config, entrypoint, args, std::move(name));
  name = std::move(setup.name);
  const auto& logs_specs = setup.logs_specs;
  const auto& base = setup.base;
  const auto& prefix_template = setup.prefix_template;
  detail::SignalReader signals(config.signals_to_handle);

  auto backend = rendezvous::open_backend(config.rdzv_backend, config.rdzv_endpoint, settings,
                                          [](const std::string& line) { log::info("{}", line); });
  static std::atomic<long> handlers{0};
  rendezvous::NodeDesc node{elastic::fqdn(), static_cast<long>(::getpid()), handlers++};
  rendezvous::DynamicRendezvous rdzv(backend.store, settings, node);
  detail::KeepAlive keep_alive(rdzv,
                               std::chrono::duration_cast<std::chrono::milliseconds>(settings.keep_alive_interval));

  // The store's host serves the others until they are done with it: it waits (up
  // to close_timeout) for the round's other launchers to disconnect.
  auto release_store = [&](const rendezvous::RendezvousInfo& info) {
    if (!backend.server) return;
    std::vector<rendezvous::NodeDesc> others;
    for (const auto& n : info.nodes)
      if (!(n == node)) others.push_back(n);
    const auto deadline = std::chrono::steady_clock::now() + settings.close_timeout;
    try {
      while (rdzv.alive_nodes(others).size() > 1 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } catch (const rendezvous::RendezvousError&) {
    }
  };
  auto finish = [&](const rendezvous::RendezvousInfo& info) {
    log::debug("[{}] exit barrier of round {}", config.role, info.round);
    detail::exit_barrier(rdzv, info, std::chrono::seconds(300));
    log::debug("[{}] exit barrier passed; closing the rendezvous", config.role);
    try {
      rdzv.close();
    } catch (const rendezvous::RendezvousError& e) {
      log::warning("Closing the rendezvous: {}", e.what());
    }
    release_store(info);
  };

  bool logged_dir = false;
  for (int restart_count = 0;;) {
    auto info = detail::interruptible(rdzv, signals, [&] { return rdzv.next_rendezvous(); });
    auto plan =
        detail::interruptible(rdzv, signals, [&] { return detail::plan_round(rdzv, info, config.nproc_per_node); });
    if (!plan) {
      log::warning("[{}] round {} changed before it started; rejoining", config.role, info.round);
      continue;
    }
    log::info(
        "[{}] Rendezvous complete for workers. Result: restart_count={} master_addr={} master_port={} "
        "group_rank={} group_world_size={} ranks={}..{} world_size={}",
        config.role, restart_count, plan->master_addr, plan->master_port, info.group_rank, info.group_world_size(),
        plan->rank_offset, plan->rank_offset + config.nproc_per_node - 1, plan->world_size);

    std::map<int, multiprocessing::Env> envs;
    std::map<int, std::vector<std::string>> worker_args;
    std::map<int, std::string> prefixes;
    for (int local_rank = 0; local_rank < config.nproc_per_node; ++local_rank) {
      envs[local_rank] = detail::round_worker_environment(config, *plan, local_rank, restart_count, base);
      const int rank = plan->rank_offset + local_rank;
      prefixes[local_rank] = detail::worker_prefix(prefix_template, config.role, rank, local_rank);
      worker_args[local_rank] = detail::worker_arguments(args, local_rank);
    }
    multiprocessing::PContext context(name, entrypoint, std::move(worker_args), std::move(envs), *logs_specs,
                                      std::move(prefixes), detail::attempt_options(config));
    context.watch_fd(signals.fd());
    context.start();
    if (!logged_dir) {
      logged_dir = true;
      if (auto* defaults = dynamic_cast<multiprocessing::DefaultLogsSpecs*>(logs_specs.get()))
        log::info("log directory set to: {}", defaults->run_log_dir().value_or(""));
    }

    // How often the round is looked at between worker events.
    const auto monitor =
        std::chrono::milliseconds(std::clamp(static_cast<long>(config.monitor_interval * 1000), 100L, 1000L));
    std::optional<multiprocessing::RunProcsResult> result;
    std::optional<RoundHealth> change;
    try {
      while (!result && !change) {
        result = context.wait(monitor, config.term_timeout);
        if (result) break;
        if (context.watched_fd_ready()) {
          if (int sig = signals.next(); sig != 0) {
            log::warning("Received {} death signal, shutting down workers", sig);
            context.close(sig, config.term_timeout);
            if (config.own_process_tree) detail::kill_strays();
            throw SignalException(sig);
          }
        }
        if (auto error = keep_alive.error()) throw rendezvous::RendezvousConnectionError(*error);
        auto health = rdzv.check_round(info);
        if (health != RoundHealth::healthy && health != RoundHealth::closed) change = health;
      }
    } catch (const rendezvous::RendezvousError&) {
      context.close(SIGTERM, config.term_timeout);
      if (config.own_process_tree) detail::kill_strays();
      throw;
    }
    if (change) {
      log::warning("[{}] {}; restarting the workers in a new round (restart count stays {})", config.role,
                   rendezvous::to_string(*change), restart_count);
      context.close(SIGTERM, config.term_timeout);
      if (config.own_process_tree) detail::kill_strays();
      continue;
    }
    if (config.own_process_tree) detail::kill_strays();
    if (!result->is_failed()) {
      finish(info);
      std::map<int, int> values;
      for (const auto& [local_rank, code] : result->return_values) values[plan->rank_offset + local_rank] = code;
      return values;
    }
    if (restart_count < config.max_restarts) {
      ++restart_count;
      log::warning("[{}] worker group failed; restarting ({} of {} restarts)", config.role, restart_count,
                   config.max_restarts);
      continue;
    }
    finish(info);
    ChildFailedError::Failures failures;
    for (auto& [local_rank, failure] : result->failures)
      failures.emplace(plan->rank_offset + local_rank, std::move(failure));
    throw ChildFailedError(name, std::move(failures));
  }
}

}  // namespace elastic::launcher
