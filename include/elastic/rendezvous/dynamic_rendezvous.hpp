// The dynamic rendezvous over any Store: nodes join a round, the round completes at
// MAX nodes at once or after the last call once MIN joined, nodes arriving at a
// complete round wait in the wait list, dead nodes are dropped, and the job's end
// closes it. A node is alive while its ephemeral key is (see store.hpp): no host's
// wall clock is read by another.
//
// Keys, under "rdzv/<run id>/":
//   state               the RendezvousState (JSON), replaced by compare_set
//   alive/<node>        ephemeral, one per node; join/<node>: ephemeral, the node asks to be added
//   round/<n>/...       what the agent shares within round n (see round_key()); notify: see write()
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <elastic/rendezvous/errors.hpp>
#include <elastic/rendezvous/settings.hpp>
#include <elastic/rendezvous/state.hpp>
#include <elastic/rendezvous/store.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace elastic::rendezvous {

// One completed round as this node sees it.
struct RendezvousInfo {
  long round = 0;
  int group_rank = 0;
  std::vector<NodeDesc> nodes;  // in group-rank order
  int group_world_size() const { return static_cast<int>(nodes.size()); }
};

// What the agent's monitor learns about its current round.
enum class RoundHealth {
  healthy,
  closed,            // the job ended elsewhere; finish what runs
  waiting_nodes,     // nodes in the wait list: restart at a larger size
  participant_lost,  // a node of the round died: restart at a smaller size
  left_behind,       // the round moved on without this node (e.g. after a long stop)
};

inline const char* to_string(RoundHealth health) {
  switch (health) {
    case RoundHealth::healthy: return "healthy";
    case RoundHealth::closed: return "closed";
    case RoundHealth::waiting_nodes: return "nodes waiting to join";
    case RoundHealth::participant_lost: return "a participant was lost";
    case RoundHealth::left_behind: return "the round moved on without this node";
  }
  return "?";
}

class DynamicRendezvous {
 public:
  using Clock = std::chrono::steady_clock;
  using Now = std::function<Clock::time_point()>;

  // How long a node keeps trying to leave cleanly after its join deadline.
  static constexpr std::chrono::seconds rollback_period{5};
  // Dead nodes are looked for at least this often while joining, by each node of a
  // round of up to liveness_share members; in a larger one each looks that much less
  // often (at a random phase), so that the round as a whole looks as often.
  static constexpr std::chrono::milliseconds liveness_poll{500};
  static constexpr std::size_t liveness_share = 16;
  // How long a node waits for the first of the joining nodes to add it before it adds
  // the waiting nodes itself.
  static constexpr std::chrono::seconds fold_fallback{1};

  DynamicRendezvous(
      std::shared_ptr<Store> store, RendezvousSettings settings, NodeDesc node, Now now = [] { return Clock::now(); })
      : store_(std::move(store)), settings_(std::move(settings)), node_(std::move(node)), now_(std::move(now)) {}

  const NodeDesc& node() const { return node_; }
  const RendezvousSettings& settings() const { return settings_; }
  Store& store() { return *store_; }

  std::string state_key() const { return "rdzv/" + settings_.run_id + "/state"; }
  std::string alive_prefix() const { return "rdzv/" + settings_.run_id + "/alive/"; }
  std::string alive_key(const NodeDesc& node) const { return alive_prefix() + node.to_string(); }
  std::string join_prefix() const { return "rdzv/" + settings_.run_id + "/join/"; }
  std::string join_key(const NodeDesc& node) const { return join_prefix() + node.to_string(); }
  std::string notify_key() const { return "rdzv/" + settings_.run_id + "/notify"; }
  std::string round_key(long round, const std::string& name) const {
    return "rdzv/" + settings_.run_id + "/round/" + std::to_string(round) + "/" + name;
  }

  // Leaves the round this node is in (if any) and joins the next complete one.
  // `previous_round`: the round this node's workers ran in. When that round lost
  // participants, the first survivor here takes every live node of it on into the
  // next round, complete at once (transitions::carry_survivors), and the others find
  // themselves in it: a lost node costs no last call.
  //
  // A node does not add itself to the state: it writes its join key and one node,
  // the first of those waiting to be added, adds all of them in one write. Nodes in
  // the state wait on the notify key, which changes only when what they wait for may
  // have come (see significant()), not at every node added.
  RendezvousInfo next_rendezvous(std::optional<long> previous_round = std::nullopt) {
    const auto deadline = now_() + settings_.join_timeout;
    // Written here, not at construction: the first request to the store may block
    // (an etcd that answers slowly), and this step is the one a launcher can cancel.
    guarded([&] { store_->set_ephemeral(alive_key(node_), "1"); });
    update([&](RendezvousState& s) {
      if (previous_round && s.complete && !s.closed && s.participants.count(node_) > 0 && s.round >= *previous_round) {
        auto alive = alive_nodes(members(s));
        if (transitions::carry_survivors(
                s, [&](const NodeDesc& node) { return alive.count(node) > 0; }, settings_.min_nodes,
                settings_.max_nodes))
          return true;
        if (s.round > *previous_round) return false;  // taken on by another survivor: in it already
      }
      bool changed = s.wait_list.erase(node_) > 0;
      if (s.participants.count(node_) > 0) {
        transitions::remove_from_participants(s, node_, settings_.min_nodes);
        changed = true;
      }
      return changed;
    });
    guarded([&] { store_->set_ephemeral(join_key(node_), "1"); });
    join_key_written_ = true;
    try {
      return join(deadline);
    } catch (...) {
      withdraw();
      throw;
    }
  }

  // Makes a next_rendezvous() running on another thread give up (RendezvousError)
  // within liveness_poll: the launcher was told to stop. A store request blocked
  // meanwhile (an etcd gateway answering slowly) is stopped too (Store::cancel()).
  void cancel() {
    cancelled_ = true;
    store_->cancel();
  }
  bool cancelled() const { return cancelled_; }

  // Renews this node's session and writes its alive key again: a key deleted by
  // anyone (a lapsed session, a stray remove) is back within one keep-alive.
  void keep_alive() {
    guarded([&] {
      store_->keep_alive();
      store_->set_ephemeral(alive_key(node_), "1");
    });
  }

  // Where the rendezvous reports what it ignores (a state it cannot read); default:
  // standard error.
  void set_log(std::function<void(const std::string&)> log) { log_ = std::move(log); }

  // Whether `round` still stands as it was formed.
  RoundHealth check_round(const RendezvousInfo& round) {
    const RendezvousState state = read().state;
    if (unreadable_) return RoundHealth::healthy;  // ignored (logged); the round runs on
    if (state.closed) return RoundHealth::closed;
    if (state.round != round.round || !state.complete || state.participants.count(node_) == 0)
      return RoundHealth::left_behind;
    std::vector<NodeDesc> others;
    for (const auto& node : round.nodes)
      if (!(node == node_)) others.push_back(node);
    auto alive = alive_nodes(others);
    for (const auto& node : others)
      if (alive.count(node) == 0) return RoundHealth::participant_lost;
    if (!state.wait_list.empty()) return RoundHealth::waiting_nodes;
    return RoundHealth::healthy;
  }

  // Of `nodes`, those whose alive key exists: the alive keys listed in one request
  // (keys only), not each read, so that a look at a round of N costs one short answer.
  std::set<NodeDesc> alive_nodes(const std::vector<NodeDesc>& nodes) {
    std::vector<std::string> keys;
    guarded([&] { keys = store_->list_keys(alive_prefix()); });
    std::sort(keys.begin(), keys.end());
    std::set<NodeDesc> result;
    for (const auto& node : nodes)
      if (std::binary_search(keys.begin(), keys.end(), alive_key(node))) result.insert(node);
    result.insert(node_);
    return result;
  }

  // Marks the rendezvous closed: the job is over, later nodes get RendezvousClosedError.
  void close() {
    update([](RendezvousState& s) {
      if (s.closed) return false;
      s.closed = true;
      return true;
    });
  }

  bool is_closed() { return read().state.closed; }

  // Runs `op` on the store, turning store failures into RendezvousConnectionError.
  template <typename Op>
  void guarded(Op&& op) {
    try {
      op();
    } catch (const StoreError& e) {
      throw RendezvousConnectionError(std::string("The connection to the rendezvous store failed: ") + e.what());
    }
  }

 private:
  // The join loop of next_rendezvous(): reads the state, acts on it, waits.
  RendezvousInfo join(Clock::time_point deadline) {
    // The state as last seen: a failed compare-and-set hands back the one that won.
    std::optional<Snapshot> seen;
    Clock::time_point next_liveness_check{};  // the first look is at once
    Clock::time_point pending_since{};        // since when this node waits to be added ({}: it does not)
    for (;;) {
      if (cancelled_) throw RendezvousError("joining the rendezvous was cancelled");
      Snapshot snapshot = seen ? std::move(*seen) : read_with_notify();
      seen.reset();
      const auto& raw = snapshot.raw;
      auto& state = snapshot.state;
      // Alive keys are read at most every liveness period (a read of every member's
      // key), which grows with the members: the nodes of a large round take turns.
      const auto members_count = state.participants.size() + state.wait_list.size();
      if (next_liveness_check == Clock::time_point{} && members_count > liveness_share)
        next_liveness_check = Clock::now() + jittered(liveness_period(members_count));
      if (!state.closed && Clock::now() >= next_liveness_check) {
        next_liveness_check = Clock::now() + jittered(liveness_period(members_count));
        RendezvousState before = state;
        if (remove_dead(state)) {
          write(raw, before, state, seen);
          continue;
        }
      }
      const auto now = now_();
      JoinContext context{
          node_, settings_.min_nodes, settings_.max_nodes, now > deadline, now > deadline + rollback_period, false};
      std::optional<Clock::time_point> last_call_end;
      if (state.last_call != 0) {
        auto first_seen = last_call_seen_.emplace(state.last_call, now).first->second;
        last_call_end = first_seen + settings_.last_call_timeout;
        context.last_call_passed = now >= *last_call_end;
      }
      if (context.join_deadline_passed) withdraw();  // so that no node adds it back
      // How long a wait may last: to the next look at the alive keys, the join
      // deadline, the end of the last call or `limit` (all from `now`).
      const auto wait_for = [&](Clock::duration limit) {
        auto to_liveness = std::max(Clock::duration::zero(), next_liveness_check - Clock::now());
        auto until = std::min(now + std::min(to_liveness, limit), context.join_deadline_passed ? now : deadline);
        if (last_call_end) until = std::min(until, *last_call_end);
        return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(until - now),
                        std::chrono::milliseconds(1));
      };
      RendezvousState next = state;
      const JoinAction action = next_join_action(state, context);
      if (action != JoinAction::add_to_participants && action != JoinAction::add_to_wait_list) pending_since = {};
      switch (action) {
        case JoinAction::finish: {
          RendezvousInfo info{state.round, state.participants.at(node_), state.ranked()};
          return info;
        }
        case JoinAction::error_closed: throw RendezvousClosedError();
        case JoinAction::error_timeout:
          throw RendezvousTimeoutError("The node '" + node_.to_string() + "' has timed out in the rendezvous '" +
                                       settings_.run_id + "' (join_timeout " +
                                       std::to_string(settings_.join_timeout.count()) + " s).");
        case JoinAction::remove_from_participants:
          transitions::remove_from_participants(next, node_, settings_.min_nodes);
          write(raw, state, next, seen);
          break;
        case JoinAction::remove_from_wait_list:
          next.wait_list.erase(node_);
          write(raw, state, next, seen);
          break;
        case JoinAction::add_to_participants:
        case JoinAction::add_to_wait_list: {
          // Waiting to be added: the first of the waiting nodes adds them all; any
          // adds them once it has waited fold_fallback (the first one is stopped or
          // gone, its key not yet expired).
          if (pending_since == Clock::time_point{}) pending_since = Clock::now();
          std::vector<std::string> keys;
          guarded([&] { keys = store_->list_keys(join_prefix()); });
          auto waiting = waiting_nodes(state, keys);
          if (std::find(waiting.begin(), waiting.end(), node_) == waiting.end()) {
            // Its key is gone (an expired session, a stray remove): written again.
            guarded([&] { store_->set_ephemeral(join_key(node_), "1"); });
            join_key_written_ = true;
            waiting.insert(std::upper_bound(waiting.begin(), waiting.end(), node_), node_);
          }
          if (waiting.front() == node_ || Clock::now() - pending_since >= fold_fallback) {
            for (const auto& node : waiting)
              transitions::add_joining(next, node, settings_.min_nodes, settings_.max_nodes);
            if (write(raw, state, next, seen) && next.last_call != 0) last_call_seen_.emplace(next.last_call, now);
            break;
          }
          // The state changes when the first adds this node (or when anything else
          // happens to it): no second read.
          const auto timeout = wait_for(fold_fallback - (Clock::now() - pending_since));
          std::optional<std::string> current;
          guarded([&] { current = store_->wait_change(state_key(), raw, timeout); });
          seen = snapshot_of(std::move(current));
          break;
        }
        case JoinAction::mark_complete:
          transitions::mark_complete(next);
          write(raw, state, next, seen);
          break;
        case JoinAction::wait: {
          if (!snapshot.notify_read) break;  // read again, with the notify key
          const auto timeout = wait_for(liveness_period(members_count));
          guarded([&] { store_->wait_change(notify_key(), snapshot.notify, timeout); });
          break;
        }
      }
    }
  }

  // The state key's stored text (absent: no state yet), what it decodes to, and
  // (when read with it) the notify key's value.
  struct Snapshot {
    std::optional<std::string> raw;
    RendezvousState state;
    bool notify_read = false;
    std::optional<std::string> notify;
  };

  // A state that does not decode (not written by a node of ours) is not fatal: it
  // reads as an empty one past every round seen, so the next write replaces it.
  Snapshot snapshot_of(std::optional<std::string> raw) {
    RendezvousState state;
    unreadable_ = false;
    if (raw) {
      try {
        state = RendezvousState::decode(*raw);
      } catch (const RendezvousStateError& e) {
        unreadable_ = true;
        state.round = highest_round_ + 1;
        if (unreadable_logged_ != *raw) {
          unreadable_logged_ = *raw;
          const std::string line =
              std::string("ignoring the rendezvous state stored at ") + state_key() + ": " + e.what();
          if (log_)
            log_(line);
          else
            std::fprintf(stderr, "%s\n", line.c_str());
        }
      }
    }
    highest_round_ = std::max(highest_round_, state.round);
    return {std::move(raw), std::move(state), false, std::nullopt};
  }

  Snapshot read() {
    std::optional<std::string> raw;
    guarded([&] { raw = store_->get(state_key()); });
    return snapshot_of(std::move(raw));
  }
  // The state with the notify key, in one request: a wait on the notify key from the
  // value read here ends at any change written after this state.
  Snapshot read_with_notify() {
    std::vector<std::optional<std::string>> values;
    guarded([&] { values = store_->get_many({notify_key(), state_key()}); });
    if (values.size() != 2) throw RendezvousConnectionError("The rendezvous store answered a read of 2 keys wrongly.");
    Snapshot snapshot = snapshot_of(std::move(values[1]));
    snapshot.notify_read = true;
    snapshot.notify = std::move(values[0]);
    return snapshot;
  }
  // Replaces `raw` by `next`; returns whether it landed. `now` gets the state stored
  // afterwards: `next`, or the one another node wrote first.
  bool cas(const std::optional<std::string>& raw, const RendezvousState& next, std::optional<Snapshot>& now) {
    CompareSetResult result;
    guarded([&] { result = store_->compare_set(state_key(), raw, next.encode()); });
    now = snapshot_of(std::move(result.current));
    return result.swapped;
  }
  // cas(), then, when the change is one that waiting members act on, a new value of
  // the notify key (unique: this node, a counter, a random number).
  bool write(const std::optional<std::string>& raw, const RendezvousState& before, const RendezvousState& next,
             std::optional<Snapshot>& now) {
    if (!cas(raw, next, now)) return false;
    if (significant(before, next)) {
      const std::string value =
          node_.to_string() + "/" + std::to_string(++notify_counter_) + "/" + std::to_string(random_());
      guarded([&] { store_->set(notify_key(), value); });
    }
    return true;
  }
  // Whether a member waiting in `before` may have something to do in `after`: the
  // round completed, moved on, closed, its last call began or ended, or a member left.
  // Nodes being added are not: a round of N nodes wakes its members about once, not N
  // times.
  static bool significant(const RendezvousState& before, const RendezvousState& after) {
    if (before.round != after.round || before.complete != after.complete || before.closed != after.closed ||
        before.last_call != after.last_call)
      return true;
    for (const auto& [node, rank] : before.participants)
      if (after.participants.count(node) == 0 && after.wait_list.count(node) == 0) return true;
    for (const auto& node : before.wait_list)
      if (after.participants.count(node) == 0 && after.wait_list.count(node) == 0) return true;
    return false;
  }
  // Applies `change` until it lands (or finds nothing to change).
  template <typename Change>
  void update(Change&& change) {
    std::optional<Snapshot> snapshot = read();
    for (;;) {
      RendezvousState next = snapshot->state;
      if (!change(next)) return;
      const auto raw = snapshot->raw;
      const RendezvousState before = std::move(snapshot->state);
      if (write(raw, before, next, snapshot)) return;
    }
  }
  // Of the join keys listed, the nodes that adding would change the state for (in
  // node order); a key that names no node is ignored.
  std::vector<NodeDesc> waiting_nodes(const RendezvousState& state, const std::vector<std::string>& keys) const {
    const auto prefix = join_prefix();
    std::vector<NodeDesc> nodes;
    for (const auto& key : keys) {
      if (key.compare(0, prefix.size(), prefix) != 0) continue;
      try {
        auto node = NodeDesc::parse(key.substr(prefix.size()));
        if (transitions::joining_changes(state, node, settings_.max_nodes)) nodes.push_back(node);
      } catch (const RendezvousStateError&) {
      }
    }
    std::sort(nodes.begin(), nodes.end());
    return nodes;
  }
  // Removes this node's join key (no node adds it any more); a store failure here is
  // left to the caller's next request to report.
  void withdraw() {
    if (!join_key_written_) return;
    join_key_written_ = false;
    try {
      store_->remove(join_key(node_));
    } catch (const StoreError&) {
    }
  }
  std::chrono::milliseconds liveness_period(std::size_t members) const {
    return liveness_poll * static_cast<long>(std::max<std::size_t>(1, members / liveness_share));
  }
  // A period longer than liveness_poll, spread over half to one and a half of it.
  Clock::duration jittered(std::chrono::milliseconds period) {
    if (period <= liveness_poll) return period;
    std::uniform_int_distribution<long> spread(period.count() / 2, period.count() * 3 / 2);
    return std::chrono::milliseconds(spread(random_));
  }
  // The participants and the wait list.
  static std::vector<NodeDesc> members(const RendezvousState& state) {
    std::vector<NodeDesc> nodes;
    for (const auto& [node, rank] : state.participants) nodes.push_back(node);
    nodes.insert(nodes.end(), state.wait_list.begin(), state.wait_list.end());
    return nodes;
  }
  bool remove_dead(RendezvousState& state) {
    auto nodes = members(state);
    if (nodes.empty()) return false;
    auto alive = alive_nodes(nodes);
    return transitions::remove_dead(
        state, [&](const NodeDesc& node) { return alive.count(node) > 0; }, settings_.min_nodes);
  }

  std::shared_ptr<Store> store_;
  RendezvousSettings settings_;
  NodeDesc node_;
  Now now_;
  std::map<long, Clock::time_point> last_call_seen_;
  std::atomic<bool> cancelled_{false};
  std::function<void(const std::string&)> log_;
  bool unreadable_ = false;        // the last state read did not decode
  std::string unreadable_logged_;  // the last such state, logged once
  long highest_round_ = 0;
  long notify_counter_ = 0;
  bool join_key_written_ = false;  // this node's join key is in the store
  std::mt19937_64 random_{std::random_device{}()};
};

}  // namespace elastic::rendezvous
