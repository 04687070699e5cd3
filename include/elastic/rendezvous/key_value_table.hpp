// The semantics of the rendezvous key-value store in one place: values, counters,
// compare-and-set, and ephemeral keys bound to sessions. The c10d server and the
// tests' in-memory store are both this table behind their own transport and
// locking; it takes no lock itself (its owner serializes every call).
//
// Bounds: a table holds at most `max_bytes` of keys and values together; a write
// that would pass it is a StoreError and changes nothing. Rendezvous values are
// small (the state of a round is about 100 bytes per node), so the default of
// 256 MiB is far above any job and only stops a peer that fills memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <elastic/rendezvous/store.hpp>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace elastic::rendezvous {

// Parses the decimal integer a counter key holds; anything else is a StoreError.
inline std::int64_t parse_counter(const std::string& key, const std::string& text) {
  std::size_t used = 0;
  std::int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw StoreError("add: the value of '" + key + "' is not an integer");
  return value;
}

class KeyValueTable {
 public:
  using SessionId = std::uint64_t;
  static constexpr std::size_t default_max_bytes = std::size_t{256} << 20;

  explicit KeyValueTable(std::size_t max_bytes = default_max_bytes) : max_bytes_(max_bytes) {}

  std::optional<std::string> get(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end()) return std::nullopt;
    return it->second;
  }
  bool contains(const std::string& key) const { return values_.count(key) > 0; }
  bool contains_all(const std::vector<std::string>& keys) const {
    for (const auto& key : keys)
      if (!contains(key)) return false;
    return true;
  }
  std::vector<std::string> keys_with_prefix(const std::string& prefix) const {
    std::vector<std::string> keys;
    for (auto it = values_.lower_bound(prefix); it != values_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
         ++it)
      keys.push_back(it->first);
    return keys;
  }
  std::size_t num_keys() const { return values_.size(); }
  // Bytes of keys and values held.
  std::size_t bytes() const { return bytes_; }
  const std::map<std::string, std::string>& values() const { return values_; }
  // Moves on at every change: waiters look again only when it did.
  std::uint64_t generation() const { return generation_; }

  void set(const std::string& key, const std::string& value) {
    put(key, value);
    unbind(key);
  }

  CompareSetResult compare_set(const std::string& key, const std::optional<std::string>& expected,
                               const std::string& desired) {
    auto current = get(key);
    if (current != expected) return {false, std::move(current)};
    set(key, desired);
    return {true, desired};
  }

  // Adds to the decimal integer at `key` (absent: 0); StoreError when it is not one.
  std::int64_t add(const std::string& key, std::int64_t delta) {
    std::int64_t value = 0;
    if (auto current = get(key)) value = parse_counter(key, *current);
    // Two's-complement wrap, as PyTorch's TCPStore; no signed overflow.
    value = static_cast<std::int64_t>(static_cast<std::uint64_t>(value) + static_cast<std::uint64_t>(delta));
    set(key, std::to_string(value));
    return value;
  }

  bool remove(const std::string& key) {
    unbind(key);
    return erase(key);
  }

  // Writes a key that goes when `session` ends (end_session()). A key written again
  // by anyone (set, add, compare_set, another session) is no longer bound to it.
  void set_ephemeral(SessionId session, const std::string& key, const std::string& value) {
    put(key, value);
    unbind(key);
    owner_[key] = session;
    sessions_[session].insert(key);
  }

  // Deletes the session's ephemeral keys; returns whether any existed.
  bool end_session(SessionId session) {
    auto it = sessions_.find(session);
    if (it == sessions_.end()) return false;
    bool any = false;
    for (const auto& key : it->second) {
      owner_.erase(key);
      any |= erase(key);
    }
    sessions_.erase(it);
    return any;
  }

 private:
  void put(const std::string& key, const std::string& value) {
    auto it = values_.find(key);
    const std::size_t old_size = it == values_.end() ? 0 : key.size() + it->second.size();
    const std::size_t new_size = key.size() + value.size();
    if (bytes_ - old_size + new_size > max_bytes_)
      throw StoreError("the rendezvous store is full (" + std::to_string(max_bytes_ >> 20) +
                       " MiB of keys and values)");
    values_[key] = value;
    bytes_ = bytes_ - old_size + new_size;
    ++generation_;
  }
  bool erase(const std::string& key) {
    auto it = values_.find(key);
    if (it == values_.end()) return false;
    bytes_ -= key.size() + it->second.size();
    values_.erase(it);
    ++generation_;
    return true;
  }
  void unbind(const std::string& key) {
    auto it = owner_.find(key);
    if (it == owner_.end()) return;
    auto session = sessions_.find(it->second);
    if (session != sessions_.end()) session->second.erase(key);
    owner_.erase(it);
  }

  std::size_t max_bytes_;
  std::size_t bytes_ = 0;
  std::uint64_t generation_ = 0;
  std::map<std::string, std::string> values_;
  std::map<std::string, SessionId> owner_;               // ephemeral key -> its session
  std::map<SessionId, std::set<std::string>> sessions_;  // session -> its ephemeral keys
};

}  // namespace elastic::rendezvous
