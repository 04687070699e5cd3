// The c10d backend's store: one agent serves a key-value store over TCP
// (C10dStoreServer), every agent is a client session of it (C10dStoreClient).
// Standalone asio (Debian's libasio-dev, header-only; ASIO_STANDALONE).
//
// Wire protocol (ours, not PyTorch's TCPStore: PyTorch's rendezvous state is a
// pickled Python object, so torchrun and elastic-run agents can never share a
// rendezvous, and mixing them must fail at once rather than hang):
//   handshake  client -> server: "ELASTIC-RDZV\n" u32 version, u64 session TTL (ms)
//              server -> client: "ELASTIC-RDZV\n" u32 version, u8 accepted
//   request    u32 length, then u8 op and its fields
//   response   u32 length, then u8 status (0 ok, 1 error + message) and fields
// Integers are little-endian, strings a u32 length and bytes. Anything else that
// connects is disconnected at its first bytes; a PyTorch TCPStore client sees its
// connection closed, a client of ours talking to a PyTorch store gets no handshake
// back and says so.
//
// One TCP connection is one session: closing it drops the session's ephemeral keys
// at once; so do keep-alives missing for the TTL, timed on the server's clock.
// Requests on one client are serialized; a long wait is sent as short server-side
// waits so that keep-alives on the same client are never held up for long.
#pragma once

#include <array>
#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <elastic/rendezvous/store.hpp>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace elastic::rendezvous {

namespace c10d_detail {

inline constexpr char magic[] = "ELASTIC-RDZV\n";
inline constexpr std::size_t magic_size = sizeof(magic) - 1;
inline constexpr std::uint32_t protocol_version = 1;
inline constexpr std::uint32_t max_message = 64u << 20;  // a request or answer above this is refused
// The longest single server-side wait of one request (see the top of the file).
inline constexpr std::chrono::milliseconds wait_slice{250};

enum class Op : std::uint8_t {
  get = 1,
  get_many,
  set,
  compare_set,
  add,
  remove,
  wait,
  wait_change,
  set_ephemeral,
  keep_alive,
};

class Writer {
 public:
  Writer& u8(std::uint8_t v) {
    data_.push_back(static_cast<char>(v));
    return *this;
  }
  Writer& u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) data_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  Writer& u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) data_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  Writer& str(const std::string& s) {
    u32(static_cast<std::uint32_t>(s.size()));
    data_ += s;
    return *this;
  }
  Writer& opt(const std::optional<std::string>& s) {
    u8(s ? 1 : 0);
    if (s) str(*s);
    return *this;
  }
  // The message with its length in front.
  std::string framed() const {
    Writer frame;
    frame.u32(static_cast<std::uint32_t>(data_.size()));
    return frame.data_ + data_;
  }
  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

class Reader {
 public:
  explicit Reader(const std::string& data) : data_(data) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)[0]); }
  std::uint32_t u32() {
    auto b = take(4);
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<std::size_t>(i)]);
    return v;
  }
  std::uint64_t u64() {
    auto b = take(8);
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<std::size_t>(i)]);
    return v;
  }
  std::string str() { return take(u32()); }
  std::optional<std::string> opt() {
    if (u8() == 0) return std::nullopt;
    return str();
  }

 private:
  std::string take(std::size_t n) {
    if (data_.size() - pos_ < n) throw StoreError("malformed rendezvous store message");
    std::string out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  const std::string& data_;
  std::size_t pos_ = 0;
};

inline std::string handshake(std::uint32_t version, std::uint64_t ttl_ms) {
  Writer w;
  w.u32(version).u64(ttl_ms);
  return std::string(magic, magic_size) + w.data();
}

}  // namespace c10d_detail

// Serves the store on a port until destroyed. All state lives on the server's
// own thread (one asio io_context), so no request needs a lock.
class C10dStoreServer {
 public:
  // Binds `port` on every interface (0: a free port). Throws std::system_error when
  // the port is taken (the caller then becomes a client).
  explicit C10dStoreServer(int port, std::chrono::milliseconds handshake_timeout = std::chrono::seconds(60))
      : acceptor_(io_), handshake_timeout_(handshake_timeout) {
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
    thread_ = std::thread([this] { io_.run(); });
  }
  ~C10dStoreServer() {
    asio::post(io_, [this] {
      asio::error_code ignored;
      acceptor_.close(ignored);
      auto connections = connections_;
      for (auto& connection : connections) connection->close();
      io_.stop();
    });
    thread_.join();
  }
  C10dStoreServer(const C10dStoreServer&) = delete;
  C10dStoreServer& operator=(const C10dStoreServer&) = delete;

  int port() const { return port_; }

  // Refuses new connections from now on; the sessions already open are served on.
  void stop_accepting() {
    std::promise<void> done;
    asio::post(io_, [this, &done] {
      asio::error_code ignored;
      acceptor_.close(ignored);
      done.set_value();
    });
    done.get_future().wait();
  }

 private:
  class Connection;
  struct Waiter {
    std::shared_ptr<Connection> connection;
    std::function<bool()> satisfied;
    std::function<std::string()> answer;
    std::unique_ptr<asio::steady_timer> timer;
  };

  class Connection : public std::enable_shared_from_this<Connection> {
   public:
    Connection(C10dStoreServer& server, asio::ip::tcp::socket socket)
        : server_(server), socket_(std::move(socket)), session_timer_(server.io_), handshake_timer_(server.io_) {}

    void start() {
      auto self = shared_from_this();
      handshake_timer_.expires_after(server_.handshake_timeout_);
      handshake_timer_.async_wait([self](const asio::error_code& ec) {
        if (!ec) self->close();
      });
      buffer_.clear();
      read_handshake();
    }

    void close() {
      if (closed_) return;
      closed_ = true;
      asio::error_code ignored;
      socket_.close(ignored);
      session_timer_.cancel();
      handshake_timer_.cancel();
      drop_ephemeral();
      server_.forget(this);
    }

   private:
    // Byte by byte as they come: a foreign client is hung up on at its first byte that
    // differs from our magic, not left waiting for bytes it will never send.
    void read_handshake() {
      auto self = shared_from_this();
      constexpr std::size_t wanted = c10d_detail::magic_size + 12;
      auto chunk = std::make_shared<std::array<char, 64>>();
      socket_.async_read_some(
          asio::buffer(*chunk, wanted - buffer_.size()), [self, chunk](const asio::error_code& ec, std::size_t got) {
            if (ec) return self->close();
            self->buffer_.insert(self->buffer_.end(), chunk->begin(), chunk->begin() + static_cast<long>(got));
            const std::size_t compared = std::min(self->buffer_.size(), c10d_detail::magic_size);
            if (std::memcmp(self->buffer_.data(), c10d_detail::magic, compared) != 0) return self->close();
            if (self->buffer_.size() < wanted) return self->read_handshake();
            self->handshake_timer_.cancel();
            self->on_handshake();
          });
    }

    void on_handshake() {
      // Not ours (a PyTorch TCPStore client, a port scanner): hang up at once.
      if (std::memcmp(buffer_.data(), c10d_detail::magic, c10d_detail::magic_size) != 0) return close();
      std::string rest(buffer_.begin() + static_cast<long>(c10d_detail::magic_size), buffer_.end());
      c10d_detail::Reader reader(rest);
      const std::uint32_t version = reader.u32();
      ttl_ = std::chrono::milliseconds(static_cast<std::int64_t>(reader.u64()));
      const bool accepted = version == c10d_detail::protocol_version;
      c10d_detail::Writer w;
      w.u32(c10d_detail::protocol_version).u8(accepted ? 1 : 0);
      auto reply = std::make_shared<std::string>(std::string(c10d_detail::magic, c10d_detail::magic_size) + w.data());
      auto self = shared_from_this();
      asio::async_write(socket_, asio::buffer(*reply),
                        [self, reply, accepted](const asio::error_code& ec, std::size_t) {
                          if (ec || !accepted) return self->close();
                          self->renew_session();
                          self->read_request();
                        });
    }

    void renew_session() {
      session_timer_.expires_after(ttl_);
      auto self = shared_from_this();
      session_timer_.async_wait([self](const asio::error_code& ec) {
        if (ec) return;
        self->drop_ephemeral();
        self->expired_ = true;
      });
    }

    void drop_ephemeral() {
      bool any = false;
      for (const auto& key : ephemeral_) any |= server_.values_.erase(key) > 0;
      ephemeral_.clear();
      if (any) server_.notify();
    }

    void read_request() {
      auto self = shared_from_this();
      buffer_.resize(4);
      asio::async_read(socket_, asio::buffer(buffer_), [self](const asio::error_code& ec, std::size_t) {
        if (ec) return self->close();
        std::string header(self->buffer_.begin(), self->buffer_.end());
        const std::uint32_t length = c10d_detail::Reader(header).u32();
        if (length == 0 || length > c10d_detail::max_message) return self->close();
        self->buffer_.resize(length);
        asio::async_read(self->socket_, asio::buffer(self->buffer_), [self](const asio::error_code& ec2, std::size_t) {
          if (ec2) return self->close();
          std::string request(self->buffer_.begin(), self->buffer_.end());
          try {
            self->handle(request);
          } catch (const std::exception& e) {
            c10d_detail::Writer w;
            w.u8(1).str(e.what());
            self->respond(w.data());
          }
        });
      });
    }

    void respond(const std::string& payload) {
      if (closed_) return;
      auto message = std::make_shared<std::string>(c10d_detail::Writer().str(payload).data());
      auto self = shared_from_this();
      asio::async_write(socket_, asio::buffer(*message), [self, message](const asio::error_code& ec, std::size_t) {
        if (ec) return self->close();
        self->read_request();
      });
    }

    static std::string ok() { return c10d_detail::Writer().u8(0).data(); }

    void bind_ephemeral(const std::string& key) {
      server_.unbind(key);
      ephemeral_.insert(key);
    }

    void handle(const std::string& request) {
      using c10d_detail::Op;
      c10d_detail::Reader in(request);
      auto& values = server_.values_;
      const auto op = static_cast<Op>(in.u8());
      c10d_detail::Writer out;
      out.u8(0);
      auto lookup = [&values](const std::string& key) -> std::optional<std::string> {
        auto it = values.find(key);
        if (it == values.end()) return std::nullopt;
        return it->second;
      };
      switch (op) {
        case Op::get: out.opt(lookup(in.str())); break;
        case Op::get_many: {
          const std::uint32_t n = in.u32();
          out.u32(n);
          for (std::uint32_t i = 0; i < n; ++i) out.opt(lookup(in.str()));
          break;
        }
        case Op::set: {
          auto key = in.str();
          server_.unbind(key);
          values[key] = in.str();
          server_.notify();
          break;
        }
        case Op::compare_set: {
          auto key = in.str();
          auto expected = in.opt();
          auto desired = in.str();
          auto current = lookup(key);
          const bool swap = current == expected;
          if (swap) {
            server_.unbind(key);
            values[key] = desired;
            current = desired;
          }
          out.u8(swap ? 1 : 0).opt(current);
          if (swap) server_.notify();
          break;
        }
        case Op::add: {
          auto key = in.str();
          const auto delta = static_cast<std::int64_t>(in.u64());
          std::int64_t value = 0;
          if (auto current = lookup(key)) {
            std::size_t used = 0;
            try {
              value = std::stoll(*current, &used);
            } catch (const std::exception&) {
              used = 0;
            }
            if (used == 0 || used != current->size())
              throw StoreError("add: the value of '" + key + "' is not an integer");
          }
          value += delta;
          server_.unbind(key);
          values[key] = std::to_string(value);
          out.u64(static_cast<std::uint64_t>(value));
          server_.notify();
          break;
        }
        case Op::remove: {
          auto key = in.str();
          server_.unbind(key);
          const bool existed = values.erase(key) > 0;
          out.u8(existed ? 1 : 0);
          if (existed) server_.notify();
          break;
        }
        case Op::wait: {
          std::vector<std::string> keys(in.u32());
          for (auto& key : keys) key = in.str();
          const auto timeout = std::chrono::milliseconds(in.u64());
          auto all = [&values, keys] {
            for (const auto& key : keys)
              if (values.count(key) == 0) return false;
            return true;
          };
          return park(
              all, [all] { return c10d_detail::Writer().u8(0).u8(all() ? 1 : 0).data(); }, timeout);
        }
        case Op::wait_change: {
          auto key = in.str();
          auto seen = in.opt();
          const auto timeout = std::chrono::milliseconds(in.u64());
          auto current = [&values, key]() -> std::optional<std::string> {
            auto it = values.find(key);
            if (it == values.end()) return std::nullopt;
            return it->second;
          };
          return park([current, seen] { return current() != seen; },
                      [current] { return c10d_detail::Writer().u8(0).opt(current()).data(); }, timeout);
        }
        case Op::set_ephemeral: {
          auto key = in.str();
          auto value = in.str();
          if (expired_) throw StoreError("set_ephemeral: the session has expired");
          bind_ephemeral(key);
          values[key] = value;
          server_.notify();
          break;
        }
        case Op::keep_alive: {
          out.u8(expired_ ? 0 : 1);
          expired_ = false;
          renew_session();
          break;
        }
        default: throw StoreError("unknown rendezvous store request " + std::to_string(static_cast<int>(op)));
      }
      respond(out.data());
    }

    void park(std::function<bool()> satisfied, std::function<std::string()> answer, std::chrono::milliseconds timeout) {
      if (satisfied() || timeout.count() <= 0) return respond(answer());
      auto waiter = std::make_shared<Waiter>();
      waiter->connection = shared_from_this();
      waiter->satisfied = std::move(satisfied);
      waiter->answer = std::move(answer);
      waiter->timer = std::make_unique<asio::steady_timer>(server_.io_, timeout);
      server_.waiters_.push_back(waiter);
      std::weak_ptr<Waiter> weak = waiter;
      waiter->timer->async_wait([this, weak](const asio::error_code& ec) {
        auto w = weak.lock();
        if (ec || !w) return;
        server_.waiters_.remove(w);
        respond(w->answer());
      });
    }

    friend class C10dStoreServer;
    C10dStoreServer& server_;
    asio::ip::tcp::socket socket_;
    asio::steady_timer session_timer_;
    asio::steady_timer handshake_timer_;
    std::vector<char> buffer_;
    std::chrono::milliseconds ttl_{0};
    std::set<std::string> ephemeral_;
    bool expired_ = false;
    bool closed_ = false;
  };

  void accept() {
    acceptor_.async_accept([this](const asio::error_code& ec, asio::ip::tcp::socket socket) {
      if (ec) return;  // closed
      asio::error_code ignored;
      socket.set_option(asio::ip::tcp::no_delay(true), ignored);
      auto connection = std::make_shared<Connection>(*this, std::move(socket));
      connections_.insert(connection);
      connection->start();
      accept();
    });
  }

  void forget(Connection* connection) {
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if ((*it)->connection.get() == connection) {
        (*it)->timer->cancel();
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = connections_.begin(); it != connections_.end(); ++it)
      if (it->get() == connection) {
        connections_.erase(it);
        break;
      }
  }

  // A key written again by anyone is no longer bound to a session.
  void unbind(const std::string& key) {
    for (auto& connection : connections_) connection->ephemeral_.erase(key);
  }

  // Answers the waiters a change has satisfied.
  void notify() {
    std::vector<std::shared_ptr<Waiter>> ready;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if ((*it)->satisfied()) {
        ready.push_back(*it);
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto& waiter : ready) {
      waiter->timer->cancel();
      waiter->connection->respond(waiter->answer());
    }
  }

  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  std::chrono::milliseconds handshake_timeout_;
  int port_ = 0;
  std::set<std::shared_ptr<Connection>> connections_;
  std::list<std::shared_ptr<Waiter>> waiters_;
  std::map<std::string, std::string> values_;
  std::thread thread_;
};

// One session of a C10dStoreServer; every request bounded by the read timeout.
class C10dStoreClient : public Store {
 public:
  explicit C10dStoreClient(const StoreOptions& options) : options_(options), socket_(io_) {
    const std::string where = options.host + ":" + std::to_string(options.port);
    std::lock_guard<std::mutex> lock(mutex_);
    asio::error_code ec;
    asio::ip::tcp::resolver resolver(io_);
    auto endpoints = resolver.resolve(options.host, std::to_string(options.port), ec);
    if (ec) throw StoreError("cannot resolve the rendezvous endpoint " + where + ": " + ec.message());
    // The host agent may start listening a little after the others start: retry
    // refused connections until the read timeout.
    const auto connect_deadline = std::chrono::steady_clock::now() + options.read_timeout;
    for (;;) {
      asio::error_code connect_error = asio::error::timed_out;
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(connect_deadline - std::chrono::steady_clock::now());
      asio::async_connect(socket_, endpoints, [&](const asio::error_code& e, const auto&) { connect_error = e; });
      run_for(std::max(left, std::chrono::milliseconds(1)));
      if (!connect_error) break;
      if (std::chrono::steady_clock::now() + std::chrono::milliseconds(100) >= connect_deadline)
        throw StoreError("cannot connect to the rendezvous store at " + where + " within read_timeout (" +
                         std::to_string(options.read_timeout.count() / 1000) + " s): " + connect_error.message());
      asio::error_code ignored;
      socket_.close(ignored);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    socket_.set_option(asio::ip::tcp::no_delay(true), ec);

    send(
        c10d_detail::handshake(c10d_detail::protocol_version, static_cast<std::uint64_t>(options.session_ttl.count())));
    std::string reply;
    try {
      reply = receive(c10d_detail::magic_size + 5);
    } catch (const StoreError& e) {
      throw StoreError("the service at " + where +
                       " is not an elastic-run rendezvous store (no answer to our handshake: " + e.what() +
                       "). A PyTorch TCPStore (a torchrun agent's) cannot serve elastic-run agents.");
    }
    if (reply.compare(0, c10d_detail::magic_size, c10d_detail::magic) != 0)
      throw StoreError("the service at " + where +
                       " is not an elastic-run rendezvous store. A PyTorch TCPStore (a torchrun agent's) cannot "
                       "serve elastic-run agents.");
    std::string rest = reply.substr(c10d_detail::magic_size);
    c10d_detail::Reader in(rest);
    const std::uint32_t version = in.u32();
    if (in.u8() == 0)
      throw StoreError("the rendezvous store at " + where + " speaks protocol version " + std::to_string(version) +
                       ", this elastic-run speaks " + std::to_string(c10d_detail::protocol_version));
  }

  std::optional<std::string> get(const std::string& key) override {
    auto answer = call(request(c10d_detail::Op::get).str(key));
    return c10d_detail::Reader(answer).opt();
  }
  std::vector<std::optional<std::string>> get_many(const std::vector<std::string>& keys) override {
    auto w = request(c10d_detail::Op::get_many);
    w.u32(static_cast<std::uint32_t>(keys.size()));
    for (const auto& key : keys) w.str(key);
    auto answer = call(w);
    c10d_detail::Reader in(answer);
    std::vector<std::optional<std::string>> result(in.u32());
    for (auto& value : result) value = in.opt();
    return result;
  }
  void set(const std::string& key, const std::string& value) override {
    call(request(c10d_detail::Op::set).str(key).str(value));
  }
  CompareSetResult compare_set(const std::string& key, const std::optional<std::string>& expected,
                               const std::string& desired) override {
    auto answer = call(request(c10d_detail::Op::compare_set).str(key).opt(expected).str(desired));
    c10d_detail::Reader in(answer);
    CompareSetResult result;
    result.swapped = in.u8() != 0;
    result.current = in.opt();
    return result;
  }
  std::int64_t add(const std::string& key, std::int64_t delta) override {
    auto answer = call(request(c10d_detail::Op::add).str(key).u64(static_cast<std::uint64_t>(delta)));
    return static_cast<std::int64_t>(c10d_detail::Reader(answer).u64());
  }
  bool remove(const std::string& key) override {
    auto answer = call(request(c10d_detail::Op::remove).str(key));
    return c10d_detail::Reader(answer).u8() != 0;
  }
  bool wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto slice = next_slice(deadline);
      auto w = request(c10d_detail::Op::wait);
      w.u32(static_cast<std::uint32_t>(keys.size()));
      for (const auto& key : keys) w.str(key);
      w.u64(static_cast<std::uint64_t>(slice.count()));
      auto answer = call(w, slice);
      if (c10d_detail::Reader(answer).u8() != 0) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
    }
  }
  std::optional<std::string> wait_change(const std::string& key, const std::optional<std::string>& seen,
                                         std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto slice = next_slice(deadline);
      auto answer =
          call(request(c10d_detail::Op::wait_change).str(key).opt(seen).u64(static_cast<std::uint64_t>(slice.count())),
               slice);
      auto current = c10d_detail::Reader(answer).opt();
      if (current != seen || std::chrono::steady_clock::now() >= deadline) return current;
    }
  }
  void set_ephemeral(const std::string& key, const std::string& value) override {
    call(request(c10d_detail::Op::set_ephemeral).str(key).str(value));
  }
  bool keep_alive() override {
    auto answer = call(request(c10d_detail::Op::keep_alive));
    return c10d_detail::Reader(answer).u8() != 0;
  }

 private:
  static c10d_detail::Writer request(c10d_detail::Op op) {
    c10d_detail::Writer w;
    w.u8(static_cast<std::uint8_t>(op));
    return w;
  }
  static std::chrono::milliseconds next_slice(std::chrono::steady_clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return std::max(std::chrono::milliseconds(0), std::min(left, c10d_detail::wait_slice));
  }

  // One request and its answer's fields (after the status), within the read timeout
  // (plus `server_wait` for waits).
  std::string call(const c10d_detail::Writer& w, std::chrono::milliseconds server_wait = {}) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (broken_) throw StoreError("the connection to the rendezvous store is lost: " + broken_reason_);
    send(w.framed(), server_wait);
    std::string header = receive(4, server_wait);
    std::string answer = receive(c10d_detail::Reader(header).u32(), server_wait);
    if (answer.empty()) fail("an empty answer");
    if (answer[0] != 0) {
      std::string rest = answer.substr(1);
      throw StoreError(c10d_detail::Reader(rest).str());
    }
    return answer.substr(1);
  }

  void send(const std::string& bytes, std::chrono::milliseconds extra = {}) {
    asio::error_code error = asio::error::timed_out;
    asio::async_write(socket_, asio::buffer(bytes), [&](const asio::error_code& e, std::size_t) { error = e; });
    run_for(options_.read_timeout + extra);
    if (error) fail(error == asio::error::timed_out ? "no progress within read_timeout" : error.message());
  }
  std::string receive(std::size_t size, std::chrono::milliseconds extra = {}) {
    if (size > c10d_detail::max_message) fail("an oversized answer");
    std::string data(size, '\0');
    asio::error_code error = asio::error::timed_out;
    asio::async_read(socket_, asio::buffer(data), [&](const asio::error_code& e, std::size_t) { error = e; });
    run_for(options_.read_timeout + extra);
    if (error == asio::error::eof) fail("the store closed the connection");
    if (error) fail(error == asio::error::timed_out ? "no answer within read_timeout" : error.message());
    return data;
  }
  // Runs the pending operation; on timeout cancels it (the connection is then unusable).
  void run_for(std::chrono::milliseconds timeout) {
    io_.restart();
    io_.run_for(timeout);
    if (!io_.stopped()) {
      asio::error_code ignored;
      socket_.close(ignored);
      io_.restart();
      io_.run();
    }
  }
  [[noreturn]] void fail(const std::string& why) {
    broken_ = true;
    broken_reason_ = why;
    asio::error_code ignored;
    socket_.close(ignored);
    throw StoreError("rendezvous store at " + options_.host + ":" + std::to_string(options_.port) + ": " + why);
  }

  StoreOptions options_;
  asio::io_context io_;
  asio::ip::tcp::socket socket_;
  std::mutex mutex_;
  bool broken_ = false;
  std::string broken_reason_;
};

}  // namespace elastic::rendezvous
