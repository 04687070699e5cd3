// Static multi-node launches (--nnodes=N, no MIN:MAX): the N launchers wait for
// each other before any worker starts, so a node that never comes is a clear
// RendezvousTimeoutError at the launcher (join_timeout, 600 s by default), not
// workers hanging until PyTorch's own timeout.
//
// Node 0 serves one of our c10d stores at MASTER_PORT for the barrier alone, and
// closes it before its workers start: worker rank 0 binds that port for PyTorch's
// TCPStore (TORCHELASTIC_USE_AGENT_STORE=False).
//   every node   claims nodes/<node rank> (a rank claimed twice is an error) and
//                marks itself there (alive/<node rank>, one per session)
//   node 0       waits until all N are there, stops accepting connections, writes
//                "go", waits (60 s at most) for the others to end their sessions,
//                closes the store and starts its workers
//   other nodes  wait for "go" alone (not for all N: a node that saw "go" leaves,
//                and its mark with it, so a slower node would never see all N at
//                once), end their session and start their workers; those workers'
//                TCPStore clients find the port refused until rank 0 listens on it,
//                and retry, as PyTorch's clients do
// Only the first attempt waits: a restarted group meets in PyTorch's store again.
// With "go", node 0 gives the port of a second store it serves (a free port) for
// as long as it runs: the job's failures travel there (static_membership.hpp).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <elastic/errors/hostname.hpp>
#include <elastic/log.hpp>
#include <elastic/rendezvous/c10d_store.hpp>
#include <elastic/rendezvous/errors.hpp>
#include <elastic/rendezvous/settings.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace elastic::launcher::detail {

// How long a static launch waits for its peers: --rdzv-conf join_timeout, else
// timeout (the key of PyTorch's static rendezvous), else 600 s. Throws
// RendezvousConfigError for a value that is not a positive integer.
inline std::chrono::seconds static_join_timeout(const std::map<std::string, std::string>& rdzv_configs) {
  const int legacy = rendezvous::positive_integer_setting(rdzv_configs, "timeout", 600);
  return std::chrono::seconds(rendezvous::positive_integer_setting(rdzv_configs, "join_timeout", legacy));
}

struct StaticBarrierOptions {
  std::string master_addr;  // where node 0 serves the barrier
  int master_port = 0;
  int node_rank = 0;
  int nnodes = 1;
  std::string run_id;
  std::chrono::milliseconds timeout{std::chrono::seconds(600)};  // for every node to arrive
  // Called between waits (every 200 ms at most): a signal number stops the barrier
  // (the caller throws), 0 goes on.
  std::function<int()> pending_signal = [] { return 0; };
  // The port of the store that carries the job's failures while the workers run
  // (job_failures.hpp): node 0 gives it, the others get it with "go". Not shared
  // when null.
  int* failure_port = nullptr;
};

// Waits for the other launchers of a static job. Returns 0 when all N arrived, or
// the number of a signal that came first. Throws RendezvousTimeoutError,
// RendezvousConnectionError (node 0 cannot serve the port, or went away),
// RendezvousStateError (two launchers claim one node rank).
inline int static_barrier(const StaticBarrierOptions& options) {
  using namespace std::chrono;
  using rendezvous::RendezvousConnectionError;
  const auto deadline = steady_clock::now() + options.timeout;
  const std::string where = options.master_addr + ":" + std::to_string(options.master_port);
  const bool host = options.node_rank == 0;
  const std::string prefix = "static/" + options.run_id + "/";
  auto left = [&] { return duration_cast<milliseconds>(deadline - steady_clock::now()); };
  auto timed_out = [&](const std::string& what) {
    return rendezvous::RendezvousTimeoutError("the static rendezvous of " + std::to_string(options.nnodes) +
                                              " nodes at " + where + " did not complete within " +
                                              std::to_string(duration_cast<seconds>(options.timeout).count()) +
                                              " s: " + what + " (--rdzv-conf join_timeout)");
  };

  std::unique_ptr<rendezvous::C10dStoreServer> server;
  if (host) {
    try {
      server = std::make_unique<rendezvous::C10dStoreServer>(options.master_port, seconds(10));
    } catch (const std::system_error& e) {
      throw RendezvousConnectionError("node 0 cannot serve the static rendezvous on port " +
                                      std::to_string(options.master_port) + ": " + e.code().message());
    }
  }

  // A connection attempt at a time, so that a signal is noticed between them. The
  // barrier's requests are tiny: a short read timeout bounds each.
  rendezvous::StoreOptions store_options;
  store_options.host = host ? "127.0.0.1" : options.master_addr;
  store_options.port = options.master_port;
  store_options.read_timeout = seconds(2);
  std::unique_ptr<rendezvous::C10dStoreClient> store;
  for (;;) {
    if (int sig = options.pending_signal(); sig != 0) return sig;
    try {
      store = std::make_unique<rendezvous::C10dStoreClient>(store_options);
      break;
    } catch (const rendezvous::StoreError& e) {
      if (std::string(e.what()).find("not an elastic-run rendezvous store") != std::string::npos)
        throw RendezvousConnectionError(std::string(e.what()) + " (is --master-port taken by another service?)");
    }
    if (left().count() <= 0) throw timed_out("node 0 never answered");
  }

  std::vector<std::string> arrived;
  for (int r = 0; r < options.nnodes; ++r) arrived.push_back(prefix + "alive/" + std::to_string(r));
  // At the deadline: which node ranks are not there (as far as this node can tell).
  auto missing = [&] {
    auto marks = store->get_many(arrived);
    std::string ranks;
    int count = 0;
    for (std::size_t r = 0; r < marks.size(); ++r)
      if (!marks[r]) ranks += (count++ == 0 ? "" : ", ") + std::to_string(r);
    if (count == 0) return std::string("node 0 did not give the start");
    return (count == 1 ? "node rank " : "node ranks ") + ranks + " never arrived";
  };

  // Waits for `keys` in short slices; false when a signal came (sig set).
  int sig = 0;
  auto wait_for = [&](const std::vector<std::string>& keys) {
    for (;;) {
      if ((sig = options.pending_signal()) != 0) return false;
      store->keep_alive();  // a session without keep-alives ends after its TTL (15 s)
      if (store->wait(keys, std::min(milliseconds(200), std::max(left(), milliseconds(1))))) return true;
      if (left().count() <= 0) throw timed_out(missing());
    }
  };

  try {
    // A rank's claim names its launcher; a claim whose launcher's session is gone
    // (it died, and was started again) may be taken over.
    const std::string rank = std::to_string(options.node_rank);
    const std::string token = elastic::fqdn() + ":" + std::to_string(::getpid());
    auto claimed = store->compare_set(prefix + "nodes/" + rank, std::nullopt, token);
    if (!claimed.swapped && (store->get(prefix + "alive/" + rank) ||
                             !store->compare_set(prefix + "nodes/" + rank, claimed.current, token).swapped))
      throw rendezvous::RendezvousStateError("node rank " + rank + " of the static job at " + where +
                                             " is already taken by the launcher " + claimed.current.value_or("?"));
    store->set_ephemeral(prefix + "alive/" + rank, "1");
    if (!host) {
      if (!wait_for({prefix + "go"})) return sig;
      if (options.failure_port != nullptr) {
        auto port = store->get(prefix + "failures_port");
        *options.failure_port = port ? std::atoi(port->c_str()) : 0;
      }
    } else {
      if (!wait_for(arrived)) return sig;
      server->stop_accepting();
      if (options.failure_port != nullptr) store->set(prefix + "failures_port", std::to_string(*options.failure_port));
      store->set(prefix + "go", "1");
      // The others end their sessions on "go"; the store goes after them, so that
      // none of them sees it vanish before it saw "go" (a loaded host may take
      // seconds to schedule them: only one that is stopped or hung is given up on).
      const std::vector<std::string> others(arrived.begin() + 1, arrived.end());
      const auto release_by = steady_clock::now() + seconds(60);
      for (;;) {
        store->keep_alive();
        auto alive = store->get_many(others);
        const bool any = std::any_of(alive.begin(), alive.end(), [](const auto& value) { return value.has_value(); });
        if (!any || steady_clock::now() >= release_by) break;
        std::this_thread::sleep_for(milliseconds(20));
      }
    }
  } catch (const rendezvous::StoreError& e) {
    throw RendezvousConnectionError("the static rendezvous at " + where + ": " + e.what());
  }
  log::info("static rendezvous of {} nodes complete", options.nnodes);
  return 0;
}

}  // namespace elastic::launcher::detail
