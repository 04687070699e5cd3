// Named LogsSpecs, as torchrun's --logs-specs names an entry point of the group
// "torchrun.logs_specs". "default" is DefaultLogsSpecs; a program that launches
// workers through this library can add its own before it parses its options:
//
//   elastic::multiprocessing::register_logs_specs("mine", [](auto log_dir, auto redirects, auto tee, auto filter) {
//     return std::make_shared<MyLogsSpecs>(log_dir, redirects, tee, filter);
//   });
//   auto specs = elastic::multiprocessing::make_logs_specs("mine", log_dir, redirects, tee, filter);
#pragma once

#include <elastic/multiprocessing/logs_specs.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace elastic::multiprocessing {

// The arguments torchrun gives a logs specs class: log_dir, redirects, tee, local_ranks_filter.
using LogsSpecsFactory =
    std::function<std::shared_ptr<LogsSpecs>(std::optional<std::string> log_dir, StdSpec redirects, StdSpec tee,
                                             std::optional<std::set<int>> local_ranks_filter)>;

// No logs specs of that name is registered.
class UnknownLogsSpecsError : public std::invalid_argument {
 public:
  UnknownLogsSpecsError(const std::string& name, const std::vector<std::string>& known)
      : std::invalid_argument(message(name, known)), name_(name) {}
  const std::string& name() const { return name_; }

 private:
  static std::string message(const std::string& name, const std::vector<std::string>& known) {
    std::string text = "no logs specs named '" + name + "' (known:";
    for (const auto& k : known) text += " " + k;
    return text + ")";
  }
  std::string name_;
};

namespace detail {

struct LogsSpecsRegistry {
  std::mutex mutex;
  std::map<std::string, LogsSpecsFactory> factories;
};

// One registry per process (an inline function's static is shared by every
// translation unit), filled with "default" on first use.
inline LogsSpecsRegistry& logs_specs_registry() {
  static LogsSpecsRegistry registry{{},
                                    {{"default",
                                      [](std::optional<std::string> log_dir, StdSpec redirects, StdSpec tee,
                                         std::optional<std::set<int>> filter) -> std::shared_ptr<LogsSpecs> {
                                        return std::make_shared<DefaultLogsSpecs>(std::move(log_dir),
                                                                                  std::move(redirects), std::move(tee),
                                                                                  std::move(filter));
                                      }}}};
  return registry;
}

}  // namespace detail

// Adds `name`, or replaces what it named ("default" included). An empty name
// or factory is rejected.
inline void register_logs_specs(const std::string& name, LogsSpecsFactory factory) {
  if (name.empty()) throw std::invalid_argument("register_logs_specs: empty name");
  if (!factory) throw std::invalid_argument("register_logs_specs: empty factory for '" + name + "'");
  auto& registry = detail::logs_specs_registry();
  std::lock_guard<std::mutex> lock(registry.mutex);
  registry.factories[name] = std::move(factory);
}

// The registered names, sorted.
inline std::vector<std::string> logs_specs_names() {
  auto& registry = detail::logs_specs_registry();
  std::lock_guard<std::mutex> lock(registry.mutex);
  std::vector<std::string> names;
  for (const auto& entry : registry.factories) names.push_back(entry.first);
  return names;
}

// A new LogsSpecs of the kind registered as `name`; throws UnknownLogsSpecsError.
inline std::shared_ptr<LogsSpecs> make_logs_specs(const std::string& name,
                                                  std::optional<std::string> log_dir = std::nullopt,
                                                  StdSpec redirects = Std::NONE, StdSpec tee = Std::NONE,
                                                  std::optional<std::set<int>> local_ranks_filter = std::nullopt) {
  LogsSpecsFactory factory;
  {
    auto& registry = detail::logs_specs_registry();
    std::lock_guard<std::mutex> lock(registry.mutex);
    auto found = registry.factories.find(name);
    if (found != registry.factories.end()) factory = found->second;
  }
  if (!factory) throw UnknownLogsSpecsError(name, logs_specs_names());
  auto specs = factory(std::move(log_dir), std::move(redirects), std::move(tee), std::move(local_ranks_filter));
  if (!specs) throw std::runtime_error("logs specs '" + name + "' made nothing");
  return specs;
}

}  // namespace elastic::multiprocessing
