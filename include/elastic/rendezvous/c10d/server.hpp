// The c10d store server: one agent serves the key-value store over TCP until the
// server object is destroyed. All state lives on the server's own thread (one asio
// io_context), so no request needs a lock. Accepting: connection limits (in all and
// per peer address; at the limit, connections whose session lapsed go first, else
// the newcomer is told "busy"), and running out of file descriptors pauses
// accepting for a moment instead of ending it.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <elastic/rendezvous/c10d/connection.hpp>
#include <elastic/rendezvous/c10d/server_options.hpp>
#include <elastic/signal_free_thread.hpp>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace elastic::rendezvous {

class C10dStoreServer {
 public:
  // Binds `port` on every interface (0: a free port). Throws std::system_error when
  // the port is taken (the caller then becomes a client).
  explicit C10dStoreServer(int port, C10dServerOptions options = {})
      : context_(io_, std::move(options)), acceptor_(io_), accept_pause_(io_) {
    asio::ip::tcp::endpoint endpoint(asio::ip::tcp::v6(), static_cast<std::uint16_t>(port));
    asio::error_code ec;
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) {
      acceptor_.set_option(asio::ip::v6_only(false), ec);
      ec.clear();
    } else {  // no IPv6 here
      endpoint = asio::ip::tcp::endpoint(asio::ip::tcp::v4(), static_cast<std::uint16_t>(port));
      acceptor_.open(endpoint.protocol());
    }
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(endpoint);  // throws: address in use
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    accept();
    thread_ = elastic::signal_free_thread([this] { io_.run(); });
  }
  // As above, with a handshake deadline of its own.
  C10dStoreServer(int port, std::chrono::milliseconds handshake_timeout)
      : C10dStoreServer(port, with_handshake_timeout(handshake_timeout)) {}
  ~C10dStoreServer() {
    asio::post(io_, [this] {
      asio::error_code ignored;
      acceptor_.close(ignored);
      accept_pause_.cancel();
      context_.connections.close_all();
      io_.stop();
    });
    thread_.join();
  }
  C10dStoreServer(const C10dStoreServer&) = delete;
  C10dStoreServer& operator=(const C10dStoreServer&) = delete;

  int port() const { return port_; }

  // Refuses new connections from now on; the sessions already open are served on.
  void stop_accepting() {
    on_server_thread([this] {
      asio::error_code ignored;
      acceptor_.close(ignored);
      accept_pause_.cancel();
    });
  }

  // How many connections were refused for `kind` (oversized, slow-request,
  // handshake-timeout, foreign, secret, busy, malformed, version).
  std::size_t refused(const std::string& kind) {
    std::size_t n = 0;
    on_server_thread([&] { n = context_.rejections.count(kind); });
    return n;
  }
  std::size_t connections() {
    std::size_t n = 0;
    on_server_thread([&] { n = context_.connections.size(); });
    return n;
  }
  // How long since a request last came from another host; nothing when none ever did.
  std::optional<std::chrono::steady_clock::duration> since_remote_request() {
    std::optional<std::chrono::steady_clock::duration> since;
    on_server_thread([&] {
      if (context_.last_remote_request) since = std::chrono::steady_clock::now() - *context_.last_remote_request;
    });
    return since;
  }

 private:
  static C10dServerOptions with_handshake_timeout(std::chrono::milliseconds timeout) {
    C10dServerOptions options;
    options.handshake_timeout = timeout;
    return options;
  }

  template <typename F>
  void on_server_thread(F&& f) {
    std::promise<void> done;
    asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

  void accept() {
    acceptor_.async_accept([this](const asio::error_code& ec, asio::ip::tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;  // closed
      if (ec) return pause_accepting(ec);
      admit(std::move(socket));
      accept();
    });
  }

  // Out of descriptors (EMFILE, ENFILE) or memory: the peer stays in the backlog;
  // try again shortly.
  void pause_accepting(const asio::error_code& ec) {
    context_.reject("accept", "(listener)", "accept failed: " + ec.message() + "; accepting again in 100 ms");
    accept_pause_.expires_after(std::chrono::milliseconds(100));
    accept_pause_.async_wait([this](const asio::error_code& e) {
      if (!e) accept();
    });
  }

  void admit(asio::ip::tcp::socket socket) {
    asio::error_code ec;
    auto remote = socket.remote_endpoint(ec);
    if (ec) return;
    auto address = remote.address();
    // An IPv4 peer of the dual-stack listener is named (and counted) as IPv4.
    if (address.is_v6() && address.to_v6().is_v4_mapped())
      address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
    const std::string peer = address.to_string();
    auto& connections = context_.connections;
    const auto& options = context_.options;
    if (connections.from(peer) >= options.max_connections_per_peer && !connections.evict_expendable(peer))
      return refuse(std::move(socket), peer,
                    "more than " + std::to_string(options.max_connections_per_peer) + " connections from one address");
    if (connections.size() >= options.max_connections && !connections.evict_expendable())
      return refuse(std::move(socket), peer, "more than " + std::to_string(options.max_connections) + " connections");
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
    connections.start(std::make_shared<c10d::Connection>(context_, std::move(socket), peer));
  }

  // Tells the peer it is one of ours but full, so a joining agent retries instead of
  // taking the store for a foreign service; a few at a time, the rest just closed.
  void refuse(asio::ip::tcp::socket socket, const std::string& peer, const std::string& why) {
    context_.reject("busy", peer, why);
    if (refusing_ >= 32) return;
    ++refusing_;
    auto held = std::make_shared<asio::ip::tcp::socket>(std::move(socket));
    auto answer = std::make_shared<std::string>(c10d::handshake_answer(c10d::HandshakeAnswer::busy) +
                                                c10d::Writer().str(why).data());
    asio::async_write(*held, asio::buffer(*answer), [this, held, answer](const asio::error_code&, std::size_t) {
      asio::error_code ignored;
      held->shutdown(asio::socket_base::shutdown_send, ignored);
      // Lingers a moment for the peer's hello, so closing does not reset the answer away.
      auto timer = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(500));
      timer->async_wait([this, held, timer](const asio::error_code&) {
        asio::error_code ignored2;
        held->close(ignored2);
        --refusing_;
      });
    });
  }

  asio::io_context io_;
  c10d::ServerContext context_;
  asio::ip::tcp::acceptor acceptor_;
  asio::steady_timer accept_pause_;
  int port_ = 0;
  int refusing_ = 0;
  std::thread thread_;
};

}  // namespace elastic::rendezvous
