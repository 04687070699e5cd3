// Owns the server's open connections: counts them in all and per peer address,
// closes them all at shutdown, and picks which to let go at the limit.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace elastic::rendezvous::c10d {

// Connection: start(), close(), peer(), expendable() (its session has lapsed).
template <typename Connection>
class ConnectionManager {
 public:
  void start(const std::shared_ptr<Connection>& connection) {
    connections_.insert(connection);
    ++per_peer_[connection->peer()];
    connection->start();
  }
  // Called by a connection that closed.
  void forget(Connection* connection) {
    for (auto it = connections_.begin(); it != connections_.end(); ++it)
      if (it->get() == connection) {
        auto peer = per_peer_.find(connection->peer());
        if (peer != per_peer_.end() && --peer->second == 0) per_peer_.erase(peer);
        connections_.erase(it);
        return;
      }
  }
  void close_all() {
    auto all = connections_;
    for (const auto& connection : all) connection->close();
  }
  std::size_t size() const { return connections_.size(); }
  std::size_t from(const std::string& peer) const {
    auto it = per_peer_.find(peer);
    return it == per_peer_.end() ? 0 : it->second;
  }
  // Closes one connection whose session lapsed (from `peer` when given); false when none.
  bool evict_expendable(const std::string& peer = {}) {
    for (const auto& connection : connections_)
      if (connection->expendable() && (peer.empty() || connection->peer() == peer)) {
        // close() drops the set's reference: keep the connection alive until it returns.
        // NOLINTNEXTLINE(performance-unnecessary-copy-initialization)
        auto keep = connection;
        keep->close();
        return true;
      }
    return false;
  }
  template <typename F>
  void for_each(F&& f) const {
    for (const auto& connection : connections_) f(*connection);
  }

 private:
  std::set<std::shared_ptr<Connection>> connections_;
  std::map<std::string, std::size_t> per_peer_;
};

// Says once per (kind, peer) why peers were refused, so a flood costs a few lines.
class RejectionLog {
 public:
  template <typename Log>
  void note(const Log& log, const std::string& kind, const std::string& peer, const std::string& detail) {
    ++counts_[kind];
    const std::string id = kind + " " + peer;
    if (seen_.count(id) > 0) return;
    if (seen_.size() >= 1024) {
      if (!full_noted_.insert(kind).second) return;
      log("c10d store: refusing more peers (" + kind + "); further ones are not logged");
      return;
    }
    seen_.insert(id);
    log("c10d store: refused " + peer + ": " + detail + " (logged once per peer)");
  }
  std::size_t count(const std::string& kind) const {
    auto it = counts_.find(kind);
    return it == counts_.end() ? 0 : it->second;
  }

 private:
  std::set<std::string> seen_;
  std::set<std::string> full_noted_;
  std::map<std::string, std::size_t> counts_;
};

}  // namespace elastic::rendezvous::c10d
