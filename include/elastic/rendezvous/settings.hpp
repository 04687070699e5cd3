// --rdzv-conf for the dynamic backends: every key PyTorch reads, its default, and
// checks (a timeout that is not a positive integer is refused, as PyTorch's
// ValueError). Unknown keys are kept for the backend and otherwise ignored.
#pragma once

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <elastic/rendezvous/errors.hpp>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <string>

namespace elastic::rendezvous {

struct RendezvousSettings {
  std::string run_id = "none";
  int min_nodes = 1;
  int max_nodes = 1;
  std::chrono::seconds join_timeout{600};
  std::chrono::seconds last_call_timeout{30};
  std::chrono::seconds close_timeout{30};
  std::chrono::seconds heartbeat_timeout{5};
  std::chrono::seconds keep_alive_interval{5};
  int keep_alive_max_attempt = 3;
  std::chrono::seconds read_timeout{60};
  std::chrono::seconds legacy_timeout{900};   // `timeout`: legacy etcd join timeout, else unused
  std::optional<bool> is_host;                // c10d: unset means "from the endpoint"
  std::map<std::string, std::string> config;  // every key as given (TLS files for etcd, ...)

  // How long a node's ephemeral keys outlive its last keep-alive.
  std::chrono::milliseconds session_ttl() const { return keep_alive_interval * keep_alive_max_attempt; }
};

// A --rdzv-conf key holding a positive integer (absent: `fallback`); anything else
// is a RendezvousConfigError naming the key.
inline int positive_integer_setting(const std::map<std::string, std::string>& config, const std::string& key,
                                    int fallback) {
  auto it = config.find(key);
  if (it == config.end()) return fallback;
  const std::string& text = it->second;
  bool digits = !text.empty() && text.size() <= 9 &&
                std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || std::stoi(text) <= 0)
    throw RendezvousConfigError("--rdzv-conf: the " + key + " '" + text + "' is not a positive integer");
  return std::stoi(text);
}

namespace detail {

inline std::optional<bool> boolean(const std::map<std::string, std::string>& config, const std::string& key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  std::string value = it->second;
  for (auto& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (value == "1" || value == "true" || value == "t" || value == "yes" || value == "y") return true;
  if (value == "0" || value == "false" || value == "f" || value == "no" || value == "n") return false;
  throw RendezvousConfigError("--rdzv-conf: the " + key + " '" + it->second +
                              "' is not a boolean (1/0, true/false, yes/no)");
}

}  // namespace detail

inline RendezvousSettings parse_settings(const std::string& run_id, int min_nodes, int max_nodes,
                                         const std::map<std::string, std::string>& config) {
  using std::chrono::seconds;
  RendezvousSettings s;
  s.run_id = run_id;
  s.min_nodes = min_nodes;
  s.max_nodes = max_nodes;
  s.config = config;
  s.join_timeout = seconds(positive_integer_setting(config, "join_timeout", 600));
  s.last_call_timeout = seconds(positive_integer_setting(config, "last_call_timeout", 30));
  s.close_timeout = seconds(positive_integer_setting(config, "close_timeout", 30));
  s.heartbeat_timeout = seconds(positive_integer_setting(config, "heartbeat_timeout", 5));
  s.keep_alive_interval = seconds(positive_integer_setting(config, "keep_alive_interval", 5));
  s.keep_alive_max_attempt = positive_integer_setting(config, "keep_alive_max_attempt", 3);
  s.read_timeout = seconds(positive_integer_setting(config, "read_timeout", 60));
  s.legacy_timeout = seconds(positive_integer_setting(config, "timeout", 900));
  s.is_host = detail::boolean(config, "is_host");
  if (auto type = config.find("store_type"); type != config.end() && type->second != "tcp")
    throw RendezvousConfigError("--rdzv-conf: store_type '" + type->second + "' is not supported (only tcp)");
  if (run_id.empty()) throw RendezvousConfigError("--rdzv-id must not be empty");
  return s;
}

// The c10d store's job secret, from the first of: --rdzv-conf secret_file=PATH,
// the file named by ELASTIC_RDZV_SECRET_FILE, the value of ELASTIC_RDZV_SECRET.
// A file's trailing white space is dropped; it must be a regular file of at most
// 4 KiB and not empty. Empty result: no secret (any peer that reaches the port is
// served). Throws RendezvousConfigError for an unreadable or empty file.
inline std::string job_secret(const std::map<std::string, std::string>& config) {
  std::string path;
  if (auto it = config.find("secret_file"); it != config.end()) {
    path = it->second;
  } else if (const char* env = std::getenv("ELASTIC_RDZV_SECRET_FILE"); env != nullptr && *env != '\0') {
    path = env;
  } else if (const char* value = std::getenv("ELASTIC_RDZV_SECRET"); value != nullptr) {
    return value;
  } else {
    return {};
  }
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0 || !S_ISREG(info.st_mode))
    throw RendezvousConfigError("the rendezvous secret file '" + path + "' is not a readable regular file");
  if (info.st_size > 4096)
    throw RendezvousConfigError("the rendezvous secret file '" + path + "' is larger than 4 KiB");
  std::ifstream in(path, std::ios::binary);
  std::string secret((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) throw RendezvousConfigError("the rendezvous secret file '" + path + "' cannot be read");
  while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.back()))) secret.pop_back();
  if (secret.empty()) throw RendezvousConfigError("the rendezvous secret file '" + path + "' is empty");
  return secret;
}

}  // namespace elastic::rendezvous
