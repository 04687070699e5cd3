// What bounds a c10d store server, and where it reports the peers it refuses.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <elastic/rendezvous/c10d/wire.hpp>
#include <elastic/rendezvous/key_value_table.hpp>
#include <functional>
#include <string>

namespace elastic::rendezvous {

struct C10dServerOptions {
  // From a connection's first byte to the end of its handshake (the secret's proof
  // included); a peer that has not finished by then is disconnected.
  std::chrono::milliseconds handshake_timeout{std::chrono::seconds(10)};
  // From a request's first byte to its last: a request dripped slowly is cut off.
  std::chrono::milliseconds frame_timeout{std::chrono::seconds(10)};
  std::uint32_t max_request = c10d::default_max_request;     // bytes of one request
  std::uint32_t max_answer = c10d::default_max_answer;       // bytes of one answer
  std::size_t max_bytes = KeyValueTable::default_max_bytes;  // keys and values held
  // Open connections: in all, and from one peer address. At the limit, connections
  // whose session has expired are closed first; otherwise the newcomer is told
  // "busy" and disconnected.
  std::size_t max_connections = 1024;
  std::size_t max_connections_per_peer = 128;
  // A job secret: when not empty, a peer must prove it knows it before anything
  // else (see wire.hpp); without it a peer gets nothing, not even a read.
  std::string secret;
  // Hears of each kind of refusal once per peer (default: standard error).
  std::function<void(const std::string&)> log;
};

}  // namespace elastic::rendezvous
