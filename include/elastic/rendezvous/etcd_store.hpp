// The rendezvous store on a real etcd (v3 API, through its JSON gateway): the
// backend of --rdzv-backend=etcd and etcd-v2 alike.
//
//   compare_set    a txn comparing the value (absent: create_revision 0)
//   add            compare-and-put on mod_revision, repeated on conflict
//   wait           a watch from the revision read, not polling
//   ephemeral keys put with this session's lease (TTL: StoreOptions::session_ttl,
//                  whole seconds); keep_alive() is the lease's keep-alive; when the
//                  lease expires etcd deletes the keys and watchers see it at once;
//                  a sentinel process revokes it the moment this process dies
//                  unannounced (SIGKILL), so the others need not wait for the TTL
//                  (plain http; see detail/lease_sentinel.hpp)
//
// Every key lives under a prefix (--rdzv-conf etcd_prefix, default
// /elastic/rendezvous/; then the run id when the options carry one), so several
// jobs share one etcd. --rdzv-conf keys read here: protocol (http or https), ca_cert,
// ssl_cert, ssl_cert_key (PyTorch's legacy names cacert, cert, key too), etcd_prefix.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <elastic/rendezvous/detail/etcd_client.hpp>
#include <elastic/rendezvous/detail/lease_sentinel.hpp>
#include <elastic/rendezvous/errors.hpp>
#include <elastic/rendezvous/key_value_table.hpp>
#include <elastic/rendezvous/store.hpp>
#include <elastic/rendezvous/store_registry.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace elastic::rendezvous {

namespace detail {

inline std::string config_value(const std::map<std::string, std::string>& config,
                                std::initializer_list<const char*> names, std::string fallback = {}) {
  for (const char* name : names)
    if (auto it = config.find(name); it != config.end() && !it->second.empty()) return it->second;
  return fallback;
}

}  // namespace detail

// Checks the etcd keys of --rdzv-conf (protocol, TLS files), opening nothing.
// Throws RendezvousConfigError.
inline void validate_etcd_config(const std::map<std::string, std::string>& config) {
  std::string protocol = detail::config_value(config, {"protocol"}, "http");
  if (protocol != "http" && protocol != "https")
    throw RendezvousConfigError("--rdzv-conf: etcd protocol must be http or https, not '" + protocol + "'");
  if (detail::config_value(config, {"ssl_cert", "cert"}).empty() !=
      detail::config_value(config, {"ssl_cert_key", "key"}).empty())
    throw RendezvousConfigError("--rdzv-conf: etcd TLS: ssl_cert and ssl_cert_key go together");
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
  if (protocol == "https")
    throw RendezvousConfigError("--rdzv-conf: etcd over https: this build's cpp-httplib has no TLS support");
#endif
}

namespace detail {

inline EtcdClientOptions etcd_client_options(const StoreOptions& options) {
  validate_etcd_config(options.config);
  EtcdClientOptions client;
  client.host = options.host.empty() ? "127.0.0.1" : options.host;
  client.port = options.port > 0 ? options.port : 2379;
  client.more_endpoints = options.more_endpoints;
  client.read_timeout = options.read_timeout;
  // A silent member is left within a third of the session's TTL (one keep-alive
  // interval), so that a keep-alive sent to it still lands elsewhere in time; at
  // most 5 s a request, whatever the TTL.
  client.member_timeout = std::clamp<std::chrono::milliseconds>(options.session_ttl / 3, std::chrono::milliseconds(500),
                                                                std::chrono::milliseconds(5000));
  client.protocol = config_value(options.config, {"protocol"}, "http");
  client.ca_cert = config_value(options.config, {"ca_cert", "cacert"});
  client.ssl_cert = config_value(options.config, {"ssl_cert", "cert"});
  client.ssl_cert_key = config_value(options.config, {"ssl_cert_key", "key"});
  return client;
}

inline std::string etcd_key_prefix(const StoreOptions& options) {
  std::string prefix = config_value(options.config, {"etcd_prefix"}, "/elastic/rendezvous/");
  if (prefix.back() != '/') prefix += '/';
  std::string run_id = config_value(options.config, {"run_id"});
  return run_id.empty() ? prefix : prefix + run_id + "/";
}

}  // namespace detail

class EtcdStore : public Store {
 public:
  explicit EtcdStore(const StoreOptions& options)
      : client_(detail::etcd_client_options(options)),
        prefix_(detail::etcd_key_prefix(options)),
        lease_ttl_seconds_(
            std::max<std::int64_t>(1, std::chrono::ceil<std::chrono::seconds>(options.session_ttl).count())) {}

  // Ends the session: revoking the lease deletes its keys at once. Bounded
  // (a couple of seconds) when etcd is gone: the lease then ends by its TTL.
  ~EtcdStore() override {
    std::int64_t lease = 0;
    {
      std::lock_guard<std::mutex> lock(lease_mutex_);
      lease = lease_;
    }
    if (lease == 0) return;
    sentinel_.stop();
    try {
      auto options = client_.options();
      options.read_timeout = std::min(options.read_timeout, std::chrono::milliseconds(2000));
      detail::EtcdClient(options).lease_revoke(lease);
    } catch (const std::exception&) {
    }
  }

  const std::string& key_prefix() const { return prefix_; }
  // The process that revokes the lease should this one die unannounced (-1: none).
  pid_t sentinel_pid() const {
    std::lock_guard<std::mutex> lock(lease_mutex_);
    return sentinel_.pid();
  }
  // The lease of this session (0: none yet).
  std::int64_t lease_id() const {
    std::lock_guard<std::mutex> lock(lease_mutex_);
    return lease_;
  }

  std::optional<std::string> get(const std::string& key) override {
    return guarded([&]() -> std::optional<std::string> {
      auto kv = client_.get(full(key));
      if (!kv) return std::nullopt;
      return std::move(kv->value);
    });
  }

  std::vector<std::optional<std::string>> get_many(const std::vector<std::string>& keys) override {
    return guarded([&] { return values_of(read_many(keys).second); });
  }

  std::vector<std::string> list_keys(const std::string& prefix) override {
    return guarded([&] {
      auto result = client_.range(full(prefix), detail::etcd_prefix_end(full(prefix)), true);
      std::vector<std::string> keys;
      keys.reserve(result.kvs.size());
      for (auto& kv : result.kvs) keys.push_back(kv.key.substr(prefix_.size()));
      return keys;
    });
  }

  void set(const std::string& key, const std::string& value) override {
    guarded([&] { return client_.put(full(key), value); });
  }

  CompareSetResult compare_set(const std::string& key, const std::optional<std::string>& expected,
                               const std::string& desired) override {
    return guarded([&] {
      detail::EtcdTxnResult result;
      try {
        result = expected ? client_.put_if_value(full(key), desired, *expected)
                          : client_.put_if_mod_revision(full(key), desired, 0);
      } catch (const detail::EtcdOutcomeUnknownError&) {
        // Sent and unanswered (a member lost, a leader election): judged by what the
        // key holds now, read from a member that answers. Holding `desired` counts as
        // swapped: the state is the one wanted, whoever wrote it. A write still in
        // flight that lands later compared against the same old value, so at most
        // one of it and the caller's next attempt lands.
        auto now = client_.get(full(key));
        result.succeeded = now && now->value == desired;
        if (!result.succeeded && now) result.current = std::move(*now);
      }
      CompareSetResult outcome;
      outcome.swapped = result.succeeded;
      if (result.succeeded)
        outcome.current = desired;
      else if (result.current)
        outcome.current = std::move(result.current->value);
      return outcome;
    });
  }

  std::int64_t add(const std::string& key, std::int64_t delta) override {
    return guarded([&] {
      const std::string name = full(key);
      auto current = client_.get(name);
      for (;;) {
        std::int64_t value = current ? parse_counter(key, current->value) : 0;
        auto result =
            client_.put_if_mod_revision(name, std::to_string(value + delta), current ? current->mod_revision : 0);
        if (result.succeeded) return value + delta;
        current = std::move(result.current);  // someone else wrote first: add to theirs
      }
    });
  }

  bool remove(const std::string& key) override {
    return guarded([&] { return client_.delete_range(full(key)) > 0; });
  }

  bool wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    return guarded([&] {
      std::set<std::string> names;  // the keys as etcd names them
      for (const auto& key : keys) names.insert(full(key));
      for (;;) {
        auto [revision, values] = read_many(keys);
        std::set<std::string> missing;
        for (std::size_t i = 0; i < keys.size(); ++i)
          if (!values[i]) missing.insert(full(keys[i]));
        if (missing.empty()) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        // One watch over the range spanning every key, from the revision read (no
        // write in between is lost): the keys may appear in any order, and a node
        // waiting for 64 of them should not read them all again after each one.
        auto end = client_.watch(*names.begin(), *names.rbegin() + std::string(1, '\0'), revision + 1, deadline,
                                 [&](const auto& events) {
                                   for (const auto& event : events) {
                                     if (names.count(event.kv.key) == 0) continue;
                                     if (event.deleted)
                                       missing.insert(event.kv.key);
                                     else
                                       missing.erase(event.kv.key);
                                   }
                                   return !missing.empty();
                                 });
        if (end == detail::EtcdWatchEnd::stopped) return true;
        if (end == detail::EtcdWatchEnd::interrupted) pause_after_interruption();
      }
    });
  }

  std::optional<std::string> wait_change(const std::string& key, const std::optional<std::string>& seen,
                                         std::chrono::milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    const std::string name = full(key);
    return guarded([&] {
      for (;;) {
        auto read = client_.range(name);
        std::optional<std::string> current;
        if (!read.kvs.empty()) current = std::move(read.kvs.front().value);
        if (current != seen || std::chrono::steady_clock::now() >= deadline) return current;
        auto end = client_.watch(name, "", read.revision + 1, deadline, [&](const auto& events) {
          return std::none_of(events.begin(), events.end(), [&](const auto& event) {
            return event.deleted ? seen.has_value() : (!seen || event.kv.value != *seen);
          });
        });
        if (end == detail::EtcdWatchEnd::interrupted) pause_after_interruption();
      }
    });
  }

  void set_ephemeral(const std::string& key, const std::string& value) override {
    guarded([&] {
      auto lease = current_lease();
      try {
        return client_.put(full(key), value, lease);
      } catch (const detail::EtcdRequestError& error) {
        if (error.grpc_code != 5) throw;  // 5: NotFound, the lease is gone
        forget_lease(lease);
        throw StoreError("etcd: this session's lease has expired; its keys are gone (" + std::string(error.what()) +
                         ")");
      }
    });
  }

  void cancel() override { client_.cancel(); }

  bool keep_alive() override {
    return guarded([&] {
      std::int64_t lease = lease_id();
      if (lease == 0) return true;  // no ephemeral key yet: nothing to keep
      if (client_.lease_keepalive(lease)) {
        std::lock_guard<std::mutex> lock(lease_mutex_);
        guard_lease_locked();
        return true;
      }
      forget_lease(lease);  // the next set_ephemeral() begins a new session
      return false;
    });
  }

 private:
  std::string full(const std::string& key) const { return prefix_ + key; }

  template <class Action>
  auto guarded(Action&& action) -> decltype(action()) {
    try {
      return action();
    } catch (const StoreError&) {
      throw;
    } catch (const detail::EtcdUnreachableError& error) {
      throw StoreError(error.what());
    } catch (const detail::EtcdRequestError& error) {
      throw StoreError(error.what());
    } catch (const nlohmann::json::exception& error) {
      throw StoreError(std::string("etcd at ") + client_.endpoint() + ": unexpected answer: " + error.what());
    } catch (const std::invalid_argument& error) {
      throw StoreError(std::string("etcd at ") + client_.endpoint() + ": unexpected answer: " + error.what());
    } catch (const std::out_of_range& error) {
      throw StoreError(std::string("etcd at ") + client_.endpoint() + ": unexpected answer: " + error.what());
    }
  }

  std::pair<std::int64_t, std::vector<std::optional<detail::EtcdKeyValue>>> read_many(
      const std::vector<std::string>& keys) {
    std::vector<std::string> names;
    names.reserve(keys.size());
    for (const auto& key : keys) names.push_back(full(key));
    return client_.get_many(names);
  }

  static std::vector<std::optional<std::string>> values_of(std::vector<std::optional<detail::EtcdKeyValue>> kvs) {
    std::vector<std::optional<std::string>> values;
    values.reserve(kvs.size());
    for (auto& kv : kvs) values.push_back(kv ? std::optional<std::string>(std::move(kv->value)) : std::nullopt);
    return values;
  }

  // A watch that broke without an error (etcd restarting): read again shortly.
  static void pause_after_interruption() { std::this_thread::sleep_for(std::chrono::milliseconds(100)); }

  std::int64_t current_lease() {
    std::lock_guard<std::mutex> lock(lease_mutex_);
    if (lease_ == 0) lease_ = client_.lease_grant(lease_ttl_seconds_);
    guard_lease_locked();
    return lease_;
  }

  // (Re)starts the sentinel on the current lease when it is not running: the
  // first lease, or a sentinel killed meanwhile (elastic-run kills the processes
  // left after each round; the next join or keep-alive brings it back).
  void guard_lease_locked() {
    if (lease_ == 0 || client_.options().protocol != "http" || sentinel_.running()) return;
    std::vector<std::pair<std::string, int>> members{{client_.options().host, client_.options().port}};
    for (const auto& member : client_.options().more_endpoints) members.push_back(member);
    if (sentinel_.start(members)) sentinel_.watch_lease(lease_);
  }

  void forget_lease(std::int64_t lease) {
    std::lock_guard<std::mutex> lock(lease_mutex_);
    if (lease_ == lease) {
      lease_ = 0;
      sentinel_.watch_lease(0);
    }
  }

  detail::EtcdClient client_;
  const std::string prefix_;
  const std::int64_t lease_ttl_seconds_;
  mutable std::mutex lease_mutex_;
  std::int64_t lease_ = 0;  // this session's lease; 0: none granted yet
  detail::LeaseSentinel sentinel_;
};

// Opens a store on the etcd at options.host:options.port (the backend factory's
// entry for both "etcd" and "etcd-v2"). Bad TLS options: RendezvousConfigError.
inline std::unique_ptr<Store> make_etcd_store(const StoreOptions& options) {
  return std::make_unique<EtcdStore>(options);
}

// --rdzv-backend etcd and etcd-v2 (one implementation), for open_backend().
inline const bool etcd_store_registered = register_store_backend("etcd", {make_etcd_store, validate_etcd_config}) &&
                                          register_store_backend("etcd-v2", {make_etcd_store, validate_etcd_config});

}  // namespace elastic::rendezvous
