// A store held in memory, with a clock the caller may drive: the rendezvous state
// machine's unit tests run several "nodes" as sessions of one InMemoryStore. The
// key-value semantics are the library's KeyValueTable (the c10d server's too).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <elastic/rendezvous/key_value_table.hpp>
#include <elastic/rendezvous/store.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace elastic::testing {

using rendezvous::CompareSetResult;
using rendezvous::KeyValueTable;
using rendezvous::Store;
using rendezvous::StoreError;

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
    return table_.values();
  }

 private:
  friend class InMemorySession;

  struct SessionState {
    std::chrono::milliseconds ttl;
    std::chrono::steady_clock::time_point last_keep_alive;
  };

  void expire_locked() {
    auto now = now_();
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (now - it->second.last_keep_alive >= it->second.ttl) {
        drop_keys_locked(it->first);
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  void drop_keys_locked(std::uint64_t id) {
    table_.end_session(id);
    changed_.notify_all();
  }
  void end_session(std::uint64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    drop_keys_locked(id);
    sessions_.erase(it);
  }

  SteadyNow now_;
  std::mutex mutex_;
  std::condition_variable changed_;
  KeyValueTable table_;
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
    return store_->table_.get(key);
  }
  std::vector<std::optional<std::string>> get_many(const std::vector<std::string>& keys) override {
    auto lock = locked();
    std::vector<std::optional<std::string>> result;
    for (const auto& key : keys) result.push_back(store_->table_.get(key));
    return result;
  }
  std::vector<std::string> list_keys(const std::string& prefix) override {
    auto lock = locked();
    return store_->table_.keys_with_prefix(prefix);
  }
  void set(const std::string& key, const std::string& value) override {
    changing([&](KeyValueTable& table) { table.set(key, value); });
  }
  CompareSetResult compare_set(const std::string& key, const std::optional<std::string>& expected,
                               const std::string& desired) override {
    return changing([&](KeyValueTable& table) { return table.compare_set(key, expected, desired); });
  }
  std::int64_t add(const std::string& key, std::int64_t delta) override {
    return changing([&](KeyValueTable& table) { return table.add(key, delta); });
  }
  bool remove(const std::string& key) override {
    return changing([&](KeyValueTable& table) { return table.remove(key); });
  }
  bool wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override {
    auto lock = locked();
    auto deadline = store_->now_() + timeout;
    for (;;) {
      if (store_->table_.contains_all(keys)) return true;
      if (store_->now_() >= deadline) return false;
      block(lock);
    }
  }
  std::optional<std::string> wait_change(const std::string& key, const std::optional<std::string>& seen,
                                         std::chrono::milliseconds timeout) override {
    auto lock = locked();
    auto deadline = store_->now_() + timeout;
    for (;;) {
      auto current = store_->table_.get(key);
      if (current != seen || store_->now_() >= deadline) return current;
      block(lock);
    }
  }
  void set_ephemeral(const std::string& key, const std::string& value) override {
    auto lock = locked();
    auto session = store_->sessions_.find(session_id_);
    if (session == store_->sessions_.end()) throw StoreError("set_ephemeral: the session has expired");
    store_->table_.set_ephemeral(session_id_, key, value);
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
  // Runs a write on the table and wakes the waiters.
  template <typename Op>
  auto changing(Op&& op) -> decltype(op(std::declval<KeyValueTable&>())) {
    auto lock = locked();
    struct Wake {
      InMemoryStore& store;
      ~Wake() { store.changed_.notify_all(); }
    } wake{*store_};
    return op(store_->table_);
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
    store_->sessions_[session_id_] = InMemoryStore::SessionState{ttl_, store_->now_()};
  }

  std::shared_ptr<InMemoryStore> store_;
  std::chrono::milliseconds ttl_;
  std::uint64_t session_id_ = 0;
};

inline std::unique_ptr<InMemorySession> InMemoryStore::session(std::chrono::milliseconds ttl) {
  return std::make_unique<InMemorySession>(shared_from_this(), ttl);
}

}  // namespace elastic::testing
