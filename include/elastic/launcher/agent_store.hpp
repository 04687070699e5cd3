// The workers' store, served by the launcher (TORCHELASTIC_USE_AGENT_STORE=True):
// PyTorch's TCPStore wire protocol at MASTER_ADDR:MASTER_PORT, for as long as the
// node hosts group rank 0, so that the store outlives any worker and the master
// port is held by a live server. PyTorch's workers then connect to it as clients
// (torch.distributed's _create_c10d_store), under the key prefix
// /worker/attempt_<restart count>.
//
// Both dialects of the protocol are spoken, told apart by a connection's first
// request: torch 1.x (SET=0 ... WATCH_KEY=7, DELETE_KEY=8) and torch 2.x, whose
// clients open with VALIDATE and a magic number (then SET=1 ... DELETE_KEY=8,
// APPEND, MULTI_GET, MULTI_SET, CANCEL_WAIT, PING). Values travel as native-endian
// integers and u64-length-prefixed byte strings, as PyTorch sends them.
//
// Who may use it: a connection from this host is served when the socket at its
// other end belongs to a process descended from the launcher (its workers and
// theirs), found through /proc/net/tcp{,6} and /proc/<pid>/fd, or, in a job that may
// span several nodes, to a process whose environment holds the job's
// TORCHELASTIC_RUN_ID (a worker of another launcher of the job on this host). A
// connection from another host is served only in a job that may span several
// nodes: TCPStore's clients carry no credential to check them by. Anything else is
// closed at once and logged. Requests are bounded (key and value sizes, keys and bytes per
// request, open connections); a malformed or oversized one closes its connection, logged.
#pragma once

#include <dirent.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <elastic/launcher/config.hpp>
#include <elastic/launcher/membership.hpp>
#include <elastic/log.hpp>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace elastic::launcher {

struct AgentStoreLimits {
  std::size_t max_key = 64 << 10;
  std::size_t max_value = 64 << 20;
  std::size_t max_keys_per_request = 1 << 16;
  std::size_t max_connections = 4096;
};

namespace detail {

// The address of an accepted peer as the kernel lists it: v4-mapped v6 as v4.
inline asio::ip::address plain_address(const asio::ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    return asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
  return address;
}

// An address of /proc/net/tcp{,6}: hex of the in-memory 32-bit words.
inline std::optional<asio::ip::address> proc_net_address(const std::string& hex) {
  auto words = [&](std::size_t count, unsigned char* bytes) {
    if (hex.size() != count * 8) return false;
    for (std::size_t i = 0; i < count; ++i) {
      std::uint32_t word = static_cast<std::uint32_t>(std::stoul(hex.substr(i * 8, 8), nullptr, 16));
      std::memcpy(bytes + i * 4, &word, 4);
    }
    return true;
  };
  try {
    if (hex.size() == 8) {
      asio::ip::address_v4::bytes_type bytes{};
      if (words(1, bytes.data())) return plain_address(asio::ip::address_v4(bytes));
    } else {
      asio::ip::address_v6::bytes_type bytes{};
      if (words(4, bytes.data())) return plain_address(asio::ip::address_v6(bytes));
    }
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// The inode of the socket on this host whose local end is `client` and remote
// end `server`; 0 when none is listed.
inline unsigned long client_socket_inode(const asio::ip::tcp::endpoint& client, const asio::ip::tcp::endpoint& server) {
  const auto client_address = plain_address(client.address());
  const auto server_address = plain_address(server.address());
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout;
      unsigned long inode = 0;
      if (!(fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode))
        continue;
      auto split = [](const std::string& text) -> std::optional<std::pair<asio::ip::address, unsigned>> {
        auto colon = text.find(':');
        if (colon == std::string::npos) return std::nullopt;
        auto address = proc_net_address(text.substr(0, colon));
        if (!address) return std::nullopt;
        return std::make_pair(*address, static_cast<unsigned>(std::stoul(text.substr(colon + 1), nullptr, 16)));
      };
      try {
        auto l = split(local), r = split(remote);
        if (l && r && l->second == client.port() && r->second == server.port() && l->first == client_address &&
            r->first == server_address)
          return inode;
      } catch (const std::exception&) {
      }
    }
  }
  return 0;
}

// Whether process `pid` holds the socket `inode` open.
inline bool holds_socket(pid_t pid, unsigned long inode) {
  const std::string wanted = "socket:[" + std::to_string(inode) + "]";
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  bool found = false;
  if (DIR* fds = ::opendir(dir.c_str())) {
    while (dirent* fd = ::readdir(fds)) {
      if (fd->d_name[0] == '.') continue;
      char target[64] = {};
      const ssize_t n = ::readlink((dir + "/" + fd->d_name).c_str(), target, sizeof(target) - 1);
      if (n > 0 && wanted == std::string(target, static_cast<std::size_t>(n))) {
        found = true;
        break;
      }
    }
    ::closedir(fds);
  }
  return found;
}

// Every process's parent, from /proc/<pid>/stat.
inline std::multimap<pid_t, pid_t> process_children() {
  std::multimap<pid_t, pid_t> children;  // parent -> child
  if (DIR* proc = ::opendir("/proc")) {
    while (dirent* entry = ::readdir(proc)) {
      if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
      std::ifstream stat(std::string("/proc/") + entry->d_name + "/stat");
      std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
      auto close = text.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(text.substr(close + 1));
      std::string state;
      pid_t parent = 0;
      if (rest >> state >> parent) children.emplace(parent, static_cast<pid_t>(std::atol(entry->d_name)));
    }
    ::closedir(proc);
  }
  return children;
}

// Whether this process or one descended from it holds the socket `inode` open.
inline bool descendant_holds_socket(unsigned long inode) {
  if (inode == 0) return false;
  if (holds_socket(::getpid(), inode)) return true;  // a library user may talk to its own store
  const auto children = process_children();
  std::vector<pid_t> queue{::getpid()};
  std::set<pid_t> seen{::getpid()};
  while (!queue.empty()) {
    const pid_t parent = queue.back();
    queue.pop_back();
    auto [first, last] = children.equal_range(parent);
    for (auto it = first; it != last; ++it) {
      if (!seen.insert(it->second).second) continue;
      queue.push_back(it->second);
      if (holds_socket(it->second, inode)) return true;
    }
  }
  return false;
}

// Whether a process of this host that runs with TORCHELASTIC_RUN_ID=`run_id`
// (a worker of another launcher of the job here) holds the socket `inode` open.
inline bool job_process_holds_socket(unsigned long inode, const std::string& run_id) {
  if (inode == 0) return false;
  const std::string wanted = "TORCHELASTIC_RUN_ID=" + run_id;
  for (const auto& [parent, pid] : process_children()) {
    (void)parent;
    if (!holds_socket(pid, inode)) continue;
    std::ifstream environ_file("/proc/" + std::to_string(pid) + "/environ");
    for (std::string entry; std::getline(environ_file, entry, '\0');)
      if (entry == wanted) return true;
    return false;
  }
  return false;
}

// This host's interface addresses (loopback included).
inline std::set<asio::ip::address> local_addresses() {
  std::set<asio::ip::address> result;
  ifaddrs* interfaces = nullptr;
  if (::getifaddrs(&interfaces) != 0) return result;
  for (ifaddrs* i = interfaces; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) continue;
    if (i->ifa_addr->sa_family == AF_INET) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(i->ifa_addr);
      asio::ip::address_v4::bytes_type bytes{};
      std::memcpy(bytes.data(), &in->sin_addr, 4);
      result.insert(asio::ip::address_v4(bytes));
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(i->ifa_addr);
      asio::ip::address_v6::bytes_type bytes{};
      std::memcpy(bytes.data(), &in6->sin6_addr, 16);
      result.insert(asio::ip::address_v6(bytes));
    }
  }
  ::freeifaddrs(interfaces);
  return result;
}

}  // namespace detail

class AgentStore {
 public:
  // Listens on `port` of every interface (0: a free one) with SO_REUSEADDR, beside
  // the launcher's hold on it (port.hpp). `job_of_several_nodes`: the run id of a
  // job that may span several nodes, whose workers on other hosts (and those of
  // its other launchers on this one) are served too. Throws std::system_error when
  // the port cannot be listened on.
  AgentStore(int port, std::optional<std::string> job_of_several_nodes, AgentStoreLimits limits = {})
      : acceptor_(io_),
        remote_peers_(job_of_several_nodes.has_value()),
        run_id_(job_of_several_nodes.value_or("")),
        limits_(limits),
        local_(detail::local_addresses()) {
    asio::ip::tcp::endpoint endpoint(asio::ip::tcp::v6(), static_cast<std::uint16_t>(port));
    asio::error_code ec;
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) {
      acceptor_.set_option(asio::ip::v6_only(false), ec);
    } else {  // no IPv6 here
      endpoint = asio::ip::tcp::endpoint(asio::ip::tcp::v4(), static_cast<std::uint16_t>(port));
      acceptor_.open(endpoint.protocol());
    }
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(endpoint);
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~AgentStore() {
    asio::post(io_, [this] {
      asio::error_code ignored;
      acceptor_.close(ignored);
      retry_.cancel();
      for (auto& connection : std::vector<std::shared_ptr<Connection>>(connections_.begin(), connections_.end()))
        connection->close();
      io_.stop();
    });
    thread_.join();
  }
  AgentStore(const AgentStore&) = delete;
  AgentStore& operator=(const AgentStore&) = delete;

  int port() const { return port_; }

  // Connections refused so far (strangers, over the limit, malformed requests).
  std::size_t refused() const { return refused_.load(); }

 private:
  enum class Dialect { unknown, v1, v2 };
  // Torch 1.x's request types and torch 2.x's (VALIDATE first).
  enum class Op {
    set,
    compare_set,
    get,
    add,
    check,
    wait,
    num_keys,
    watch_key,
    delete_key,
    append,
    multi_get,
    multi_set,
    cancel_wait,
    ping,
    validate,
    unknown
  };
  static constexpr std::uint32_t v2_magic = 0x3C85F7CE;

  static Op decode(Dialect dialect, std::uint8_t code) {
    static constexpr Op v1[] = {Op::set,  Op::compare_set, Op::get,       Op::add,       Op::check,
                                Op::wait, Op::num_keys,    Op::watch_key, Op::delete_key};
    static constexpr Op v2[] = {Op::validate,  Op::set,       Op::compare_set, Op::get,        Op::add,
                                Op::check,     Op::wait,      Op::num_keys,    Op::delete_key, Op::append,
                                Op::multi_get, Op::multi_set, Op::cancel_wait, Op::ping};
    if (dialect == Dialect::v2) return code < std::size(v2) ? v2[code] : Op::unknown;
    return code < std::size(v1) ? v1[code] : Op::unknown;
  }

  // A request that cannot be served: the connection is closed, and this logged.
  struct BadRequest {
    std::string why;
  };

  // Reads one request from the front of a buffer; `complete` false when more
  // bytes are needed (nothing is consumed then).
  class Cursor {
   public:
    Cursor(const std::string& buffer, const AgentStoreLimits& limits) : buffer_(buffer), limits_(limits) {}
    template <typename T>
    std::optional<T> value() {
      if (buffer_.size() - pos_ < sizeof(T)) return std::nullopt;
      T v;
      std::memcpy(&v, buffer_.data() + pos_, sizeof(T));
      pos_ += sizeof(T);
      return v;
    }
    std::optional<std::string> bytes(std::size_t limit, const char* what) {
      auto size = value<std::uint64_t>();
      if (!size) return std::nullopt;
      if (*size > limit)
        throw BadRequest{std::string(what) + " of " + std::to_string(*size) + " bytes is over the limit"};
      if (buffer_.size() - pos_ < *size) return std::nullopt;
      std::string s = buffer_.substr(pos_, static_cast<std::size_t>(*size));
      pos_ += static_cast<std::size_t>(*size);
      return s;
    }
    std::optional<std::string> key() { return bytes(limits_.max_key, "a key"); }
    std::optional<std::string> data() { return bytes(limits_.max_value, "a value"); }
    std::optional<std::vector<std::string>> keys() {
      auto count = value<std::uint64_t>();
      if (!count) return std::nullopt;
      if (*count > limits_.max_keys_per_request) throw BadRequest{"too many keys in one request"};
      std::vector<std::string> result;
      for (std::uint64_t i = 0; i < *count; ++i) {
        auto k = key();
        if (!k) return std::nullopt;
        result.push_back(std::move(*k));
      }
      return result;
    }
    std::size_t used() const { return pos_; }

   private:
    const std::string& buffer_;
    const AgentStoreLimits& limits_;
    std::size_t pos_ = 0;
  };

  class Connection : public std::enable_shared_from_this<Connection> {
   public:
    Connection(AgentStore& store, asio::ip::tcp::socket socket) : store_(store), socket_(std::move(socket)) {}

    void start() { read(); }

    void close() {
      asio::error_code ignored;
      socket_.close(ignored);
      store_.connections_.erase(shared_from_this());
      store_.waiters_.erase(this);
    }

    // A key changed: answer the pending WAIT once all its keys exist.
    void recheck_wait() {
      if (!waiting_) return;
      for (const auto& k : wait_keys_)
        if (!store_.data_.count(k)) return;
      waiting_ = false;
      wait_keys_.clear();
      store_.waiters_.erase(this);
      send(std::string(1, '\0'));  // STOP_WAITING
      process();
    }

   private:
    void read() {
      auto self = shared_from_this();
      socket_.async_read_some(asio::buffer(chunk_), [self](const asio::error_code& ec, std::size_t got) {
        if (ec) return self->close();
        self->in_.append(self->chunk_.data(), got);
        // One request at most is buffered (clients wait for each answer): anything
        // larger than the largest request is refused.
        if (self->in_.size() > self->store_.max_request()) {
          self->store_.refuse(self->socket_, "a request over " + std::to_string(self->store_.max_request()) + " bytes");
          return self->close();
        }
        self->process();
        if (self->socket_.is_open()) self->read();
      });
    }

    void process() {
      try {
        while (!in_.empty() && socket_.is_open()) {
          if (dialect_ == Dialect::unknown) {
            if (static_cast<std::uint8_t>(in_[0]) != 0) {
              dialect_ = Dialect::v1;
            } else {
              if (in_.size() < 5) return;  // VALIDATE and its magic, or a 1.x SET's key length
              std::uint32_t magic;
              std::memcpy(&magic, in_.data() + 1, 4);
              dialect_ = magic == v2_magic ? Dialect::v2 : Dialect::v1;
            }
          }
          Cursor cursor(in_, store_.limits_);
          const Op op = decode(dialect_, static_cast<std::uint8_t>(in_[0]));
          cursor.value<std::uint8_t>();
          // A client waits for one answer at a time; while a WAIT is pending only
          // its cancellation (2.x) is read.
          if (waiting_ && op != Op::cancel_wait) return;
          if (!handle(op, cursor)) return;  // incomplete
          in_.erase(0, cursor.used());
        }
      } catch (const BadRequest& bad) {
        store_.refuse(socket_, bad.why);
        close();
      }
    }

    // Serves one request; false when it is not all there yet.
    bool handle(Op op, Cursor& c) {
      auto& data = store_.data_;
      switch (op) {
        case Op::validate: {
          auto magic = c.value<std::uint32_t>();
          if (!magic) return false;
          if (*magic != v2_magic) throw BadRequest{"a wrong VALIDATE number"};
          return true;
        }
        case Op::ping: {
          auto nonce = c.value<std::uint32_t>();
          if (!nonce) return false;
          send(raw(*nonce));
          return true;
        }
        case Op::set:
        case Op::append: {
          auto k = c.key();
          if (!k) return false;
          auto v = c.data();
          if (!v) return false;
          if (op == Op::append) {
            std::string& current = data[*k];
            if (current.size() + v->size() > store_.limits_.max_value)
              throw BadRequest{"an APPEND over the value limit"};
            current += *v;
          } else {
            data[*k] = std::move(*v);
          }
          store_.changed();
          return true;
        }
        case Op::multi_set: {
          auto count = c.value<std::uint64_t>();
          if (!count) return false;
          if (*count > store_.limits_.max_keys_per_request) throw BadRequest{"too many keys in one request"};
          std::vector<std::pair<std::string, std::string>> items;
          for (std::uint64_t i = 0; i < *count; ++i) {
            auto k = c.key();
            if (!k) return false;
            auto v = c.data();
            if (!v) return false;
            items.emplace_back(std::move(*k), std::move(*v));
          }
          for (auto& [k, v] : items) data[k] = std::move(v);
          store_.changed();
          return true;
        }
        case Op::compare_set: {
          auto k = c.key();
          if (!k) return false;
          auto expected = c.data();
          if (!expected) return false;
          auto desired = c.data();
          if (!desired) return false;
          // PyTorch's answer: the value now stored; for a missing key, the desired
          // value when none was expected, else the expected one.
          auto found = data.find(*k);
          if (found == data.end()) {
            if (expected->empty()) {
              data[*k] = *desired;
              send(vector(*desired));
              store_.changed();
            } else {
              send(vector(*expected));
            }
          } else {
            if (found->second == *expected) found->second = std::move(*desired);
            send(vector(found->second));
            store_.changed();
          }
          return true;
        }
        case Op::get: {
          auto k = c.key();
          if (!k) return false;
          auto found = data.find(*k);
          // Clients wait for a key before they get it.
          if (found == data.end()) throw BadRequest{"GET of a key that is not set"};
          send(vector(found->second));
          return true;
        }
        case Op::multi_get: {
          auto ks = c.keys();
          if (!ks) return false;
          std::string answer;
          for (const auto& k : *ks) {
            auto found = data.find(k);
            if (found == data.end()) throw BadRequest{"MULTI_GET of a key that is not set"};
            answer += vector(found->second);
          }
          send(answer);
          return true;
        }
        case Op::add: {
          auto k = c.key();
          if (!k) return false;
          auto delta = c.value<std::int64_t>();
          if (!delta) return false;
          std::int64_t value = *delta;
          if (auto found = data.find(*k); found != data.end()) {
            std::size_t used = 0;
            long long current = 0;
            try {
              current = std::stoll(found->second, &used);
            } catch (const std::exception&) {
              used = 0;
            }
            if (used == 0) throw BadRequest{"ADD to a value that is not a number"};
            value = static_cast<std::int64_t>(static_cast<std::uint64_t>(current) + static_cast<std::uint64_t>(*delta));
          }
          data[*k] = std::to_string(value);
          send(raw(value));
          store_.changed();
          return true;
        }
        case Op::check: {
          auto ks = c.keys();
          if (!ks) return false;
          const bool ready =
              std::all_of(ks->begin(), ks->end(), [&](const std::string& k) { return data.count(k) > 0; });
          send(std::string(1, ready ? '\0' : '\1'));  // READY, NOT_READY
          return true;
        }
        case Op::wait: {
          auto ks = c.keys();
          if (!ks) return false;
          if (std::all_of(ks->begin(), ks->end(), [&](const std::string& k) { return data.count(k) > 0; })) {
            send(std::string(1, '\0'));  // STOP_WAITING
          } else {
            waiting_ = true;
            wait_keys_ = std::move(*ks);
            store_.waiters_.insert(this);
          }
          return true;
        }
        case Op::cancel_wait: {
          if (waiting_) {
            waiting_ = false;
            wait_keys_.clear();
            store_.waiters_.erase(this);
          }
          send(std::string(1, '\1'));  // WAIT_CANCELED
          return true;
        }
        case Op::num_keys: send(raw(static_cast<std::int64_t>(data.size()))); return true;
        case Op::delete_key: {
          auto k = c.key();
          if (!k) return false;
          send(raw(static_cast<std::int64_t>(data.erase(*k))));
          return true;
        }
        case Op::watch_key: throw BadRequest{"WATCH_KEY (key callbacks) is not served"};
        case Op::unknown: break;
      }
      throw BadRequest{"an unknown request type " +
                       std::to_string(static_cast<unsigned>(static_cast<std::uint8_t>(in_[0])))};
    }

    template <typename T>
    static std::string raw(T v) {
      return std::string(reinterpret_cast<const char*>(&v), sizeof(T));
    }
    static std::string vector(const std::string& bytes) {
      return raw(static_cast<std::uint64_t>(bytes.size())) + bytes;
    }

    void send(std::string bytes) {
      out_.push_back(std::move(bytes));
      if (out_.size() == 1) write();
    }
    void write() {
      auto self = shared_from_this();
      asio::async_write(socket_, asio::buffer(out_.front()), [self](const asio::error_code& ec, std::size_t) {
        if (ec) return self->close();
        self->out_.pop_front();
        if (!self->out_.empty()) self->write();
      });
    }

    AgentStore& store_;
    asio::ip::tcp::socket socket_;
    std::array<char, 64 << 10> chunk_{};
    std::string in_;
    std::deque<std::string> out_;
    Dialect dialect_ = Dialect::unknown;
    bool waiting_ = false;
    std::vector<std::string> wait_keys_;
  };

  std::size_t max_request() const { return 2 * limits_.max_value + 2 * limits_.max_key + 64; }

  void accept() {
    acceptor_.async_accept([this](const asio::error_code& ec, asio::ip::tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      if (!ec) {
        admit(std::move(socket));
        return accept();
      }
      // Out of descriptors, say: try again shortly rather than spin.
      retry_.expires_after(std::chrono::milliseconds(100));
      retry_.async_wait([this](const asio::error_code& wait_ec) {
        if (!wait_ec) accept();
      });
    });
  }

  // Serves a connection of the job; closes anyone else's (logged).
  void admit(asio::ip::tcp::socket socket) {
    asio::error_code ec;
    const auto peer = socket.remote_endpoint(ec);
    if (ec) return;
    const auto address = detail::plain_address(peer.address());
    const bool local =
        address.is_loopback() || local_.count(address) > 0 || (address.is_v6() && address.to_v6().is_loopback());
    if (connections_.size() >= limits_.max_connections) return refuse(socket, "too many open connections");
    if (local) {
      const auto inode = detail::client_socket_inode(peer, socket.local_endpoint(ec));
      if (!detail::descendant_holds_socket(inode) &&
          !(remote_peers_ && detail::job_process_holds_socket(inode, run_id_)))
        return refuse(socket, "not a process of this job");
    } else if (!remote_peers_) {
      return refuse(socket, "a single-node job takes no connection from another host");
    }
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
    auto connection = std::make_shared<Connection>(*this, std::move(socket));
    connections_.insert(connection);
    connection->start();
  }

  void refuse(asio::ip::tcp::socket& socket, const std::string& why) {
    asio::error_code ec;
    const auto peer = socket.remote_endpoint(ec);
    const std::string who =
        ec ? "?" : detail::plain_address(peer.address()).to_string() + ":" + std::to_string(peer.port());
    // Logged up to a bound, so that a flood cannot fill the log.
    if (++refused_ <= 100) log::warning("workers' store on port {}: refused {}: {}", port_, who, why);
    socket.close(ec);
  }

  // A key was set: answer the WAITs it completes.
  void changed() {
    for (Connection* waiter : std::vector<Connection*>(waiters_.begin(), waiters_.end()))
      if (waiters_.count(waiter)) waiter->recheck_wait();
  }

  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  asio::steady_timer retry_{io_};
  const bool remote_peers_;
  const std::string run_id_;
  const AgentStoreLimits limits_;
  const std::set<asio::ip::address> local_;
  int port_ = 0;
  std::atomic<std::size_t> refused_{0};
  std::unordered_map<std::string, std::string> data_;
  std::set<std::shared_ptr<Connection>> connections_;
  std::set<Connection*> waiters_;
  std::thread thread_;
};

namespace detail {

// Before each round's workers start: on the node hosting group rank 0 (with the
// agent store on), a store serving MASTER_PORT, kept while the port stays the same
// (the whole job on static; a round on c10d and etcd, whose port is new each
// round); elsewhere none. Throws std::runtime_error when the port cannot be served.
inline void serve_agent_store(const LaunchConfig& config, const NodeAssignment& node,
                              std::unique_ptr<AgentStore>& store) {
  if (!config.agent_store || node.group_rank != 0) {
    store.reset();
    return;
  }
  if (store && store->port() == node.master_port) return;
  store.reset();
  try {
    store = std::make_unique<AgentStore>(
        node.master_port, config.max_nodes > 1 ? std::optional<std::string>(config.run_id) : std::nullopt);
  } catch (const std::system_error& e) {
    throw std::runtime_error("the workers' store cannot listen on port " + std::to_string(node.master_port) + ": " +
                             e.code().message() + " (give another --master-port, or --no-agent-store)");
  }
  log::info("serving the workers' store (TORCHELASTIC_USE_AGENT_STORE=True) on port {}", store->port());
}

}  // namespace detail

}  // namespace elastic::launcher
