// The key-value store a rendezvous runs on: a small abstract interface that the
// c10d backend (our own TCP server, hosted by one agent), the etcd backend and the
// in-memory store of the tests implement.
//
// Keys and values are arbitrary byte strings. Every call may be made from several
// threads at once on one store object (the agent's loop and its keep-alive thread);
// a call blocked in wait() or wait_change() must not hold up the others.
//
// Failures: a store that cannot be reached, a lost connection, a peer that speaks
// another protocol, or a request that got no answer within StoreOptions::read_timeout
// throws StoreError. A deadline passing in wait()/wait_change() is not an error:
// those calls return what they saw.
//
// Liveness ("ephemeral" keys). A store object is one client session. set_ephemeral()
// writes a key bound to that session; the server deletes every key of a session when
//   - the session's connection closes (c10d: the TCP connection; so a SIGKILLed
//     launcher is noticed at once), or
//   - no keep_alive() reached the server for StoreOptions::session_ttl (a SIGSTOPped
//     or partitioned launcher), counted on the server's own clock,
//   - or the store object is destroyed.
// Hosts' wall clocks are never compared. On etcd a session is a lease with
// TTL = session_ttl: set_ephemeral() puts with that lease, keep_alive() is the lease's
// keep-alive, expiry deletes the keys. Callers renew with keep_alive() at least every
// session_ttl / keep_alive_max_attempt; when it returns false the session had already
// expired (its keys are gone); the store has begun a new one, and the caller must
// write its ephemeral keys again.
//
// Backends: <elastic/rendezvous/backends.hpp> opens a store by --rdzv-backend name.
// The etcd backend lives in <elastic/rendezvous/etcd_store.hpp> and provides
//   std::unique_ptr<Store> elastic::rendezvous::make_etcd_store(const StoreOptions&);
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace elastic::rendezvous {

// The store cannot serve the request (unreachable, connection lost, foreign protocol,
// no answer within read_timeout, a malformed request such as add() on a non-number).
class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct CompareSetResult {
  bool swapped = false;                // the desired value was written
  std::optional<std::string> current;  // the value after the call (absent: no key)
};

// What a backend needs to open a client session.
struct StoreOptions {
  std::string host;  // endpoint's host
  int port = 0;      // endpoint's port
  // Further endpoints of the same store (an etcd cluster's other members), tried in
  // turn when one fails; c10d has one endpoint.
  std::vector<std::pair<std::string, int>> more_endpoints;
  std::chrono::milliseconds read_timeout{std::chrono::seconds(60)};  // bound of every request
  std::chrono::milliseconds session_ttl{std::chrono::seconds(15)};   // ephemeral keys' life without keep-alive
  std::map<std::string, std::string> config;  // the backend's --rdzv-conf keys (e.g. etcd TLS files)
  std::string secret;  // c10d: the job secret proved at the handshake (empty: none; see job_secret())
};

class Store {
 public:
  virtual ~Store() = default;

  // The value, or nothing when the key is absent.
  virtual std::optional<std::string> get(const std::string& key) = 0;
  // Several keys in one request; results in the order of `keys`.
  virtual std::vector<std::optional<std::string>> get_many(const std::vector<std::string>& keys) = 0;
  // The keys that begin with `prefix`, in byte order, in one request (values not sent).
  virtual std::vector<std::string> list_keys(const std::string& prefix) = 0;
  virtual void set(const std::string& key, const std::string& value) = 0;
  // Atomically: if the key's value equals `expected` (nothing: the key is absent),
  // write `desired`. Returns whether it did, and the value now stored. A backend
  // that lost the answer (etcd, a member gone mid-request) cannot tell: it reports
  // swapped when the key holds `desired` afterwards.
  virtual CompareSetResult compare_set(const std::string& key, const std::optional<std::string>& expected,
                                       const std::string& desired) = 0;
  // Atomically adds `delta` to the decimal integer stored at `key` (absent: 0) and
  // returns the sum. A value that is not a decimal integer is a StoreError.
  virtual std::int64_t add(const std::string& key, std::int64_t delta) = 0;
  // Deletes the key; returns whether it existed.
  virtual bool remove(const std::string& key) = 0;
  // Blocks until every key exists or `timeout` has passed; returns whether they all exist.
  virtual bool wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) = 0;
  // Blocks until the key's value differs from `seen` (nothing: absent; a deletion is a
  // change) or `timeout` has passed; returns the value then.
  virtual std::optional<std::string> wait_change(const std::string& key, const std::optional<std::string>& seen,
                                                 std::chrono::milliseconds timeout) = 0;

  // Writes a key that lives as long as this session (see the top of this file).
  virtual void set_ephemeral(const std::string& key, const std::string& value) = 0;
  // Renews the session; false when it had expired (its ephemeral keys are gone and a
  // new session has begun).
  virtual bool keep_alive() = 0;

  // Makes the requests now in flight on other threads fail soon (StoreError) instead
  // of running to their deadline; later requests run as usual. May be called from
  // any thread. Default: nothing (requests end by their read_timeout).
  virtual void cancel() {}
};

}  // namespace elastic::rendezvous
