// One client connection of the c10d store server: its handshake (and proof of the
// job secret), its requests cut by the frame parser under a per-frame deadline,
// its session (ephemeral keys, TTL) and its parked waits. Everything runs on the
// server's one thread.
#pragma once

#include <array>
#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <elastic/rendezvous/c10d/connection_manager.hpp>
#include <elastic/rendezvous/c10d/frame_parser.hpp>
#include <elastic/rendezvous/c10d/request_handler.hpp>
#include <elastic/rendezvous/c10d/server_options.hpp>
#include <elastic/rendezvous/c10d/wire.hpp>
#include <elastic/rendezvous/key_value_table.hpp>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace elastic::rendezvous::c10d {

class Connection;

struct Waiter {
  std::shared_ptr<Connection> connection;
  Parked parked;
  std::unique_ptr<asio::steady_timer> timer;
};

// What the connections of one server share.
struct ServerContext {
  ServerContext(asio::io_context& io_context, C10dServerOptions server_options)
      : io(io_context),
        options(std::move(server_options)),
        table(options.max_bytes),
        handler(table, options.max_answer) {}

  void log(const std::string& line) const;
  void reject(const std::string& kind, const std::string& peer, const std::string& detail) {
    rejections.note([this](const std::string& line) { log(line); }, kind, peer, detail);
  }
  // Answers the parked waits a change of the table has satisfied.
  void notify();
  void forget_waiters(const Connection* connection);

  asio::io_context& io;
  C10dServerOptions options;
  KeyValueTable table;
  RequestHandler handler;
  ConnectionManager<Connection> connections;
  std::list<std::shared_ptr<Waiter>> waiters;
  RejectionLog rejections;
  KeyValueTable::SessionId next_session = 1;
  std::uint64_t notified_generation = 0;
  // When a request last came from another host (a peer address that is not the
  // one it connected to); unset: never.
  std::optional<std::chrono::steady_clock::time_point> last_remote_request;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(ServerContext& server, asio::ip::tcp::socket socket, std::string peer)
      : server_(server),
        socket_(std::move(socket)),
        peer_(std::move(peer)),
        session_timer_(server.io),
        deadline_(server.io),
        parser_(server.options.max_request) {
    session_.id = server_.next_session++;
    asio::error_code ec;
    const auto local = socket_.local_endpoint(ec);
    const auto remote = socket_.remote_endpoint(ec);
    // A connection from this host comes from the address it went to (loopback, or
    // the host's own address).
    remote_host_ = !ec && local.address() != remote.address();
  }

  const std::string& peer() const { return peer_; }
  // Its session lapsed and it waits for nothing: the first to go at the connection limit.
  bool expendable() const { return phase_ == Phase::requests && session_.expired && !busy_; }

  void start() {
    arm_deadline(server_.options.handshake_timeout, "handshake-timeout", "no complete handshake in time");
    read_more();
  }

  void close() {
    if (phase_ == Phase::closed) return;
    phase_ = Phase::closed;
    asio::error_code ignored;
    socket_.close(ignored);
    session_timer_.cancel();
    deadline_.cancel();
    if (server_.table.end_session(session_.id)) server_.notify();
    server_.forget_waiters(this);
    server_.connections.forget(this);
  }

  // Sends a parked wait's answer (or any answer) and goes on reading.
  void respond(const std::string& payload) {
    if (phase_ == Phase::closed) return;
    auto message = std::make_shared<std::string>(Writer().str(payload).data());
    write(message, [](Connection& self) {
      self.busy_ = false;
      self.process();
    });
  }

 private:
  enum class Phase { hello, proof, requests, closed };

  void arm_deadline(std::chrono::milliseconds after, const char* kind, const char* why) {
    deadline_.expires_after(after);
    std::weak_ptr<Connection> weak = weak_from_this();
    deadline_.async_wait([weak, kind, why](const asio::error_code& ec) {
      auto self = weak.lock();
      if (ec || !self || self->phase_ == Phase::closed) return;
      self->server_.reject(kind, self->peer_, why);
      self->close();
    });
  }

  void read_more() {
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(chunk_), [self](const asio::error_code& ec, std::size_t got) {
      if (ec) return self->close();
      self->pending_.append(self->chunk_.data(), got);
      self->process();
    });
  }

  template <typename Then>
  void write(const std::shared_ptr<std::string>& bytes, Then then) {
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(*bytes), [self, bytes, then](const asio::error_code& ec, std::size_t) {
      if (ec) return self->close();
      then(*self);
    });
  }

  // Works through the bytes received: handshake, then one request at a time.
  void process() {
    if (phase_ == Phase::closed || busy_) return;
    if (phase_ == Phase::hello) return process_hello();
    if (phase_ == Phase::proof) return process_proof();
    std::size_t used = 0;
    auto result = parser_.consume(pending_.data(), pending_.size(), used);
    pending_.erase(0, used);
    switch (result) {
      case FrameParser::Result::incomplete:
        if (parser_.started() && !frame_timed_) {
          frame_timed_ = true;
          arm_deadline(server_.options.frame_timeout, "slow-request", "a request not complete within frame_timeout");
        }
        return read_more();
      case FrameParser::Result::empty: server_.reject("malformed", peer_, "an empty request"); return close();
      case FrameParser::Result::too_large:
        server_.reject("oversized", peer_,
                       "a request of " + std::to_string(parser_.announced()) + " bytes (limit " +
                           std::to_string(server_.options.max_request) + ")");
        return close();
      case FrameParser::Result::complete: break;
    }
    frame_timed_ = false;
    deadline_.cancel();
    busy_ = true;
    if (remote_host_) server_.last_remote_request = std::chrono::steady_clock::now();
    const std::string request = parser_.take();
    const auto generation = server_.table.generation();
    auto handled = server_.handler.handle(request, session_);
    if (handled.renew_session) renew_session();
    if (server_.table.generation() != generation) server_.notify();
    if (handled.parked) return park(std::move(*handled.parked));
    respond(handled.answer);
  }

  void process_hello() {
    const std::size_t compared = std::min(pending_.size(), magic_size);
    // Not ours (a PyTorch TCPStore client, a port scanner): hang up at its first odd byte.
    if (std::memcmp(pending_.data(), magic, compared) != 0) {
      server_.reject("foreign", peer_, "not an elastic-run client (handshake)");
      return close();
    }
    if (pending_.size() < hello_size) return read_more();
    std::string rest = pending_.substr(magic_size, hello_size - magic_size);
    pending_.erase(0, hello_size);
    Reader reader(rest);
    const std::uint32_t version = reader.u32();
    ttl_ = std::chrono::milliseconds(static_cast<std::int64_t>(std::min<std::uint64_t>(reader.u64(), 1ull << 40)));
    if (version != protocol_version) {
      server_.reject("version", peer_, "protocol version " + std::to_string(version));
      auto answer = std::make_shared<std::string>(handshake_answer(HandshakeAnswer::refused));
      return write(answer, [](Connection& self) { self.close(); });
    }
    if (!server_.options.secret.empty()) {
      server_nonce_ = random_nonce();
      auto answer = std::make_shared<std::string>(handshake_answer(HandshakeAnswer::secret_required));
      answer->append(reinterpret_cast<const char*>(server_nonce_.data()), server_nonce_.size());
      phase_ = Phase::proof;
      return write(answer, [](Connection& self) { self.process(); });
    }
    auto answer = std::make_shared<std::string>(handshake_answer(HandshakeAnswer::accepted));
    begin_requests();
    write(answer, [](Connection& self) { self.process(); });
  }

  void process_proof() {
    if (pending_.size() < nonce_size + proof_size) return read_more();
    std::string bytes = pending_.substr(0, nonce_size + proof_size);
    pending_.erase(0, nonce_size + proof_size);
    Reader reader(bytes);
    const auto client_nonce = reader.bytes<nonce_size>();
    const auto proof = reader.bytes<proof_size>();
    if (!same_proof(proof, prove(server_.options.secret, "client", server_nonce_, client_nonce))) {
      server_.reject("secret", peer_, "a wrong proof of the job secret");
      return close();
    }
    const auto mine = prove(server_.options.secret, "server", server_nonce_, client_nonce);
    auto answer = std::make_shared<std::string>(reinterpret_cast<const char*>(mine.data()), mine.size());
    begin_requests();
    write(answer, [](Connection& self) { self.process(); });
  }

  void begin_requests() {
    phase_ = Phase::requests;
    deadline_.cancel();
    renew_session();
  }

  void renew_session() {
    session_timer_.expires_after(ttl_);
    std::weak_ptr<Connection> weak = weak_from_this();
    session_timer_.async_wait([weak](const asio::error_code& ec) {
      auto self = weak.lock();
      if (ec || !self) return;
      self->session_.expired = true;
      if (self->server_.table.end_session(self->session_.id)) self->server_.notify();
    });
  }

  void park(Parked parked) {
    if (parked.satisfied() || parked.timeout.count() <= 0) return respond(parked.answer());
    auto waiter = std::make_shared<Waiter>();
    waiter->connection = shared_from_this();
    waiter->parked = std::move(parked);
    waiter->timer = std::make_unique<asio::steady_timer>(server_.io, waiter->parked.timeout);
    server_.waiters.push_back(waiter);
    std::weak_ptr<Waiter> weak = waiter;
    ServerContext* server = &server_;
    waiter->timer->async_wait([server, weak](const asio::error_code& ec) {
      auto w = weak.lock();
      if (ec || !w) return;
      server->waiters.remove(w);
      w->connection->respond(w->parked.answer());
    });
  }

  ServerContext& server_;
  asio::ip::tcp::socket socket_;
  std::string peer_;
  asio::steady_timer session_timer_;
  asio::steady_timer deadline_;  // the handshake's, then each request's
  FrameParser parser_;
  std::array<char, 16384> chunk_{};
  std::string pending_;  // received, not yet parsed (at most one chunk)
  Phase phase_ = Phase::hello;
  bool busy_ = false;  // a request is being answered: read no further
  bool frame_timed_ = false;
  bool remote_host_ = false;  // the peer is another host
  Session session_;
  std::chrono::milliseconds ttl_{0};
  Nonce server_nonce_{};
};

inline void ServerContext::log(const std::string& line) const {
  if (options.log) return options.log(line);
  std::fprintf(stderr, "%s\n", line.c_str());
}

inline void ServerContext::notify() {
  std::vector<std::shared_ptr<Waiter>> ready;
  for (auto it = waiters.begin(); it != waiters.end();) {
    if ((*it)->parked.satisfied()) {
      ready.push_back(*it);
      it = waiters.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& waiter : ready) {
    waiter->timer->cancel();
    waiter->connection->respond(waiter->parked.answer());
  }
}

inline void ServerContext::forget_waiters(const Connection* connection) {
  for (auto it = waiters.begin(); it != waiters.end();) {
    if ((*it)->connection.get() == connection) {
      (*it)->timer->cancel();
      it = waiters.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace elastic::rendezvous::c10d
