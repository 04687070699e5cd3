// Opening a rendezvous store by --rdzv-backend name: c10d (hosted by the agent whose
// host is the endpoint's, or by is_host), etcd and etcd-v2 (one implementation, in
// <elastic/rendezvous/etcd_store.hpp> when this build has it).
#pragma once

#include <ifaddrs.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <elastic/rendezvous/c10d_store.hpp>
#include <elastic/rendezvous/errors.hpp>
#include <elastic/rendezvous/settings.hpp>
#include <elastic/rendezvous/store.hpp>
#include <elastic/rendezvous/store_registry.hpp>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <utility>

// The etcd store needs cpp-httplib, linked: the elastic::rendezvous_etcd target
// (CMake option ELASTIC_WITH_ETCD) defines ELASTIC_WITH_ETCD=1, and the header then
// registers the backend (store_registry.hpp). No inline body below depends on the
// macro: whether etcd is there is asked at run time (store_backend_available()).
#if defined(ELASTIC_WITH_ETCD) && ELASTIC_WITH_ETCD
#include <elastic/rendezvous/etcd_store.hpp>
#endif

namespace elastic::rendezvous {

inline bool is_dynamic_backend(const std::string& name) {
  return name == "c10d" || name == "etcd" || name == "etcd-v2";
}

// Whether this program can open the dynamic backend `name` (c10d always; etcd when
// a translation unit of it includes etcd_store.hpp).
inline bool store_backend_available(const std::string& name) {
  return name == "c10d" || find_store_backend(name).has_value();
}

// Checks the backend's own --rdzv-conf keys (etcd: TLS files), opening nothing.
inline void validate_backend_config(const std::string& name, const std::map<std::string, std::string>& config) {
  if (auto backend = find_store_backend(name); backend && backend->validate) backend->validate(config);
}

// An endpoint list "a:2379,b:2379" (etcd's members) split at its commas; an empty
// list is one empty endpoint. An empty item is a RendezvousConfigError.
inline std::vector<std::string> split_endpoints(const std::string& endpoints) {
  std::vector<std::string> items;
  std::size_t start = 0;
  for (;;) {
    const auto comma = endpoints.find(',', start);
    items.push_back(endpoints.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (items.size() > 1)
    for (const auto& item : items)
      if (item.empty())
        throw RendezvousConfigError("the rendezvous endpoint list '" + endpoints + "' has an empty item");
  return items;
}

// "host[:port]", "[v6]:port"; an empty endpoint is localhost.
inline std::pair<std::string, int> parse_endpoint(const std::string& endpoint, int default_port) {
  if (endpoint.empty()) return {"localhost", default_port};
  std::string host = endpoint;
  int port = default_port;
  auto colon = endpoint.rfind(':');
  const bool bracketed = !endpoint.empty() && endpoint.front() == '[';
  const bool bare_v6 = !bracketed && endpoint.find(':') != colon;
  if (colon != std::string::npos && !bare_v6 && (!bracketed || endpoint[colon - 1] == ']')) {
    std::string digits = endpoint.substr(colon + 1);
    bool ok = !digits.empty() && digits.size() <= 5 && digits.find_first_not_of("0123456789") == std::string::npos;
    if (!ok || std::stoi(digits) > 65535)
      throw RendezvousConfigError("the rendezvous endpoint '" + endpoint + "' has an invalid port");
    port = std::stoi(digits);
    host = endpoint.substr(0, colon);
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) throw RendezvousConfigError("the rendezvous endpoint '" + endpoint + "' has no host");
  return {host, port};
}

namespace detail {

inline std::string numeric_address(const sockaddr* address) {
  char text[NI_MAXHOST] = {};
  socklen_t length = address->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::getnameinfo(address, length, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) != 0) return "";
  std::string result = text;
  if (auto percent = result.find('%'); percent != std::string::npos) result.erase(percent);
  return result;
}

}  // namespace detail

// Whether `host` names this machine: one of its interface addresses (loopback included).
inline bool is_local_host(const std::string& host) {
  std::set<std::string> local;
  ifaddrs* interfaces = nullptr;
  if (::getifaddrs(&interfaces) == 0) {
    for (ifaddrs* i = interfaces; i != nullptr; i = i->ifa_next)
      if (i->ifa_addr != nullptr && (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6))
        local.insert(detail::numeric_address(i->ifa_addr));
    ::freeifaddrs(interfaces);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return false;
  bool match = false;
  for (addrinfo* a = found; a != nullptr && !match; a = a->ai_next) {
    std::string address = detail::numeric_address(a->ai_addr);
    match = local.count(address) > 0 || address.rfind("127.", 0) == 0;
  }
  ::freeaddrinfo(found);
  return match;
}

// A store session, and the server this agent hosts (c10d), which must outlive every
// other agent's use of it: the agent keeps it until it exits.
struct RendezvousBackend {
  std::unique_ptr<C10dStoreServer> server;
  std::shared_ptr<Store> store;
  std::string host;
  int port = 0;
};

// Opens the named backend. `log` hears about hosting decisions. Throws
// RendezvousConfigError (bad endpoint, unknown or absent backend),
// RendezvousConnectionError (no store reachable within read_timeout).
inline RendezvousBackend open_backend(const std::string& name, const std::string& endpoint,
                                      const RendezvousSettings& settings,
                                      const std::function<void(const std::string&)>& log = {}) {
  RendezvousBackend backend;
  StoreOptions options;
  options.read_timeout = settings.read_timeout;
  options.session_ttl = settings.session_ttl();
  options.config = settings.config;
  if (name == "c10d") {
    options.secret = job_secret(settings.config);
    std::tie(backend.host, backend.port) = parse_endpoint(endpoint, 29400);
    options.host = backend.host;
    options.port = backend.port;
    const bool host_it = settings.is_host.value_or(is_local_host(backend.host));
    if (host_it) {
      try {
        C10dServerOptions server_options;
        server_options.handshake_timeout =
            std::min<std::chrono::milliseconds>(settings.read_timeout, std::chrono::seconds(10));
        server_options.secret = options.secret;
        // Every launcher of the job holds one connection, and all of them may come
        // from one address (one host, or behind NAT): the limits grow with MAX.
        const auto nodes = static_cast<std::size_t>(std::max(settings.max_nodes, 0));
        server_options.max_connections_per_peer = std::max(server_options.max_connections_per_peer, nodes + 16);
        server_options.max_connections = std::max(server_options.max_connections, 2 * nodes + 64);
        if (log) server_options.log = log;
        backend.server = std::make_unique<C10dStoreServer>(backend.port, std::move(server_options));
        // Port 0 (torchrun's HOST:0): the free port the server got.
        backend.port = options.port = backend.server->port();
        if (log)
          log("hosting the c10d rendezvous store on port " + std::to_string(backend.port) +
              (options.secret.empty() ? " (no job secret: any peer that reaches the port is served)"
                                      : " (peers must prove the job secret)"));
      } catch (const std::system_error& e) {
        // Another agent on this host serves it already (or the port is someone else's:
        // then the handshake below says so).
        if (log) log("port " + std::to_string(backend.port) + ": " + e.code().message() + "; connecting as a client");
      }
    }
    try {
      backend.store = std::make_shared<C10dStoreClient>(options);
    } catch (const StoreError& e) {
      throw RendezvousConnectionError(e.what());
    }
    return backend;
  }
  if (name == "etcd" || name == "etcd-v2") {
    // "host1:2379,host2:2379,...": the cluster's members, the first tried first.
    const auto members = split_endpoints(endpoint);
    std::tie(backend.host, backend.port) = parse_endpoint(members.front(), 2379);
    options.host = backend.host;
    options.port = backend.port;
    for (std::size_t i = 1; i < members.size(); ++i) options.more_endpoints.push_back(parse_endpoint(members[i], 2379));
    auto etcd = find_store_backend(name);
    if (!etcd) throw RendezvousConfigError("rendezvous backend '" + name + "': this build has no etcd store");
    try {
      backend.store = etcd->open(options);
    } catch (const StoreError& e) {
      throw RendezvousConnectionError(e.what());
    }
    return backend;
  }
  throw RendezvousConfigError("unknown rendezvous backend '" + name + "' (static, c10d, etcd, etcd-v2)");
}

}  // namespace elastic::rendezvous
