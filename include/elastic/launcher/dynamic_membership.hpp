// The membership of c10d and etcd jobs (`--nnodes MIN:MAX`, or a fixed count over a
// dynamic backend). Each round: join the rendezvous, share the nodes' worker counts
// in the round's keys, and derive ranks and the master endpoint. While the workers
// run, the round is looked at every monitor interval:
//   - nodes in the wait list: an uncounted restart at the larger size;
//   - a participant lost (its launcher's session ended): the survivors restart at
//     once at the smaller size (uncounted), as long as MIN nodes remain, in a round
//     the first of them forms complete (no last call);
//   - this node's session lost (the store is gone): RendezvousConnectionError;
//   - a worker of another node failed (the round's failure keys, job_failures.hpp):
//     this node's workers are stopped at once.
// The c10d store's host that no other host has reached for read_timeout while it
// rejoins gives up (RendezvousConnectionError) instead of waiting for join_timeout.
// The job's end (success or failure, not a signal) passes the exit barrier
// (skipping nodes known dead) and closes the rendezvous.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <elastic/errors/hostname.hpp>
#include <elastic/launcher/config.hpp>
#include <elastic/launcher/host_address.hpp>
#include <elastic/launcher/membership.hpp>
#include <elastic/launcher/port.hpp>
#include <elastic/log.hpp>
#include <elastic/rendezvous/backends.hpp>
#include <elastic/rendezvous/dynamic_rendezvous.hpp>
#include <elastic/signal_free_thread.hpp>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace elastic::launcher {

inline bool is_dynamic_backend(const std::string& backend) {
  return backend == "c10d" || backend == "etcd" || backend == "etcd-v2";
}

namespace detail {

// This node in the rendezvous, and MASTER_ADDR where it hosts group rank 0:
// --local-addr, else its FQDN.
inline std::string node_address(const LaunchConfig& config) {
  return config.local_addr.empty() ? elastic::fqdn() : config.local_addr;
}

inline rendezvous::RendezvousSettings rendezvous_settings(const LaunchConfig& config) {
  try {
    // `timeout` belongs to PyTorch's static and legacy etcd backends: c10d and etcd-v2
    // ignore it, whatever its value, as they ignore every key they do not read.
    auto configs = config.rdzv_configs;
    if (config.rdzv_backend != "etcd") configs.erase("timeout");
    return rendezvous::parse_settings(config.run_id, config.min_nodes, config.max_nodes, configs);
  } catch (const rendezvous::RendezvousConfigError& e) {
    throw UsageError(e.what());
  }
}

// Renews the node's session every keep_alive_interval on its own thread; remembers
// the first failure (the store is gone) and when a renewal last got through, for
// the agent's loop to act on even while a renewal hangs on an unanswered request.
class KeepAlive {
 public:
  using Clock = std::chrono::steady_clock;
  KeepAlive(rendezvous::DynamicRendezvous& rdzv, std::chrono::milliseconds interval)
      : last_renewed_(Clock::now()), thread_(elastic::signal_free_thread([this, &rdzv, interval] {
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
            last_renewed_ = Clock::now();
          }
        })) {}
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
  // How long since a renewal last got through (or since the session began).
  Clock::duration since_renewed() {
    std::lock_guard<std::mutex> lock(mutex_);
    return Clock::now() - last_renewed_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::optional<std::string> error_;
  Clock::time_point last_renewed_;
  std::thread thread_;
};

// Looks at the running round (its health and, when given, the job's failure keys)
// on its own thread, so that a store request left unanswered (a cut link: no reply,
// no reset, until read_timeout) never holds up the agent's loop; the loop takes the
// latest answer when it comes.
class RoundCheck {
 public:
  struct Answer {
    rendezvous::RoundHealth health = rendezvous::RoundHealth::healthy;
    std::vector<FailureReport> failures;
  };
  using ReadFailures = std::function<std::vector<FailureReport>()>;

  explicit RoundCheck(rendezvous::DynamicRendezvous& rdzv)
      : rdzv_(rdzv), thread_(elastic::signal_free_thread([this] { run(); })) {}
  ~RoundCheck() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // Asks for a look at `round` (unless one is under way) and waits up to `limit`
  // for its answer; nullopt while the store has not answered. A store failure of
  // the round's look is rethrown.
  std::optional<Answer> check(const rendezvous::RendezvousInfo& round, ReadFailures read_failures,
                              std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!pending_ && !busy_) {
      round_ = round;
      read_failures_ = std::move(read_failures);
      pending_ = true;
      cv_.notify_all();
    }
    cv_.wait_for(lock, limit, [this] { return answer_.has_value() || error_.has_value(); });
    if (error_) {
      std::string what = std::move(*error_);
      error_.reset();
      throw rendezvous::RendezvousConnectionError(what);
    }
    auto answer = std::move(answer_);
    answer_.reset();
    return answer;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || pending_; });
      if (stop_) return;
      pending_ = false;
      busy_ = true;
      const rendezvous::RendezvousInfo round = round_;
      ReadFailures read_failures = read_failures_;
      lock.unlock();
      std::optional<Answer> answer;
      std::optional<std::string> error;
      try {
        Answer a;
        a.health = rdzv_.check_round(round);
        if (read_failures) a.failures = read_failures();
        answer = std::move(a);
      } catch (const rendezvous::RendezvousError& e) {
        error = e.what();
      }
      lock.lock();
      busy_ = false;
      answer_ = std::move(answer);
      if (error) error_ = std::move(error);
      cv_.notify_all();
    }
  }

  rendezvous::DynamicRendezvous& rdzv_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false, pending_ = false, busy_ = false;
  rendezvous::RendezvousInfo round_;
  ReadFailures read_failures_;
  std::optional<Answer> answer_;
  std::optional<std::string> error_;
  std::thread thread_;
};

// Runs `step` (a blocking rendezvous step) on another thread while this one reads
// the launcher's signals: a signal cancels the step and ends the launch. `abandon`,
// looked at as often, gives a reason to cancel the step and throw
// RendezvousConnectionError with it.
template <typename Step>
auto interruptible(rendezvous::DynamicRendezvous& rdzv, SignalReader& signals, Step&& step,
                   const std::function<std::optional<std::string>()>& abandon = {}) -> decltype(step()) {
  auto result = std::async(std::launch::async, std::forward<Step>(step));
  while (result.wait_for(std::chrono::milliseconds(0)) != std::future_status::ready) {
    if (abandon) {
      if (auto why = abandon()) {
        rdzv.cancel();
        result.wait();
        throw rendezvous::RendezvousConnectionError(*why);
      }
    }
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

// What MASTER_ADDR is made of when this node hosts rank 0: --local-addr when given,
// else the host name unless it resolves here to loopback in a round of several
// nodes. Then the address this host reaches the rendezvous store from, or (the store
// being on this host) the one it reaches another node from; loopback only when
// every node reaches the store over loopback (they all run on one host).
struct MasterAddressChoice {
  std::string address;
  std::string why;  // empty: the usual choice, nothing to say
};

inline MasterAddressChoice choose_master_addr(const std::string& local_addr, const std::string& store_route,
                                              const std::vector<std::string>& peer_routes) {
  if (!local_addr.empty()) return {local_addr, ""};
  const std::string& name = elastic::fqdn();
  if (peer_routes.empty() || !resolves_to_loopback(name)) return {name, ""};
  const std::string loopback_name = "the host name '" + name + "' resolves to a loopback address here";
  if (!store_route.empty() && !is_loopback_address(store_route))
    return {store_route, loopback_name + "; MASTER_ADDR is " + store_route +
                             ", the address this host reaches the rendezvous store from (--local-addr sets it)"};
  for (const auto& peer : peer_routes) {
    if (peer.empty() || is_loopback_address(peer)) continue;
    const std::string own = route_source_address(peer, 0);
    if (!own.empty() && !is_loopback_address(own))
      return {own, loopback_name + "; MASTER_ADDR is " + own + ", the address this host reaches node " + peer +
                       " from (--local-addr sets it)"};
  }
  return {name, ""};
}

// Shares this node's worker count and the address it reaches the store from (and,
// from group rank 0, MASTER_ADDR/PORT) in the round's keys and reads the others'.
// Empty when the round fell apart meanwhile.
inline std::optional<NodeAssignment> plan_round(rendezvous::DynamicRendezvous& rdzv,
                                                const rendezvous::RendezvousInfo& info, int nproc,
                                                const std::string& local_addr = "",
                                                const std::string& store_route = "") {
  using namespace std::chrono;
  auto& store = rdzv.store();
  NodeAssignment plan;
  plan.round = info.round;
  plan.group_rank = info.group_rank;
  plan.group_world_size = info.group_world_size();
  plan.world_size = 0;
  const std::string master_key = rdzv.round_key(info.round, "master");
  if (info.group_rank == 0) plan.master_port_hold = PortReservation::any();
  rdzv.guarded([&] {
    store.set(rdzv.round_key(info.round, "nproc/" + std::to_string(info.group_rank)),
              std::to_string(nproc) + "\n" + store_route);
  });
  std::vector<std::string> keys;
  for (int r = 0; r < info.group_world_size(); ++r)
    keys.push_back(rdzv.round_key(info.round, "nproc/" + std::to_string(r)));
  const auto deadline = steady_clock::now() + rdzv.settings().join_timeout;
  // False when the round fell apart while waiting.
  auto wait_for = [&](const std::vector<std::string>& wanted) {
    for (;;) {
      bool all = false;
      rdzv.guarded([&] { all = store.wait(wanted, milliseconds(500)); });
      if (all) return true;
      if (rdzv.cancelled()) throw rendezvous::RendezvousError("joining the rendezvous was cancelled");
      auto health = rdzv.check_round(info);
      if (health != rendezvous::RoundHealth::healthy && health != rendezvous::RoundHealth::waiting_nodes) return false;
      if (steady_clock::now() > deadline)
        throw rendezvous::RendezvousTimeoutError("the nodes of round " + std::to_string(info.round) +
                                                 " did not share their worker counts within join_timeout");
    }
  };
  // Rank 0 gathers the counts and hands them out in the master key: the others wait
  // for that one key (a round of N costs N key events, not N for each node).
  std::vector<std::string> plan_lines;
  if (info.group_rank == 0) {
    // Rank 0 names MASTER_ADDR once it knows how the others reach the store.
    if (!wait_for(keys)) return std::nullopt;
    std::vector<std::optional<std::string>> values;
    rdzv.guarded([&] { values = store.get_many(keys); });
    std::vector<std::string> peer_routes;
    std::string counts;
    for (std::size_t r = 0; r < values.size(); ++r) {
      const auto newline = values[r] ? values[r]->find('\n') : std::string::npos;
      if (r > 0) peer_routes.push_back(newline == std::string::npos ? "" : values[r]->substr(newline + 1));
      counts += (r > 0 ? " " : "") + std::to_string(values[r] ? std::atoi(values[r]->c_str()) : 0);
    }
    auto master = choose_master_addr(local_addr, store_route, peer_routes);
    if (!master.why.empty()) log::warning("{}", master.why);
    const std::string value = master.address + "\n" + std::to_string(plan.master_port_hold.port()) + "\n" + counts;
    rdzv.guarded([&] { store.set(master_key, value); });
    plan_lines = {master.address, std::to_string(plan.master_port_hold.port()), counts};
  } else {
    if (!wait_for({master_key})) return std::nullopt;
    std::optional<std::string> value;
    rdzv.guarded([&] { value = store.get(master_key); });
    if (!value) return std::nullopt;
    std::istringstream lines(*value);
    for (std::string line; std::getline(lines, line);) plan_lines.push_back(line);
  }
  plan_lines.resize(3);
  plan.master_addr = plan_lines[0];
  plan.master_port = std::atoi(plan_lines[1].c_str());
  std::istringstream counts(plan_lines[2]);
  int r = 0;
  for (long n = 0; r < info.group_world_size() && counts >> n; ++r) {
    if (n < 0 || n > std::numeric_limits<int>::max() / 2) n = 0;
    if (r < info.group_rank) plan.rank_offset += static_cast<int>(n);
    plan.world_size += static_cast<int>(n);
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
    // Rank 0 waits for every exit key and then writes exit/all; the others wait for
    // that one key (N key events a round, not N for each node).
    const std::string all_key = rdzv.round_key(info.round, "exit/all");
    const std::vector<std::string> waited = info.group_rank == 0 ? keys : std::vector<std::string>{all_key};
    const auto pass = [&] {
      if (info.group_rank == 0) rdzv.guarded([&] { store.set(all_key, "1"); });
    };
    for (;;) {
      // Usually every node gets here within moments: wait for their keys first, and
      // look for the dead and the moved-on only when that takes a while.
      bool all = false;
      rdzv.guarded([&] { all = store.wait(waited, milliseconds(500)); });
      if (all) return pass();
      const auto health = rdzv.check_round(info);
      if (health == rendezvous::RoundHealth::left_behind) return pass();
      // A node waiting for rank 0 reads every exit key only when rank 0 is gone.
      if (info.group_rank != 0 && rdzv.alive_nodes({info.nodes.front()}).count(info.nodes.front()) > 0) {
        if (steady_clock::now() > deadline) {
          log::warning("Exit barrier of round {} timed out after {} s", info.round, limit.count());
          return;
        }
        continue;
      }
      std::vector<std::optional<std::string>> exited;
      rdzv.guarded([&] { exited = store.get_many(keys); });
      auto alive = rdzv.alive_nodes(others);
      bool done = true;
      for (std::size_t i = 0; i < others.size(); ++i)
        if (!exited[i] && alive.count(others[i]) > 0) done = false;
      if (done) return pass();
      if (steady_clock::now() > deadline) {
        log::warning("Exit barrier of round {} timed out after {} s", info.round, limit.count());
        return;
      }
    }
  } catch (const rendezvous::RendezvousError& e) {
    log::warning("Exit barrier of round {}: {}", info.round, e.what());
  }
}

}  // namespace detail

// Checks a dynamic-rendezvous configuration (usage errors), opening nothing.
inline void validate_dynamic(const LaunchConfig& config) {
  auto settings = detail::rendezvous_settings(config);
  try {
    if (config.rdzv_backend == "c10d") {
      rendezvous::parse_endpoint(config.rdzv_endpoint, 29400);
    } else {
      for (const auto& member : rendezvous::split_endpoints(config.rdzv_endpoint))
        rendezvous::parse_endpoint(member, 2379);
    }
  } catch (const rendezvous::RendezvousConfigError& e) {
    throw UsageError(e.what());
  }
  if (config.rdzv_backend != "c10d" && !rendezvous::store_backend_available(config.rdzv_backend))
    throw NotSupportedError("rendezvous backend '" + config.rdzv_backend + "' (this build has no etcd store)");
  try {
    rendezvous::validate_backend_config(config.rdzv_backend, config.rdzv_configs);
    rendezvous::job_secret(config.rdzv_configs);
  } catch (const rendezvous::RendezvousConfigError& e) {
    throw UsageError(e.what());
  }
}

class DynamicMembership final : public Membership {
 public:
  // Connects to the rendezvous backend (throws rendezvous::RendezvousError when it
  // cannot) and keeps this node's session alive from now on.
  explicit DynamicMembership(const LaunchConfig& config)
      : config_(config),
        settings_(detail::rendezvous_settings(config)),
        backend_(rendezvous::open_backend(config.rdzv_backend, config.rdzv_endpoint, settings_,
                                          [](const std::string& line) { log::info("{}", line); })),
        node_{detail::node_address(config), static_cast<long>(::getpid()), next_handler()},
        rdzv_(backend_.store, settings_, node_),
        keep_alive_(rdzv_, std::chrono::duration_cast<std::chrono::milliseconds>(settings_.keep_alive_interval)),
        round_check_(rdzv_) {}

  std::optional<NodeAssignment> join(int restart_count, SignalReader& signals) override {
    const std::function<std::optional<std::string>()> isolated = [this] { return store_host_isolated(); };
    rendezvous::RendezvousInfo info;
    std::optional<NodeAssignment> plan;
    try {
      info = detail::interruptible(
          rdzv_, signals, [&] { return rdzv_.next_rendezvous(last_round_); }, isolated);
      last_round_ = info.round;
      plan = detail::interruptible(
          rdzv_, signals,
          [&] { return detail::plan_round(rdzv_, info, config_.nproc_per_node, config_.local_addr, store_route()); },
          isolated);
    } catch (const rendezvous::RendezvousConnectionError& e) {
      // A launcher that only connects to the c10d store: without its host, the job is over.
      if (config_.rdzv_backend != "c10d" || backend_.server) throw;
      throw rendezvous::RendezvousConnectionError(
          std::string(e.what()) + " (the c10d store lives with the launcher on " + endpoint() +
          ": a job cannot go on without that host; an etcd cluster outlives any one member)");
    }
    if (!plan) {
      log::warning("[{}] round {} changed before it started; rejoining", config_.role, info.round);
      return std::nullopt;
    }
    log::info(
        "[{}] Rendezvous complete for workers. Result: restart_count={} master_addr={} master_port={} "
        "group_rank={} group_world_size={} ranks={}..{} world_size={}",
        config_.role, restart_count, plan->master_addr, plan->master_port, info.group_rank, info.group_world_size(),
        plan->rank_offset, plan->rank_offset + config_.nproc_per_node - 1, plan->world_size);
    board_.emplace(rdzv_.store(), rdzv_.round_key(info.round, "failures/"));
    failed_ = false;
    round_ = std::move(info);
    return plan;
  }

  // How often the round is looked at between worker events.
  std::chrono::milliseconds poll_interval() const override {
    return std::chrono::milliseconds(std::clamp(static_cast<long>(config_.monitor_interval * 1000), 100L, 1000L));
  }

  // Never waits on the store for longer than poll_interval(). A node whose session
  // has lapsed (no renewal got through within session_ttl, so the others count it
  // dead and may already run a round without it) stops its workers at once and
  // joins again: a node cut off then fails to join, one that was only stopped
  // (SIGSTOP) rejoins.
  std::optional<std::string> round_changed() override {
    if (auto error = keep_alive_.error()) throw rendezvous::RendezvousConnectionError(*error);
    using namespace std::chrono;
    const auto ttl = settings_.session_ttl();
    if (const auto quiet = keep_alive_.since_renewed(); quiet > ttl) {
      char text[200];
      std::snprintf(text, sizeof(text),
                    ") has not been reached for %.1f s: no keep-alive got through, and the other nodes count this "
                    "node dead after %.1f s (keep_alive_interval x keep_alive_max_attempt)",
                    duration<double>(quiet).count(), duration<double>(ttl).count());
      return "this node's session lapsed: the rendezvous store (" + endpoint_text() + text;
    }
    // The look job_failures() took in this pass of the loop, else one now.
    auto answer = std::move(last_check_);
    last_check_.reset();
    if (!answer) answer = round_check_.check(*round_, {}, poll_interval());
    if (!answer || answer->health == rendezvous::RoundHealth::healthy ||
        answer->health == rendezvous::RoundHealth::closed)
      return std::nullopt;
    return rendezvous::to_string(answer->health);
  }

  void publish_failure(const FailureReport& report) override {
    if (!board_) return;
    failed_ = true;
    FailureReport mine = report;
    mine.node = node_.to_string();
    try {
      board_->publish(std::move(mine));
    } catch (const rendezvous::StoreError& e) {
      log::warning("[{}] cannot tell the other nodes of the failure: {}", config_.role, e.what());
    }
  }

  // Read on the round's look-out thread with the round's health (kept for
  // round_changed()), so that an unanswered store request never blocks the loop.
  std::vector<FailureReport> job_failures() override {
    if (!board_ || !round_) return {};
    try {
      last_check_ = round_check_.check(
          *round_,
          // A copy of the board (the store and the round's prefix): the look may
          // still run when the next round replaces board_.
          [this, board = *board_]() mutable -> std::vector<FailureReport> {
            try {
              return board.others();
            } catch (const rendezvous::StoreError& e) {
              log::debug("[{}] reading the job's failures: {}", config_.role, e.what());
              return {};
            }
          },
          poll_interval());
    } catch (const rendezvous::RendezvousError& e) {
      log::debug("[{}] looking at the round: {}", config_.role, e.what());
      return {};
    }
    if (!last_check_) return {};
    auto reports = last_check_->failures;
    if (!reports.empty()) failed_ = true;
    return reports;
  }

  void finish() override {
    if (!round_) return;
    log::debug("[{}] exit barrier of round {}", config_.role, round_->round);
    // After a failure every node learns of it within a poll interval (at most 1 s)
    // and ends: a node that does not by then is not waited for long.
    detail::exit_barrier(rdzv_, *round_, failed_ ? failure_wait : std::chrono::seconds(300));
    log::debug("[{}] exit barrier passed; closing the rendezvous", config_.role);
    try {
      rdzv_.close();
    } catch (const rendezvous::RendezvousError& e) {
      log::warning("Closing the rendezvous: {}", e.what());
    }
    release_store();
  }

 private:
  static long next_handler() {
    static std::atomic<long> handlers{0};
    return handlers++;
  }

  // The store's host serves the others until they are done with it: it waits (up
  // to close_timeout) for the round's other launchers to disconnect.
  void release_store() {
    if (!backend_.server) return;
    std::vector<rendezvous::NodeDesc> others;
    for (const auto& n : round_->nodes)
      if (!(n == node_)) others.push_back(n);
    const auto deadline =
        std::chrono::steady_clock::now() +
        (failed_ ? std::min<std::chrono::steady_clock::duration>(settings_.close_timeout, failure_wait)
                 : std::chrono::steady_clock::duration(settings_.close_timeout));
    try {
      while (rdzv_.alive_nodes(others).size() > 1 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } catch (const rendezvous::RendezvousError&) {
    }
  }

  // The c10d store's host, rejoining, that no other host has reached for
  // read_timeout (after some had): it is cut off from them, or they are all gone.
  // Waiting for join_timeout would only keep its workers' slots; the others, who
  // cannot reach the store, give up after their read_timeout too.
  std::optional<std::string> store_host_isolated() {
    if (!backend_.server) return std::nullopt;
    const auto since = backend_.server->since_remote_request();
    if (!since || *since < settings_.read_timeout) return std::nullopt;
    char text[300];
    std::snprintf(text, sizeof(text),
                  "no other host has reached the c10d store served here (%s) for %.1f s (read_timeout %lld s): this "
                  "host is cut off from the others, or they are all gone, and a job on c10d cannot go on without "
                  "its store's host (an etcd cluster outlives any one member)",
                  endpoint().c_str(), std::chrono::duration<double>(*since).count(),
                  static_cast<long long>(settings_.read_timeout.count()));
    return std::string(text);
  }

  std::string endpoint() const { return config_.rdzv_endpoint.empty() ? "localhost" : config_.rdzv_endpoint; }
  std::string endpoint_text() const { return config_.rdzv_backend + " " + endpoint(); }
  // The address this host reaches the store from (see host_address.hpp).
  std::string store_route() const {
    try {
      // etcd: the first member's route stands for the cluster's.
      const std::string first = config_.rdzv_backend == "c10d" ? config_.rdzv_endpoint
                                                               : rendezvous::split_endpoints(config_.rdzv_endpoint)[0];
      auto [host, port] = rendezvous::parse_endpoint(first, config_.rdzv_backend == "c10d" ? 29400 : 2379);
      return route_source_address(host, port);
    } catch (const rendezvous::RendezvousConfigError&) {
      return "";
    }
  }

  const LaunchConfig& config_;
  const rendezvous::RendezvousSettings settings_;
  rendezvous::RendezvousBackend backend_;
  rendezvous::NodeDesc node_;
  rendezvous::DynamicRendezvous rdzv_;
  detail::KeepAlive keep_alive_;
  detail::RoundCheck round_check_;
  std::optional<rendezvous::RendezvousInfo> round_;       // the round this node's workers run in
  std::optional<long> last_round_;                        // the last round this node was in
  std::optional<detail::RoundCheck::Answer> last_check_;  // taken by job_failures(), read by round_changed()
  std::optional<FailureBoard> board_;                     // the round's failure keys
  bool failed_ = false;                                   // a worker of the job failed for good
  static constexpr std::chrono::seconds failure_wait{3};
};

}  // namespace elastic::launcher
