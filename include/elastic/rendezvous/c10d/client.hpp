// One session of a C10dStoreServer; every request bounded by the read timeout.
// Requests on one client are serialized; a long wait is sent as short server-side
// waits (wire.hpp's wait_slice) so keep-alives on the same client are never held up.
#pragma once

#include <algorithm>
#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <elastic/rendezvous/c10d/wire.hpp>
#include <elastic/rendezvous/store.hpp>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace elastic::rendezvous {

class C10dStoreClient : public Store {
 public:
  explicit C10dStoreClient(const StoreOptions& options) : options_(options), socket_(io_) {
    const std::string where = options.host + ":" + std::to_string(options.port);
    std::lock_guard<std::mutex> lock(mutex_);
    asio::error_code ec;
    asio::ip::tcp::resolver resolver(io_);
    auto endpoints = resolver.resolve(options.host, std::to_string(options.port), ec);
    if (ec) throw StoreError("cannot resolve the rendezvous endpoint " + where + ": " + ec.message());
    // The host agent may start listening a little after the others start, and a
    // store at its connection limit says "busy": retry until the read timeout.
    const auto deadline = std::chrono::steady_clock::now() + options.read_timeout;
    for (;;) {
      asio::error_code connect_error = asio::error::timed_out;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      asio::async_connect(socket_, endpoints, [&](const asio::error_code& e, const auto&) { connect_error = e; });
      run_for(std::max(left, std::chrono::milliseconds(1)));
      std::string busy;
      if (!connect_error) {
        socket_.set_option(asio::ip::tcp::no_delay(true), ec);
        if (handshake(where, deadline, busy)) return;
      }
      if (std::chrono::steady_clock::now() + std::chrono::milliseconds(100) >= deadline) {
        if (!busy.empty())
          throw StoreError("the rendezvous store at " + where + " refused this connection until read_timeout (" +
                           std::to_string(options.read_timeout.count() / 1000) + " s): " + busy);
        throw StoreError("cannot connect to the rendezvous store at " + where + " within read_timeout (" +
                         std::to_string(options.read_timeout.count() / 1000) + " s): " + connect_error.message());
      }
      asio::error_code ignored;
      socket_.close(ignored);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  std::optional<std::string> get(const std::string& key) override {
    auto answer = call(request(c10d::Op::get).str(key));
    return c10d::Reader(answer).opt();
  }
  std::vector<std::optional<std::string>> get_many(const std::vector<std::string>& keys) override {
    auto w = request(c10d::Op::get_many);
    w.u32(static_cast<std::uint32_t>(keys.size()));
    for (const auto& key : keys) w.str(key);
    auto answer = call(w);
    c10d::Reader in(answer);
    std::vector<std::optional<std::string>> result(in.count(1));
    for (auto& value : result) value = in.opt();
    return result;
  }
  std::vector<std::string> list_keys(const std::string& prefix) override {
    auto answer = call(request(c10d::Op::list_keys).str(prefix));
    c10d::Reader in(answer);
    std::vector<std::string> keys(in.count(4));
    for (auto& key : keys) key = in.str();
    return keys;
  }
  void set(const std::string& key, const std::string& value) override {
    call(request(c10d::Op::set).str(key).str(value));
  }
  CompareSetResult compare_set(const std::string& key, const std::optional<std::string>& expected,
                               const std::string& desired) override {
    auto answer = call(request(c10d::Op::compare_set).str(key).opt(expected).str(desired));
    c10d::Reader in(answer);
    CompareSetResult result;
    result.swapped = in.u8() != 0;
    result.current = in.opt();
    return result;
  }
  std::int64_t add(const std::string& key, std::int64_t delta) override {
    auto answer = call(request(c10d::Op::add).str(key).u64(static_cast<std::uint64_t>(delta)));
    return static_cast<std::int64_t>(c10d::Reader(answer).u64());
  }
  bool remove(const std::string& key) override {
    auto answer = call(request(c10d::Op::remove).str(key));
    return c10d::Reader(answer).u8() != 0;
  }
  bool wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto slice = next_slice(deadline);
      auto w = request(c10d::Op::wait);
      w.u32(static_cast<std::uint32_t>(keys.size()));
      for (const auto& key : keys) w.str(key);
      w.u64(static_cast<std::uint64_t>(slice.count()));
      auto answer = call(w, slice);
      if (c10d::Reader(answer).u8() != 0) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
    }
  }
  std::optional<std::string> wait_change(const std::string& key, const std::optional<std::string>& seen,
                                         std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto slice = next_slice(deadline);
      auto answer =
          call(request(c10d::Op::wait_change).str(key).opt(seen).u64(static_cast<std::uint64_t>(slice.count())), slice);
      auto current = c10d::Reader(answer).opt();
      if (current != seen || std::chrono::steady_clock::now() >= deadline) return current;
    }
  }
  void set_ephemeral(const std::string& key, const std::string& value) override {
    call(request(c10d::Op::set_ephemeral).str(key).str(value));
  }
  bool keep_alive() override {
    auto answer = call(request(c10d::Op::keep_alive));
    return c10d::Reader(answer).u8() != 0;
  }

 private:
  // One handshake on the connected socket. True: ready for requests. False: the
  // store is busy (`busy` says why); try again. Anything else throws.
  bool handshake(const std::string& where, std::chrono::steady_clock::time_point deadline, std::string& busy) {
    auto left = [&] {
      return std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                        deadline - std::chrono::steady_clock::now()));
    };
    const std::string not_ours =
        "the service at " + where +
        " is not an elastic-run rendezvous store. A PyTorch TCPStore (a torchrun agent's) cannot serve elastic-run "
        "agents.";
    std::string reply;
    try {
      send_within(c10d::hello(c10d::protocol_version, static_cast<std::uint64_t>(options_.session_ttl.count())),
                  left());
      reply = receive_within(c10d::magic_size + 5, left());
    } catch (const StoreError& e) {
      throw StoreError("the service at " + where + " did not answer our handshake (" + e.what() +
                       "): it is not an elastic-run rendezvous store, or one too loaded to accept connections. A "
                       "PyTorch TCPStore (a torchrun agent's) cannot serve elastic-run agents.");
    }
    if (reply.compare(0, c10d::magic_size, c10d::magic) != 0) throw StoreError(not_ours);
    std::string rest = reply.substr(c10d::magic_size);
    c10d::Reader in(rest);
    const std::uint32_t version = in.u32();
    const auto answer = static_cast<c10d::HandshakeAnswer>(in.u8());
    const std::string& secret = options_.secret;
    switch (answer) {
      case c10d::HandshakeAnswer::refused:
        throw StoreError("the rendezvous store at " + where + " speaks protocol version " + std::to_string(version) +
                         ", this elastic-run speaks " + std::to_string(c10d::protocol_version));
      case c10d::HandshakeAnswer::busy: {
        std::string length = receive_within(4, left());
        busy = receive_within(std::min<std::uint32_t>(c10d::Reader(length).u32(), 4096), left());
        broken_ = false;
        return false;
      }
      case c10d::HandshakeAnswer::accepted:
        if (!secret.empty())
          throw StoreError("the rendezvous store at " + where +
                           " asks for no job secret, but one is configured here: it is not this job's store");
        return true;
      case c10d::HandshakeAnswer::secret_required: {
        if (secret.empty())
          throw StoreError("the rendezvous store at " + where +
                           " requires the job secret (--rdzv-conf secret_file=, ELASTIC_RDZV_SECRET_FILE or "
                           "ELASTIC_RDZV_SECRET), and none is configured here");
        std::string nonce_bytes = receive_within(c10d::nonce_size, left());
        c10d::Reader nonce_reader(nonce_bytes);
        const auto server_nonce = nonce_reader.bytes<c10d::nonce_size>();
        const auto client_nonce = c10d::random_nonce();
        const auto proof = c10d::prove(secret, "client", server_nonce, client_nonce);
        c10d::Writer w;
        w.raw(client_nonce.data(), client_nonce.size()).raw(proof.data(), proof.size());
        std::string theirs;
        try {
          send_within(w.data(), left());
          theirs = receive_within(c10d::proof_size, left());
        } catch (const StoreError&) {
          throw StoreError("the rendezvous store at " + where + " refused our job secret (it holds another one)");
        }
        c10d::Reader proof_reader(theirs);
        if (!c10d::same_proof(proof_reader.bytes<c10d::proof_size>(),
                              c10d::prove(secret, "server", server_nonce, client_nonce)))
          throw StoreError("the rendezvous store at " + where + " does not know the job secret");
        return true;
      }
    }
    throw StoreError(not_ours);
  }

  static c10d::Writer request(c10d::Op op) {
    c10d::Writer w;
    w.u8(static_cast<std::uint8_t>(op));
    return w;
  }
  static std::chrono::milliseconds next_slice(std::chrono::steady_clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return std::max(std::chrono::milliseconds(0), std::min(left, c10d::wait_slice));
  }

  // One request and its answer's fields (after the status), within the read timeout
  // (plus `server_wait` for waits).
  std::string call(const c10d::Writer& w, std::chrono::milliseconds server_wait = {}) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (broken_) throw StoreError("the connection to the rendezvous store is lost: " + broken_reason_);
    send_within(w.framed(), options_.read_timeout + server_wait);
    std::string header = receive_within(4, options_.read_timeout + server_wait);
    std::string answer = receive_within(c10d::Reader(header).u32(), options_.read_timeout + server_wait);
    if (answer.empty()) fail("an empty answer");
    if (answer[0] != 0) {
      std::string rest = answer.substr(1);
      throw StoreError(c10d::Reader(rest).str());
    }
    return answer.substr(1);
  }

  void send_within(const std::string& bytes, std::chrono::milliseconds limit) {
    asio::error_code error = asio::error::timed_out;
    asio::async_write(socket_, asio::buffer(bytes), [&](const asio::error_code& e, std::size_t) { error = e; });
    run_for(limit);
    if (error) fail(error == asio::error::timed_out ? "no progress within read_timeout" : error.message());
  }
  std::string receive_within(std::size_t size, std::chrono::milliseconds limit) {
    if (size > c10d::default_max_answer) fail("an oversized answer");
    std::string data(size, '\0');
    asio::error_code error = asio::error::timed_out;
    asio::async_read(socket_, asio::buffer(data), [&](const asio::error_code& e, std::size_t) { error = e; });
    run_for(limit);
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
