// The state of one rendezvous (one run id), as stored under a single key and
// replaced whole by compare-and-set, and the pure decision of what a joining node
// does next: PyTorch's dynamic rendezvous algorithm (torch 1.13), with liveness
// read from ephemeral keys rather than from hosts' wall clocks.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <elastic/rendezvous/detail/bounded_json.hpp>
#include <elastic/rendezvous/errors.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace elastic::rendezvous {

// A node: the launcher process on a host, plus a counter for several rendezvous
// handlers in one process. Ordered by (host, pid, counter): group rank 0 on one
// host is the launcher with the lower pid.
struct NodeDesc {
  std::string host;
  long pid = 0;
  long local_id = 0;

  std::string to_string() const { return host + ":" + std::to_string(pid) + ":" + std::to_string(local_id); }
  static NodeDesc parse(const std::string& text) {
    auto last = text.rfind(':');
    auto middle = last == std::string::npos || last == 0 ? std::string::npos : text.rfind(':', last - 1);
    if (middle == std::string::npos) throw RendezvousStateError("invalid node in the rendezvous state: " + text);
    try {
      return NodeDesc{text.substr(0, middle), std::stol(text.substr(middle + 1, last - middle - 1)),
                      std::stol(text.substr(last + 1))};
    } catch (const std::exception&) {
      throw RendezvousStateError("invalid node in the rendezvous state: " + text);
    }
  }
  friend bool operator<(const NodeDesc& a, const NodeDesc& b) {
    return std::tie(a.host, a.pid, a.local_id) < std::tie(b.host, b.pid, b.local_id);
  }
  friend bool operator==(const NodeDesc& a, const NodeDesc& b) {
    return std::tie(a.host, a.pid, a.local_id) == std::tie(b.host, b.pid, b.local_id);
  }
};

struct RendezvousState {
  long round = 0;
  bool complete = false;
  bool closed = false;
  // Set when the participants reached MIN (incomplete round); each new last call
  // gets a new number, so a node times it from when it first saw that number.
  long last_call = 0;  // 0: none running
  long last_call_counter = 0;
  std::map<NodeDesc, int> participants;  // node -> group rank (set when complete)
  std::set<NodeDesc> wait_list;

  std::string encode() const {
    nlohmann::json j;
    j["version"] = 1;
    j["round"] = round;
    j["complete"] = complete;
    j["closed"] = closed;
    j["last_call"] = last_call;
    j["last_call_counter"] = last_call_counter;
    j["participants"] = nlohmann::json::object();
    for (const auto& [node, rank] : participants) j["participants"][node.to_string()] = rank;
    j["wait_list"] = nlohmann::json::array();
    for (const auto& node : wait_list) j["wait_list"].push_back(node.to_string());
    return j.dump();
  }
  static RendezvousState decode(const std::string& text) {
    try {
      auto j = detail::parse_json_bounded(text);
      if (j.at("version").get<int>() != 1) throw RendezvousStateError("unknown rendezvous state version");
      RendezvousState s;
      s.round = j.at("round").get<long>();
      s.complete = j.at("complete").get<bool>();
      s.closed = j.at("closed").get<bool>();
      s.last_call = j.at("last_call").get<long>();
      s.last_call_counter = j.at("last_call_counter").get<long>();
      for (const auto& [node, rank] : j.at("participants").items())
        s.participants[NodeDesc::parse(node)] = rank.get<int>();
      for (const auto& node : j.at("wait_list")) s.wait_list.insert(NodeDesc::parse(node.get<std::string>()));
      return s;
    } catch (const nlohmann::json::exception& e) {
      throw RendezvousStateError(std::string("the stored rendezvous state is not ours: ") + e.what());
    } catch (const detail::JsonTooDeep& e) {
      throw RendezvousStateError(std::string("the stored rendezvous state is not ours: ") + e.what());
    }
  }

  // The nodes of the round, in group-rank order.
  std::vector<NodeDesc> ranked() const {
    std::vector<NodeDesc> nodes(participants.size());
    for (const auto& [node, rank] : participants)
      if (rank >= 0 && rank < static_cast<int>(nodes.size())) nodes[static_cast<std::size_t>(rank)] = node;
    return nodes;
  }
};

// What a joining node does next.
enum class JoinAction {
  finish,                    // in the complete round
  error_closed,              // RendezvousClosedError
  error_timeout,             // RendezvousTimeoutError
  remove_from_participants,  // join deadline passed: leave before failing
  remove_from_wait_list,
  add_to_participants,
  add_to_wait_list,
  mark_complete,  // last call over
  wait,           // for a change, a deadline, or the next liveness check
};

struct JoinContext {
  NodeDesc node;
  int min_nodes = 1;
  int max_nodes = 1;
  bool join_deadline_passed = false;
  bool join_grace_passed = false;  // deadline + 5 s: stop trying to leave cleanly
  bool last_call_passed = false;
};

inline JoinAction next_join_action(const RendezvousState& s, const JoinContext& c) {
  if (s.closed) return JoinAction::error_closed;
  const bool participant = s.participants.count(c.node) > 0;
  if (s.complete && participant) return JoinAction::finish;
  if (c.join_deadline_passed) {
    if (!c.join_grace_passed) {
      if (participant) return JoinAction::remove_from_participants;
      if (s.wait_list.count(c.node) > 0) return JoinAction::remove_from_wait_list;
    }
    return JoinAction::error_timeout;
  }
  if (s.complete) {
    if (static_cast<int>(s.participants.size()) < c.max_nodes && s.wait_list.count(c.node) == 0)
      return JoinAction::add_to_wait_list;
  } else if (participant) {
    if (static_cast<int>(s.participants.size()) >= c.min_nodes && c.last_call_passed) return JoinAction::mark_complete;
  } else {
    return JoinAction::add_to_participants;
  }
  return JoinAction::wait;
}

namespace transitions {

inline void mark_complete(RendezvousState& s) {
  s.complete = true;
  s.last_call = 0;
  int rank = 0;
  for (auto& [node, r] : s.participants) r = rank++;  // std::map: sorted by NodeDesc
}

inline void add_to_participants(RendezvousState& s, const NodeDesc& node, int min_nodes, int max_nodes) {
  s.wait_list.erase(node);
  s.participants[node] = 0;
  const int size = static_cast<int>(s.participants.size());
  if (size == min_nodes) s.last_call = ++s.last_call_counter;
  if (size == max_nodes) mark_complete(s);
}

// Whether add_joining() below would change `s` for `node`.
inline bool joining_changes(const RendezvousState& s, const NodeDesc& node, int max_nodes) {
  if (s.closed || s.participants.count(node) > 0) return false;
  return !s.complete || (static_cast<int>(s.participants.size()) < max_nodes && s.wait_list.count(node) == 0);
}

// What a node asking to join gets, as next_join_action() would have it do: a place
// among the participants of an incomplete round, or in the wait list of a complete
// one with room. Returns whether anything changed.
inline bool add_joining(RendezvousState& s, const NodeDesc& node, int min_nodes, int max_nodes) {
  if (!joining_changes(s, node, max_nodes)) return false;
  if (!s.complete)
    add_to_participants(s, node, min_nodes, max_nodes);
  else
    s.wait_list.insert(node);
  return true;
}

// After a participant left or was found dead: an emptied complete round moves on to
// the next, an incomplete one below MIN stops its last call.
inline void participant_removed(RendezvousState& s, int min_nodes) {
  if (s.complete) {
    if (s.participants.empty()) {
      s.complete = false;
      ++s.round;
    }
  } else if (static_cast<int>(s.participants.size()) < min_nodes) {
    s.last_call = 0;
  }
}

inline void remove_from_participants(RendezvousState& s, const NodeDesc& node, int min_nodes) {
  if (s.participants.erase(node) > 0) participant_removed(s, min_nodes);
}

// Drops the nodes `alive` says are gone; returns whether anything changed.
template <typename IsAlive>
bool remove_dead(RendezvousState& s, IsAlive&& alive, int min_nodes) {
  bool changed = false;
  for (auto it = s.wait_list.begin(); it != s.wait_list.end();) {
    if (!alive(*it)) {
      it = s.wait_list.erase(it);
      changed = true;
    } else {
      ++it;
    }
  }
  for (auto it = s.participants.begin(); it != s.participants.end();) {
    if (!alive(it->first)) {
      it = s.participants.erase(it);
      participant_removed(s, min_nodes);
      changed = true;
    } else {
      ++it;
    }
  }
  return changed;
}

// A complete round that lost participants, taken on by a survivor: the next round,
// complete at once, of its live participants and the live nodes of its wait list
// (up to MAX), ranked anew. No last call: the nodes that could join are all in it,
// and one that comes later waits in the wait list as usual. False (nothing changed)
// when no participant is dead or fewer than MIN nodes would remain.
template <typename IsAlive>
bool carry_survivors(RendezvousState& s, IsAlive&& alive, int min_nodes, int max_nodes) {
  if (!s.complete || s.closed) return false;
  std::vector<NodeDesc> next;
  bool lost = false;
  for (const auto& [node, rank] : s.participants) {
    if (alive(node))
      next.push_back(node);
    else
      lost = true;
  }
  if (!lost) return false;
  std::set<NodeDesc> waiting;
  for (const auto& node : s.wait_list) {
    if (!alive(node)) continue;
    if (static_cast<int>(next.size()) < max_nodes)
      next.push_back(node);
    else
      waiting.insert(node);
  }
  if (static_cast<int>(next.size()) < min_nodes) return false;
  ++s.round;
  s.participants.clear();
  for (const auto& node : next) s.participants[node] = 0;
  s.wait_list = std::move(waiting);
  mark_complete(s);
  return true;
}

}  // namespace transitions

}  // namespace elastic::rendezvous
