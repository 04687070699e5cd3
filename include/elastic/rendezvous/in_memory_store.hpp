// A store held in memory, with a clock the caller may drive: the rendezvous state
// machine's unit tests run several "nodes" as sessions of one InMemoryStore.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <elastic/rendezvous/store.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace elastic::rendezvous {

// A steady clock as a function, so tests can substitute a ManualClock.
using SteadyNow = std::function<std::chrono::steady_clock::time_point()>;

// Time that moves only when told to; safe to read and advance from several threads.
class ManualClock {
 public:
  std::chrono::steady_clock::time_point now() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return now_;
  }
  void advance(std::chrono::milliseconds by) {
    std::vector<std::function<void()>> listeners;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      now_ += by;
      listeners = listeners_;
    }
    for (auto& listener : listeners) listener();
  }
  // Called after each advance (the in-memory store wakes its waiters).
  void on_advance(std::function<void()> listener) {
    std::lock_guard<std::mutex> lock(mutex_);
    listeners_.push_back(std::move(listener));
  }
  SteadyNow as_function() const {
    return [this] { return now(); };
  }

 private:
  mutable std::mutex mutex_;
  std::chrono::steady_clock::time_point now_{std::chrono::hours(1)};
  std::vector<std::function<void()>> listeners_;
};

class InMemorySession;

// The shared state of the store; sessions are its clients (session()).
class InMemoryStore : public std::enable_shared_from_this<InMemoryStore> {
 public:
  explicit InMemoryStore(SteadyNow now = [] { return std::chrono::steady_clock::now(); }) : now_(std::move(now)) {}

  // Builds one that follows a ManualClock (the clock must outlive it).
  static std::shared_ptr<InMemoryStore> with_clock(ManualClock& clock) {
    auto store = std::make_shared<InMemoryStore>(clock.as_function());
    std::weak_ptr<InMemoryStore> weak = store;
    clock.on_advance([weak] {
      if (auto strong = weak.lock()) strong->time_changed();
    });
    return store;
  }

  // A client session; its ephemeral keys go when it is destroyed or disconnect()ed,
  // or when it sends no keep-alive for `ttl`.
  std::unique_ptr<InMemorySession> session(std::chrono::milliseconds ttl = std::chrono::seconds(15));

  // Wakes waiters so they look at the clock again.
  void time_changed() {
    std::lock_guard<std::mutex> lock(mutex_);
    expire_locked();
    changed_.notify_all();
  }

  // All keys and values (for test assertions).
  std::map<std::string, std::string> snapshot() {
    std::lock_guard<std::mutex> lock(mutex_);
    expire_locked();
    return values_;
  }

 private:
  friend class InMemorySession;

  struct SessionState {
    std::chrono::milliseconds ttl;
    std::chrono::steady_clock::time_point last_keep_alive;
    std::set<std::string> ephemeral_keys;
  };

  void expire_locked() {
    auto now = now_();
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (now - it->second.last_keep_alive >= it->second.ttl) {
        drop_keys_locked(it->second);
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  void drop_keys_locked(SessionState& session) {
    for (const auto& key : session.ephemeral_keys) values_.erase(key);
    session.ephemeral_keys.clear();
    changed_.notify_all();
  }
  void end_session(std::uint64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    drop_keys_locked(it->second);
    sessions_.erase(it);
  }
  // A key written again by anyone is no longer bound to a session.
  void unbind_locked(const std::string& key) {
    for (auto& [id, session] : sessions_) session.ephemeral_keys.erase(key);
  }

  SteadyNow now_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::string> values_;
  std::map<std::uint64_t, SessionState> sessions_;
  std::uint64_t next_session_ = 1;
};

class InMemorySession : public Store {
 public:
  InMemorySession(std::shared_ptr<InMemoryStore> store, std::chrono::milliseconds ttl)
      : store_(std::move(store)), ttl_(ttl) {
    begin_session();
  }
  ~InMemorySession() override { disconnect(); }

  // As a closed connection: the session's ephemeral keys go at once.
  void disconnect() {
    if (store_ && session_id_ != 0) store_->end_session(session_id_);
    session_id_ = 0;
  }

  std::optional<std::string> get(const std::string& key) override {
    auto lock = locked();
    return lookup_locked(key);
  }
  std::vector<std::optional<std::string>> get_many(const std::vector<std::string>& keys) override {
    auto lock = locked();
    std::vector<std::optional<std::string>> result;
    for (const auto& key : keys) result.push_back(lookup_locked(key));
    return result;
  }
  void set(const std::string& key, const std::string& value) override {
    auto lock = locked();
    store_->unbind_locked(key);
    store_->values_[key] = value;
    store_->changed_.notify_all();
  }
  CompareSetResult compare_set(const std::string& key, const std::optional<std::string>& expected,
                               const std::string& desired) override {
    auto lock = locked();
    auto current = lookup_locked(key);
    if (current != expected) return {false, current};
    store_->unbind_locked(key);
    store_->values_[key] = desired;
    store_->changed_.notify_all();
    return {true, desired};
  }
  std::int64_t add(const std::string& key, std::int64_t delta) override {
    auto lock = locked();
    std::int64_t value = 0;
    if (auto current = lookup_locked(key)) {
      std::size_t used = 0;
      try {
        value = std::stoll(*current, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != current->size()) throw StoreError("add: the value of '" + key + "' is not an integer");
    }
    value += delta;
    store_->unbind_locked(key);
    store_->values_[key] = std::to_string(value);
    store_->changed_.notify_all();
    return value;
  }
  bool remove(const std::string& key) override {
    auto lock = locked();
    store_->unbind_locked(key);
    bool existed = store_->values_.erase(key) > 0;
    if (existed) store_->changed_.notify_all();
    return existed;
  }
  bool wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override {
    auto lock = locked();
    auto deadline = store_->now_() + timeout;
    for (;;) {
      bool all = std::all_of(keys.begin(), keys.end(), [&](const auto& key) { return store_->values_.count(key) > 0; });
      if (all) return true;
      if (store_->now_() >= deadline) return false;
      block(lock);
    }
  }
  std::optional<std::string> wait_change(const std::string& key, const std::optional<std::string>& seen,
                                         std::chrono::milliseconds timeout) override {
    auto lock = locked();
    auto deadline = store_->now_() + timeout;
    for (;;) {
      auto current = lookup_locked(key);
      if (current != seen || store_->now_() >= deadline) return current;
      block(lock);
    }
  }
  void set_ephemeral(const std::string& key, const std::string& value) override {
    auto lock = locked();
    auto session = store_->sessions_.find(session_id_);
    if (session == store_->sessions_.end()) throw StoreError("set_ephemeral: the session has expired");
    store_->unbind_locked(key);
    store_->values_[key] = value;
    session->second.ephemeral_keys.insert(key);
    store_->changed_.notify_all();
  }
  bool keep_alive() override {
    {
      auto lock = locked();
      auto session = store_->sessions_.find(session_id_);
      if (session != store_->sessions_.end()) {
        session->second.last_keep_alive = store_->now_();
        return true;
      }
    }
    begin_session();
    return false;
  }

 private:
  std::unique_lock<std::mutex> locked() {
    std::unique_lock<std::mutex> lock(store_->mutex_);
    store_->expire_locked();
    return lock;
  }
  std::optional<std::string> lookup_locked(const std::string& key) {
    auto it = store_->values_.find(key);
    if (it == store_->values_.end()) return std::nullopt;
    return it->second;
  }
  // Sleeps until a change or a clock advance; a short real-time bound lets a waiter
  // on the real clock see its deadline.
  void block(std::unique_lock<std::mutex>& lock) {
    store_->changed_.wait_for(lock, std::chrono::milliseconds(5));
    store_->expire_locked();
  }
  void begin_session() {
    std::lock_guard<std::mutex> lock(store_->mutex_);
    session_id_ = store_->next_session_++;
    store_->sessions_[session_id_] = InMemoryStore::SessionState{ttl_, store_->now_(), {}};
  }

  std::shared_ptr<InMemoryStore> store_;
  std::chrono::milliseconds ttl_;
  std::uint64_t session_id_ = 0;
};

inline std::unique_ptr<InMemorySession> InMemoryStore::session(std::chrono::milliseconds ttl) {
  return std::make_unique<InMemorySession>(shared_from_this(), ttl);
}

}  // namespace elastic::rendezvous
