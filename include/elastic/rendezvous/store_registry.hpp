// Stores opened by --rdzv-backend name, chosen at run time. A backend's header
// registers it (etcd_store.hpp registers "etcd" and "etcd-v2"), so whether a
// program has a backend depends on whether any of its translation units includes
// that header, and never on a macro that would give one inline function two
// bodies (translation units built with and without ELASTIC_WITH_ETCD mix safely).
#pragma once

#include <elastic/rendezvous/store.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace elastic::rendezvous {

struct StoreBackend {
  std::function<std::unique_ptr<Store>(const StoreOptions&)> open;
  // Checks the backend's --rdzv-conf keys, opening nothing (RendezvousConfigError).
  std::function<void(const std::map<std::string, std::string>&)> validate;
};

namespace detail {
struct StoreRegistry {
  std::mutex mutex;
  std::map<std::string, StoreBackend> backends;
};
inline StoreRegistry& store_registry() {
  static StoreRegistry registry;
  return registry;
}
}  // namespace detail

// Returns true, for use as an inline variable's initializer in a backend's header.
inline bool register_store_backend(const std::string& name, StoreBackend backend) {
  auto& registry = detail::store_registry();
  std::lock_guard<std::mutex> lock(registry.mutex);
  registry.backends[name] = std::move(backend);
  return true;
}

// The backend registered under `name`, or nothing.
inline std::optional<StoreBackend> find_store_backend(const std::string& name) {
  auto& registry = detail::store_registry();
  std::lock_guard<std::mutex> lock(registry.mutex);
  auto it = registry.backends.find(name);
  if (it == registry.backends.end()) return std::nullopt;
  return it->second;
}

}  // namespace elastic::rendezvous
