// A small etcd v3 client over the JSON gateway that etcd serves on its client port
// (POST /v3/kv/*, /v3/lease/*, /v3/watch), through cpp-httplib and nlohmann/json.
// Keys and values travel base64-encoded, 64-bit integers as strings, and fields
// that are false or zero are left out of the answers.
//
// A gateway is a peer like any other: an answer is at most max_answer bytes, its
// JSON at most detail::default_json_depth deep, and a request, retries included,
// ends by its deadline (read_timeout) however slowly the bytes come: a watchdog
// thread stops the connection of a request past its deadline, and cancel() stops
// every request in flight at once (the launcher, told to stop).
#pragma once

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <elastic/rendezvous/detail/base64.hpp>
#include <elastic/rendezvous/detail/bounded_json.hpp>
#include <elastic/signal_free_thread.hpp>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace elastic::rendezvous::detail {

// etcd did not answer: refused or dropped connection, no answer within the read
// timeout, a TLS failure.
class EtcdUnreachableError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// etcd answered with an error (an unknown lease, no leader, a malformed request).
class EtcdRequestError : public std::runtime_error {
 public:
  EtcdRequestError(const std::string& what, int code) : std::runtime_error(what), grpc_code(code) {}
  int grpc_code;  // gRPC status code etcd put in the answer (5: not found, 9: exists, 14: unavailable)
};

// A request that may not be repeated blindly (a compare-and-put) was sent, and no
// answer came: the member went silent, or etcd answered that it timed out (a
// leader election). Whether etcd applied it is not known; the caller may read
// the key to find out.
class EtcdOutcomeUnknownError : public EtcdUnreachableError {
 public:
  using EtcdUnreachableError::EtcdUnreachableError;
};

struct EtcdClientOptions {
  std::string host = "127.0.0.1";
  int port = 2379;
  // The cluster's other members: a request that cannot reach one member (refused,
  // dropped, no leader there, no answer within member_timeout) goes to the next in
  // turn, within its deadline.
  std::vector<std::pair<std::string, int>> more_endpoints;
  // With several members, how long one may leave a request unanswered before it is
  // tried on the next (a member cut off drops packets: nothing is refused). The
  // bound doubles after each round of every member, up to read_timeout, so a
  // cluster that is only slow is still waited for.
  std::chrono::milliseconds member_timeout{std::chrono::seconds(5)};
  std::string protocol = "http";  // or https
  std::string ca_cert;            // https: CA bundle that signed etcd's certificate
  std::string ssl_cert;           // https: client certificate and its key, when etcd asks for one
  std::string ssl_cert_key;
  // Bounds each request as a whole: connecting, sending, every byte of the answer,
  // and the retries while etcd restarts.
  std::chrono::milliseconds read_timeout{std::chrono::seconds(60)};
  // The largest answer (or watch message) taken; etcd's answers to the rendezvous
  // are a few KiB.
  std::size_t max_answer = std::size_t{16} << 20;
};

struct EtcdKeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;
  std::int64_t version = 0;
  std::int64_t lease = 0;
};

struct EtcdRangeResult {
  std::int64_t revision = 0;  // the store's revision when the range was read
  std::vector<EtcdKeyValue> kvs;
};

struct EtcdTxnResult {
  bool succeeded = false;
  std::int64_t revision = 0;
  std::optional<EtcdKeyValue> current;  // on failure: the key as it is (none: absent)
};

struct EtcdEvent {
  bool deleted = false;  // a DELETE (also a lease's expiry); else a PUT
  EtcdKeyValue kv;
};

enum class EtcdWatchEnd {
  stopped,      // the handler asked to stop
  deadline,     // the deadline passed
  interrupted,  // the stream ended (etcd restarted, the watch was cancelled): range again, watch again
};

// The end of the key range holding every key that starts with `prefix`.
inline std::string etcd_prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    auto last = static_cast<unsigned char>(prefix.back());
    if (last < 0xff) {
      prefix.back() = static_cast<char>(last + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

namespace etcd_json {

inline std::int64_t to_int(const nlohmann::json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return 0;
  if (it->is_string()) return std::stoll(it->get<std::string>());
  if (it->is_number_integer()) return it->get<std::int64_t>();
  throw std::invalid_argument(std::string("etcd answer: ") + field + " is not an integer");
}

inline std::string to_bytes(const nlohmann::json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end() || !it->is_string()) return {};
  return base64_decode(it->get<std::string>());
}

inline EtcdKeyValue to_key_value(const nlohmann::json& kv) {
  EtcdKeyValue result;
  result.key = to_bytes(kv, "key");
  result.value = to_bytes(kv, "value");
  result.create_revision = to_int(kv, "create_revision");
  result.mod_revision = to_int(kv, "mod_revision");
  result.version = to_int(kv, "version");
  result.lease = to_int(kv, "lease");
  return result;
}

inline std::int64_t header_revision(const nlohmann::json& answer) {
  auto header = answer.find("header");
  return header == answer.end() ? 0 : to_int(*header, "revision");
}

}  // namespace etcd_json

class EtcdClient {
 public:
  explicit EtcdClient(EtcdClientOptions options) : options_(std::move(options)) {
    if (options_.protocol != "http" && options_.protocol != "https")
      throw std::invalid_argument("etcd protocol must be http or https, not '" + options_.protocol + "'");
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
    if (options_.protocol == "https")
      throw std::invalid_argument("etcd over https: this build's cpp-httplib has no TLS support");
#endif
    if (options_.read_timeout.count() <= 0) throw std::invalid_argument("etcd read_timeout must be positive");
  }

  ~EtcdClient() {
    {
      std::lock_guard<std::mutex> lock(flight_mutex_);
      quit_ = true;
    }
    flight_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
  }

  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // Stops every request in flight within about 100 ms (they fail with
  // EtcdUnreachableError, not retried); later requests run as usual.
  void cancel() {
    {
      std::lock_guard<std::mutex> lock(flight_mutex_);
      ++cancel_generation_;
    }
    flight_cv_.notify_all();
  }

  const EtcdClientOptions& options() const { return options_; }
  std::string endpoint() const { return options_.protocol + "://" + host_port(); }

  // Keys in [key, range_end); an empty range_end: the key alone. `keys_only`: the
  // values are not sent.
  EtcdRangeResult range(const std::string& key, const std::string& range_end = {}, bool keys_only = false) {
    nlohmann::json request{{"key", base64_encode(key)}};
    if (!range_end.empty()) request["range_end"] = base64_encode(range_end);
    if (keys_only) request["keys_only"] = true;
    auto answer = call("/v3/kv/range", request);
    EtcdRangeResult result;
    result.revision = etcd_json::header_revision(answer);
    if (auto kvs = answer.find("kvs"); kvs != answer.end())
      for (const auto& kv : *kvs) result.kvs.push_back(etcd_json::to_key_value(kv));
    return result;
  }

  std::optional<EtcdKeyValue> get(const std::string& key) {
    auto result = range(key);
    if (result.kvs.empty()) return std::nullopt;
    return std::move(result.kvs.front());
  }

  // Returns the store's revision after the write.
  std::int64_t put(const std::string& key, const std::string& value, std::int64_t lease = 0) {
    auto answer = call("/v3/kv/put", put_request(key, value, lease));
    return etcd_json::header_revision(answer);
  }

  // Returns how many keys were deleted.
  std::int64_t delete_range(const std::string& key, const std::string& range_end = {}) {
    nlohmann::json request{{"key", base64_encode(key)}};
    if (!range_end.empty()) request["range_end"] = base64_encode(range_end);
    return etcd_json::to_int(call("/v3/kv/deleterange", request), "deleted");
  }

  // Several keys read in one txn of ranges (at one revision); results in the order of `keys`.
  // etcd refuses a transaction of more operations than its --max-txn-ops (128 by
  // default): more keys are read in several, and the revision given is the
  // earliest of theirs (a watch from it misses no change of any key).
  static constexpr std::size_t max_txn_ops = 128;

  std::pair<std::int64_t, std::vector<std::optional<EtcdKeyValue>>> get_many(const std::vector<std::string>& keys) {
    std::vector<std::optional<EtcdKeyValue>> values(keys.size());
    std::int64_t revision = 0;
    std::size_t first = 0;
    do {
      const std::size_t last = std::min(keys.size(), first + max_txn_ops);
      nlohmann::json reads = nlohmann::json::array();
      for (std::size_t i = first; i < last; ++i) reads.push_back({{"requestRange", {{"key", base64_encode(keys[i])}}}});
      auto answer = call("/v3/kv/txn", {{"success", reads}});
      auto responses = answer.value("responses", nlohmann::json::array());
      for (std::size_t i = first; i < last && i - first < responses.size(); ++i) {
        auto range = responses[i - first].find("response_range");
        if (range == responses[i - first].end()) continue;
        auto kvs = range->find("kvs");
        if (kvs != range->end() && !kvs->empty()) values[i] = etcd_json::to_key_value(kvs->front());
      }
      const std::int64_t read_at = etcd_json::header_revision(answer);
      revision = first == 0 ? read_at : std::min(revision, read_at);
      first = last;
    } while (first < keys.size());
    return {revision, std::move(values)};
  }

  // Writes `value` only if the key's mod_revision is `expected_mod_revision`
  // (0: only if the key does not exist). On failure the answer holds the key as it is.
  EtcdTxnResult put_if_mod_revision(const std::string& key, const std::string& value,
                                    std::int64_t expected_mod_revision, std::int64_t lease = 0) {
    nlohmann::json compare =
        expected_mod_revision == 0
            ? nlohmann::json{{"key", base64_encode(key)}, {"target", "CREATE"}, {"create_revision", "0"}}
            : nlohmann::json{{"key", base64_encode(key)},
                             {"target", "MOD"},
                             {"mod_revision", std::to_string(expected_mod_revision)}};
    return put_txn(key, value, lease, compare);
  }

  // Writes `value` only if the key holds `expected` now.
  EtcdTxnResult put_if_value(const std::string& key, const std::string& value, const std::string& expected,
                             std::int64_t lease = 0) {
    nlohmann::json compare{{"key", base64_encode(key)}, {"target", "VALUE"}, {"value", base64_encode(expected)}};
    return put_txn(key, value, lease, compare);
  }

  // Deletes the key only if its mod_revision is `expected_mod_revision`.
  bool delete_if_mod_revision(const std::string& key, std::int64_t expected_mod_revision) {
    nlohmann::json request{
        {"compare", nlohmann::json::array({{{"key", base64_encode(key)},
                                            {"target", "MOD"},
                                            {"mod_revision", std::to_string(expected_mod_revision)}}})},
        {"success", nlohmann::json::array({{{"requestDeleteRange", {{"key", base64_encode(key)}}}}})}};
    auto answer = call("/v3/kv/txn", request, Repeat::if_not_sent);
    return answer.value("succeeded", false);
  }

  // A lease of `ttl` seconds; returns its id. The id is drawn here, not by etcd, so
  // that a grant whose answer was lost can be sent again (to another member): etcd
  // then answers that the lease exists, which is the proof that it was granted.
  std::int64_t lease_grant(std::int64_t ttl_seconds) {
    for (int draw = 0;; ++draw) {
      const std::int64_t id = random_lease_id();
      std::size_t attempts = 0;
      try {
        auto answer = call("/v3/lease/grant", {{"TTL", std::to_string(ttl_seconds)}, {"ID", std::to_string(id)}},
                           Repeat::always, &attempts);
        auto granted = etcd_json::to_int(answer, "ID");
        if (granted != id)
          throw EtcdRequestError("etcd at " + endpoint() + " granted lease " + std::to_string(granted) +
                                     " when asked for lease " + std::to_string(id) + ": " + answer.dump(),
                                 0);
        return id;
      } catch (const EtcdRequestError& error) {
        if (error.grpc_code != 9) throw;  // 9: FailedPrecondition, "lease already exists"
        if (attempts > 1) return id;      // an earlier attempt of this call was applied, its answer lost
        // Another client's lease has this id (odds 1 in 2^62): draw again, a few times.
        if (draw == 2) throw;
      }
    }
  }

  // Renews the lease; false when it has expired (or was revoked): etcd answers without a TTL.
  bool lease_keepalive(std::int64_t id) {
    auto answer = call("/v3/lease/keepalive", {{"ID", std::to_string(id)}});
    const auto& result = answer.contains("result") ? answer["result"] : answer;
    return etcd_json::to_int(result, "TTL") > 0;
  }

  // Revokes the lease, deleting its keys; a lease that is already gone is no error.
  void lease_revoke(std::int64_t id) {
    try {
      call("/v3/lease/revoke", {{"ID", std::to_string(id)}});
    } catch (const EtcdRequestError& error) {
      if (error.grpc_code != 5) throw;  // 5: NotFound, the lease expired already
    }
  }

  // Seconds the lease has left; -1: expired or unknown.
  std::int64_t lease_time_to_live(std::int64_t id) {
    auto answer = call("/v3/lease/timetolive", {{"ID", std::to_string(id)}});
    return answer.contains("TTL") ? etcd_json::to_int(answer, "TTL") : -1;
  }

  // Streams the changes of [key, range_end) from `start_revision` on, handing
  // each batch of events to `on_events` until it returns false (stopped), the
  // deadline passes, or the stream breaks (interrupted). On its own connection,
  // so other requests of this client go on meanwhile.
  EtcdWatchEnd watch(const std::string& key, const std::string& range_end, std::int64_t start_revision,
                     std::chrono::steady_clock::time_point deadline,
                     const std::function<bool(const std::vector<EtcdEvent>&)>& on_events) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return EtcdWatchEnd::deadline;
    // The stream is silent while nothing changes: it may stay so until the deadline.
    auto client = make_http_client(left + std::chrono::milliseconds(1));
    nlohmann::json create{{"key", base64_encode(key)}};
    if (!range_end.empty()) create["range_end"] = base64_encode(range_end);
    if (start_revision > 0) create["start_revision"] = std::to_string(start_revision);

    std::string pending;
    bool stopped = false, broken = false;
    httplib::Request request;
    request.method = "POST";
    request.path = "/v3/watch";
    request.body = nlohmann::json{{"create_request", create}}.dump();
    request.set_header("Content-Type", "application/json");
    request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
      if (pending.size() + size > options_.max_answer) {
        broken = true;  // a message larger than any etcd sends
        return false;
      }
      pending.append(data, size);
      for (auto newline = pending.find('\n'); newline != std::string::npos; newline = pending.find('\n')) {
        std::string line = pending.substr(0, newline);
        pending.erase(0, newline + 1);
        if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
        if (!handle_watch_message(line, on_events, stopped, broken)) return false;
      }
      return true;
    };
    httplib::Response response;
    httplib::Error error = httplib::Error::Success;
    const auto generation = current_generation();
    {
      InFlight flight(*this, *client, deadline + std::chrono::milliseconds(100));
      client->send(request, response, error);
    }
    if (current_generation() != generation)
      throw EtcdUnreachableError("etcd at " + endpoint() + ": /v3/watch: cancelled");
    if (stopped) return EtcdWatchEnd::stopped;
    if (broken) return EtcdWatchEnd::interrupted;
    if (!pending.empty() && pending.find_first_not_of(" \r\t") != std::string::npos) {
      handle_watch_message(pending, on_events, stopped, broken);
      if (stopped) return EtcdWatchEnd::stopped;
    }
    if (std::chrono::steady_clock::now() >= deadline) return EtcdWatchEnd::deadline;
    // TLS set-up failures will not pass; a refused connection may (etcd restarting):
    // the caller reads again, which waits for etcd within the read timeout.
    if (error == httplib::Error::SSLConnection || error == httplib::Error::SSLServerVerification ||
        error == httplib::Error::SSLLoadingCerts)
      throw EtcdUnreachableError(describe_failure("/v3/watch", error));
    return EtcdWatchEnd::interrupted;
  }

  // etcd's own health check (GET /health): true when it has a leader.
  bool healthy() { return healthy(std::chrono::steady_clock::now() + options_.read_timeout); }
  bool healthy(std::chrono::steady_clock::time_point deadline) {
    auto client = make_http_client(options_.read_timeout);
    httplib::Request request;
    request.method = "GET";
    request.path = "/health";
    Answer result = send_bounded(*client, request, deadline);
    if (!result.complete() || result.status != 200) return false;
    auto answer = parse_json_or_discarded(result.body);
    return !answer.is_discarded() && answer.value("health", "") == "true";
  }

  // Whether a request may be sent again after a failure that leaves open
  // whether etcd applied it.
  enum class Repeat {
    always,       // reads, and writes whose repetition changes nothing (put, delete, keepalive, revoke,
                  // a grant of a lease id chosen here)
    if_not_sent,  // compare-and-put: only when the connection was never made; else EtcdOutcomeUnknownError
  };

  // One request and its answer, within the read timeout. A failed attempt is made
  // again (after etcd is healthy again: a restarting etcd accepts connections
  // before it serves them) as `repeat` allows, until the read timeout. With
  // several members an attempt moves on to the next member when this one refuses,
  // has no leader, or leaves it unanswered for the member bound (see
  // EtcdClientOptions::member_timeout). `attempts`, when given, counts the attempts made.
  nlohmann::json call(const std::string& path, const nlohmann::json& request, Repeat repeat = Repeat::always,
                      std::size_t* attempts = nullptr) {
    auto deadline = std::chrono::steady_clock::now() + options_.read_timeout;
    const std::string body = request.dump();
    const auto generation = current_generation();
    auto bound = members() == 1 ? options_.read_timeout : std::min(options_.member_timeout, options_.read_timeout);
    // A failed attempt moves on to the next member; once every member failed, pause
    // and give each member twice as long.
    std::size_t failed = 0;
    auto next_member = [&](std::size_t member) {
      if (members() == 1) return wait_until_healthy(deadline);
      fail_over(member);
      if (++failed % members() != 0) return true;
      bound = std::min(bound * 2, options_.read_timeout);
      return pause_until(deadline, std::chrono::milliseconds(
                                       std::min<long>(100L << std::min<std::size_t>(failed / members(), 3), 500)));
    };
    for (std::size_t attempt = 1;; ++attempt) {
      if (attempts != nullptr) *attempts = attempt;
      const std::size_t member = member_.load();
      const auto attempt_deadline = std::min(deadline, std::chrono::steady_clock::now() + bound);
      Answer result;
      {
        auto client = acquire_connection();
        client->set_connection_timeout(bound);
        result = post(*client, path, body, attempt_deadline);
        // Only a connection that gave a clean answer is used again: after an error
        // answer (its trailers unread) or a failure its state is unknown; one to a
        // member left meanwhile is not kept either.
        if (result.error == httplib::Error::Success && result.status == 200 && member_.load() == member)
          release_connection(std::move(client));
      }
      if (current_generation() != generation)
        throw EtcdUnreachableError("etcd at " + endpoint() + ": " + path + ": cancelled");
      if (result.too_large)
        throw EtcdUnreachableError("etcd at " + endpoint() + ": " + path + ": an answer larger than " +
                                   std::to_string(options_.max_answer) + " bytes");
      if (result.too_late && attempt_deadline >= deadline)
        throw EtcdUnreachableError(
            "etcd at " + endpoint() + ": " + path + ": no complete answer within read_timeout (" +
            std::to_string(options_.read_timeout.count() / 1000) + " s" +
            (members() > 1 ? ", from any of the " + std::to_string(members()) + " members" : "") + ")");
      if (!result.complete()) {
        const bool not_sent =
            result.error == httplib::Error::Connection || result.error == httplib::Error::ConnectionTimeout;
        const std::string what = result.too_late ? "etcd at " + endpoint() + ": " + path + ": no answer within " +
                                                       std::to_string(bound.count()) + " ms"
                                                 : describe_failure(path, result.error);
        if ((not_sent || repeat == Repeat::always) && next_member(member)) continue;
        if (!not_sent) throw EtcdOutcomeUnknownError(what + " (sent: whether etcd applied it is not known)");
        throw EtcdUnreachableError(what);
      }
      auto answer = parse_json_or_discarded(result.body);
      if (answer.is_discarded() && result.status == 200)
        throw EtcdUnreachableError("etcd at " + endpoint() + ": " + path +
                                   ": an answer that is not JSON (or nested deeper than " +
                                   std::to_string(default_json_depth) + " levels)");
      if (answer.is_discarded()) answer = nlohmann::json::object();
      if (result.status != 200 || answer.contains("error")) {
        auto [message, code] = error_of(answer);
        // 14: Unavailable (no leader yet, leader changed, timed out in an election),
        // passing while etcd restarts or elects; a compare-and-put so answered may
        // still be applied once a leader is elected.
        if (code == 14 && repeat == Repeat::always && next_member(member)) continue;
        const std::string what =
            "etcd at " + endpoint() + ": " + path + ": " + message + " (HTTP " + std::to_string(result.status) + ")";
        if (code == 14 && repeat == Repeat::if_not_sent)
          throw EtcdOutcomeUnknownError(what + " (whether etcd applied it is not known)");
        throw EtcdRequestError(what, code);
      }
      return answer;
    }
  }

 private:
  // Waits, pausing longer each time, until etcd reports itself healthy; false
  // when the deadline comes first.
  bool wait_until_healthy(std::chrono::steady_clock::time_point deadline) {
    auto pause = std::chrono::milliseconds(50);
    for (;;) {
      if (std::chrono::steady_clock::now() + pause >= deadline) return false;
      const auto generation = current_generation();
      {
        std::unique_lock<std::mutex> lock(flight_mutex_);
        flight_cv_.wait_for(lock, pause, [&] { return cancel_generation_ != generation; });
      }
      if (current_generation() != generation) return false;
      pause = std::min(pause * 2, std::chrono::milliseconds(500));
      if (healthy(deadline)) return true;
    }
  }

  // An error answer's message and gRPC code (0: none given). The gateway answers
  // {"error": "...", "code": 14, "message": "..."} to a request, and a stream's
  // message (a lease keep-alive's) {"error": {"grpc_code": 14, "message": "..."}}.
  static std::pair<std::string, int> error_of(const nlohmann::json& answer) {
    auto text = [](const nlohmann::json& j, const char* key) -> std::string {
      auto it = j.find(key);
      return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    auto number = [](const nlohmann::json& j, const char* key) {
      auto it = j.find(key);
      return it != j.end() && it->is_number_integer() ? it->get<int>() : 0;
    };
    std::string message = text(answer, "message");
    if (message.empty()) message = text(answer, "error");
    int code = number(answer, "code");
    if (auto inner = answer.find("error"); inner != answer.end() && inner->is_object()) {
      if (message.empty()) message = text(*inner, "message");
      if (code == 0) code = number(*inner, "grpc_code");
    }
    return {message.empty() ? std::string("HTTP error") : message, code};
  }

  // Idle kept-alive connections: one request at a time each, so calls from
  // several threads never share one.
  std::unique_ptr<httplib::Client> acquire_connection() {
    {
      std::lock_guard<std::mutex> lock(idle_mutex_);
      if (!idle_.empty()) {
        auto client = std::move(idle_.back());
        idle_.pop_back();
        return client;
      }
    }
    return make_http_client(options_.read_timeout);
  }

  void release_connection(std::unique_ptr<httplib::Client> client) {
    std::lock_guard<std::mutex> lock(idle_mutex_);
    if (idle_.size() < 4) idle_.push_back(std::move(client));
  }

  struct Answer {
    int status = 0;
    std::string body;
    httplib::Error error = httplib::Error::Success;
    bool too_large = false;  // cut at max_answer
    bool too_late = false;   // stopped at the deadline
    // etcd ends its error answers with chunked-encoding trailers that cpp-httplib
    // 0.11 fails to read after the body: a whole JSON body counts as the answer.
    bool complete() const {
      return status != 0 && !too_large && !too_late &&
             (error == httplib::Error::Success || !parse_json_or_discarded(body).is_discarded());
    }
  };

  // A request in flight, known to the watchdog until it ends.
  class InFlight {
   public:
    InFlight(EtcdClient& owner, httplib::Client& client, std::chrono::steady_clock::time_point deadline)
        : owner_(owner), client_(client), deadline_(deadline) {
      std::lock_guard<std::mutex> lock(owner_.flight_mutex_);
      generation_ = owner_.cancel_generation_;
      owner_.in_flight_.push_back(this);
      if (!owner_.watchdog_.joinable())
        owner_.watchdog_ = elastic::signal_free_thread([&owner = owner_] { owner.watch_in_flight(); });
    }
    ~InFlight() {
      std::lock_guard<std::mutex> lock(owner_.flight_mutex_);
      owner_.in_flight_.remove(this);
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;
    bool stopped_late() const { return late_.load(); }

   private:
    friend class EtcdClient;
    EtcdClient& owner_;
    httplib::Client& client_;
    std::chrono::steady_clock::time_point deadline_;
    std::uint64_t generation_ = 0;
    bool stopped_ = false;
    std::atomic<bool> late_{false};
  };

  // Stops the connections of requests past their deadline or cancelled.
  void watch_in_flight() {
    std::unique_lock<std::mutex> lock(flight_mutex_);
    while (!quit_) {
      const auto now = std::chrono::steady_clock::now();
      for (InFlight* flight : in_flight_) {
        if (flight->stopped_) continue;
        const bool late = now >= flight->deadline_;
        if (late || flight->generation_ != cancel_generation_) {
          flight->stopped_ = true;
          flight->late_ = late;
          flight->client_.stop();
        }
      }
      flight_cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
  }

  std::uint64_t current_generation() {
    std::lock_guard<std::mutex> lock(flight_mutex_);
    return cancel_generation_;
  }

  Answer send_bounded(httplib::Client& client, httplib::Request& request,
                      std::chrono::steady_clock::time_point deadline) {
    Answer answer;
    request.response_handler = [&](const httplib::Response& response) {
      answer.status = response.status;
      return true;
    };
    request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
      if (answer.body.size() + size > options_.max_answer) {
        answer.too_large = true;
        return false;
      }
      answer.body.append(data, size);
      return true;
    };
    httplib::Response response;
    InFlight flight(*this, client, deadline);
    client.send(request, response, answer.error);
    answer.too_late = flight.stopped_late() ||
                      (answer.error != httplib::Error::Success && std::chrono::steady_clock::now() >= deadline);
    return answer;
  }

  Answer post(httplib::Client& client, const std::string& path, const std::string& body,
              std::chrono::steady_clock::time_point deadline) {
    httplib::Request request;
    request.method = "POST";
    request.path = path;
    request.body = body;
    request.set_header("Content-Type", "application/json");
    return send_bounded(client, request, deadline);
  }

  std::size_t members() const { return 1 + options_.more_endpoints.size(); }

  // A lease id of 62 random bits, never 0 (etcd's "choose one for me").
  static std::int64_t random_lease_id() {
    static thread_local std::mt19937_64 generator{(std::uint64_t{std::random_device{}()} << 32) ^
                                                  std::random_device{}()};
    std::int64_t id = 0;
    while (id == 0) id = static_cast<std::int64_t>(generator() >> 2);
    return id;
  }
  // The member requests go to now.
  std::string host_port() const {
    const std::size_t i = member_.load();
    const std::string& host = i == 0 ? options_.host : options_.more_endpoints[i - 1].first;
    const int port = i == 0 ? options_.port : options_.more_endpoints[i - 1].second;
    bool ipv6 = host.find(':') != std::string::npos;
    return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
  // Moves on from member `from` to the next (unless another thread did already);
  // the idle connections were to the old one.
  void fail_over(std::size_t from) {
    std::size_t expected = from;
    if (member_.compare_exchange_strong(expected, (from + 1) % members())) {
      std::lock_guard<std::mutex> lock(idle_mutex_);
      idle_.clear();
    }
  }
  // Sleeps `pause` (less when the deadline is nearer); false when the deadline or a
  // cancel() comes first.
  bool pause_until(std::chrono::steady_clock::time_point deadline, std::chrono::milliseconds pause) {
    if (std::chrono::steady_clock::now() + pause >= deadline) return false;
    const auto generation = current_generation();
    std::unique_lock<std::mutex> lock(flight_mutex_);
    flight_cv_.wait_for(lock, pause, [&] { return cancel_generation_ != generation; });
    return cancel_generation_ == generation;
  }

  std::string describe_failure(const std::string& path, httplib::Error error) const {
    std::string reason = httplib::to_string(error);
    if (error == httplib::Error::Read) reason += " (no answer within the read timeout, or the connection closed)";
    return "etcd at " + endpoint() + " is unreachable: " + path + ": " + reason;
  }

  std::unique_ptr<httplib::Client> make_http_client(std::chrono::milliseconds read_timeout) const {
    std::unique_ptr<httplib::Client> client;
    std::string address = options_.protocol + "://" + host_port();
    if (!options_.ssl_cert.empty() || !options_.ssl_cert_key.empty())
      client = std::make_unique<httplib::Client>(address, options_.ssl_cert, options_.ssl_cert_key);
    else
      client = std::make_unique<httplib::Client>(address);
    if (!client->is_valid()) throw std::invalid_argument("etcd endpoint " + address + ": cannot set up a client");
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
    if (!options_.ca_cert.empty()) client->set_ca_cert_path(options_.ca_cert);
#endif
    client->set_connection_timeout(std::min(read_timeout, options_.read_timeout));
    client->set_read_timeout(read_timeout);
    client->set_write_timeout(options_.read_timeout);
    // Kept alive between requests (see acquire_connection()); cpp-httplib makes a
    // new connection when etcd has closed the kept one (etcd restarted).
    client->set_keep_alive(true);
    client->set_tcp_nodelay(true);
    return client;
  }

  static nlohmann::json put_request(const std::string& key, const std::string& value, std::int64_t lease) {
    nlohmann::json request{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
    if (lease != 0) request["lease"] = std::to_string(lease);
    return request;
  }

  EtcdTxnResult put_txn(const std::string& key, const std::string& value, std::int64_t lease,
                        const nlohmann::json& compare) {
    nlohmann::json request{{"compare", nlohmann::json::array({compare})},
                           {"success", nlohmann::json::array({{{"requestPut", put_request(key, value, lease)}}})},
                           {"failure", nlohmann::json::array({{{"requestRange", {{"key", base64_encode(key)}}}}})}};
    auto answer = call("/v3/kv/txn", request, Repeat::if_not_sent);
    EtcdTxnResult result;
    result.succeeded = answer.value("succeeded", false);
    result.revision = etcd_json::header_revision(answer);
    if (!result.succeeded) {
      for (const auto& response : answer.value("responses", nlohmann::json::array())) {
        auto range = response.find("response_range");
        if (range == response.end()) continue;
        auto kvs = range->find("kvs");
        if (kvs != range->end() && !kvs->empty()) result.current = etcd_json::to_key_value(kvs->front());
      }
    }
    return result;
  }

  // One message of a watch stream; false ends the stream.
  static bool handle_watch_message(const std::string& line,
                                   const std::function<bool(const std::vector<EtcdEvent>&)>& on_events, bool& stopped,
                                   bool& broken) {
    auto message = parse_json_or_discarded(line);
    if (message.is_discarded() || message.contains("error") || !message.contains("result")) {
      broken = true;
      return false;
    }
    const auto& result = message["result"];
    if (result.value("canceled", false) || etcd_json::to_int(result, "compact_revision") != 0) {
      broken = true;  // compacted past our revision, or cancelled by etcd
      return false;
    }
    auto events = result.find("events");
    if (events == result.end() || events->empty()) return true;
    std::vector<EtcdEvent> batch;
    for (const auto& event : *events) {
      EtcdEvent parsed;
      parsed.deleted = event.value("type", "PUT") == "DELETE";
      if (event.contains("kv")) parsed.kv = etcd_json::to_key_value(event["kv"]);
      batch.push_back(std::move(parsed));
    }
    if (!on_events(batch)) {
      stopped = true;
      return false;
    }
    return true;
  }

  EtcdClientOptions options_;
  std::mutex idle_mutex_;
  std::atomic<std::size_t> member_{0};
  std::vector<std::unique_ptr<httplib::Client>> idle_;
  std::mutex flight_mutex_;
  std::condition_variable flight_cv_;
  std::list<InFlight*> in_flight_;
  std::uint64_t cancel_generation_ = 0;
  bool quit_ = false;
  std::thread watchdog_;  // started with the first request
};

}  // namespace elastic::rendezvous::detail
