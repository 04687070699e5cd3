// A job's failures across its nodes. A node whose worker failed publishes the
// failure in the job's store, under the round's (or the attempt's) failure keys:
//   <prefix>count     an add() counter: the order in which failures were published
//   <prefix><n>       failure n (from 1): a compact JSON report (FailureReport)
// Every node reads the counter at each poll of its workers (one request when
// nothing failed) and, on a report from another node, stops its own workers: the
// job's root cause is then the earliest failure of every node, and the rest are
// labelled collateral.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <elastic/errors/child_failed_error.hpp>
#include <elastic/errors/process_failure.hpp>
#include <elastic/log.hpp>
#include <elastic/rendezvous/store.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace elastic::launcher {

// One node's failure as told to the others.
struct FailureReport {
  int global_rank = 0;
  ProcessFailure failure{0, 0, 0, std::string(not_available)};
  bool final = false;             // the publishing node has no restart left: the job ends
  std::string node;               // the publishing launcher (host:pid)
  std::int64_t published_ns = 0;  // the publisher's clock when it published
};

namespace detail {

// CLOCK_REALTIME in nanoseconds, the clock of error files' timestamp_ns.
inline std::int64_t now_nanoseconds() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The most of a report's error data and message carried through the store: a
// traceback longer than this is cut (the whole one stays in the node's own file).
inline constexpr std::size_t max_reported_text = 32 * 1024;

inline std::string cut_text(const std::string& text) {
  if (text.size() <= max_reported_text) return text;
  std::size_t end = max_reported_text;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;  // a whole UTF-8 sequence
  return text.substr(0, end) + "\n... (cut to " + std::to_string(max_reported_text) + " bytes)";
}

// Cuts every long string of `value` (error data is shallow: message, py_callstack).
inline nlohmann::json cut_strings(const nlohmann::json& value, int depth = 0) {
  if (value.is_string()) return cut_text(value.get<std::string>());
  if (depth > 4 || !value.is_object()) return value;
  nlohmann::json out = nlohmann::json::object();
  for (auto it = value.begin(); it != value.end(); ++it) out[it.key()] = cut_strings(it.value(), depth + 1);
  return out;
}

inline std::string encode_report(const FailureReport& report) {
  const ProcessFailure& f = report.failure;
  nlohmann::json json{{"rank", report.global_rank},
                      {"local_rank", f.local_rank},
                      {"host", f.host.empty() ? elastic::fqdn() : f.host},
                      {"pid", f.pid},
                      {"exitcode", f.exitcode},
                      {"timestamp", f.timestamp},
                      {"timestamp_ns", f.time_ns},
                      {"error_file", f.error_file},
                      {"error_data", cut_strings(f.error_file_data)},
                      {"message", cut_strings(f.message)},
                      {"final", report.final},
                      {"node", report.node},
                      {"published_ns", report.published_ns}};
  // Invalid UTF-8 in a worker's message must not stop the report.
  return json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// nullopt for a value that is not a report (a peer that wrote something else).
inline std::optional<FailureReport> decode_report(const std::string& text) {
  const auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return std::nullopt;
  auto integer = [&](const char* key) -> std::optional<std::int64_t> {
    auto it = json.find(key);
    if (it == json.end() || !it->is_number_integer()) return std::nullopt;
    return it->get<std::int64_t>();
  };
  auto text_of = [&](const char* key) -> std::optional<std::string> {
    auto it = json.find(key);
    if (it == json.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  auto rank = integer("rank"), local_rank = integer("local_rank"), pid = integer("pid"), exitcode = integer("exitcode"),
       timestamp = integer("timestamp"), time_ns = integer("timestamp_ns"), published = integer("published_ns");
  auto host = text_of("host"), error_file = text_of("error_file"), node = text_of("node");
  auto final = json.find("final");
  auto data = json.find("error_data");
  auto message = json.find("message");
  if (!rank || !local_rank || !pid || !exitcode || !timestamp || !time_ns || !published || !host || !error_file ||
      !node || final == json.end() || !final->is_boolean() || data == json.end() || !data->is_object() ||
      message == json.end() || !(message->is_string() || message->is_object()) || *rank < 0 || *rank > 1 << 30)
    return std::nullopt;
  FailureReport report;
  report.global_rank = static_cast<int>(*rank);
  ProcessFailure& f = report.failure;
  f.local_rank = static_cast<int>(*local_rank);
  f.pid = static_cast<int>(*pid);
  f.exitcode = static_cast<int>(*exitcode);
  f.timestamp = *timestamp;
  f.time_ns = *time_ns;
  f.host = *host;
  f.error_file = *error_file;
  f.error_file_data = *data;
  f.message = *message;
  report.final = final->get<bool>();
  report.node = *node;
  report.published_ns = *published;
  return report;
}

}  // namespace detail

// The failure keys of one round (or attempt) of a job in `store`.
class FailureBoard {
 public:
  // A report announced (counted) but not written this long after it was first
  // seen is taken as lost: its node died while publishing it.
  static constexpr std::chrono::milliseconds lost_after{2000};

  FailureBoard(rendezvous::Store& store, std::string prefix) : store_(store), prefix_(std::move(prefix)) {}

  // Publishes `report`; returns its place in the order of publication (from 1).
  // Throws rendezvous::StoreError.
  std::int64_t publish(FailureReport report) {
    report.published_ns = detail::now_nanoseconds();
    const std::int64_t seq = store_.add(prefix_ + "count", 1);
    store_.set(prefix_ + std::to_string(seq), detail::encode_report(report));
    own_.insert(seq);
    return seq;
  }

  // The reports of other nodes published so far, in the order of publication,
  // their times moved to this host's clock when it differs by more than the
  // poll allows (see clock_note()). Throws rendezvous::StoreError.
  std::vector<FailureReport> others() {
    auto count_text = store_.get(prefix_ + "count");
    const std::int64_t count = count_text ? std::atoll(count_text->c_str()) : 0;
    std::vector<std::string> keys;
    std::vector<std::int64_t> seqs;
    for (std::int64_t seq = 1; seq <= std::min<std::int64_t>(count, 4096); ++seq)
      if (own_.count(seq) == 0 && seen_.count(seq) == 0 && lost_.count(seq) == 0) {
        keys.push_back(prefix_ + std::to_string(seq));
        seqs.push_back(seq);
      }
    if (!keys.empty()) {
      const auto values = store_.get_many(keys);
      const auto now = std::chrono::steady_clock::now();
      for (std::size_t i = 0; i < values.size(); ++i) {
        const std::int64_t seq = seqs[i];
        if (!values[i]) {
          auto [at, fresh] = announced_.emplace(seq, now);
          if (!fresh && now - at->second > lost_after) {
            log::warning("failure report {} of the job was announced but never written (its node may have died)", seq);
            lost_.insert(seq);
          }
          continue;
        }
        auto report = detail::decode_report(*values[i]);
        if (!report) {
          log::warning("failure report {} of the job is not a report; ignored", seq);
          lost_.insert(seq);
          continue;
        }
        correct_clock(*report);
        seen_.emplace(seq, std::move(*report));
      }
    }
    std::vector<FailureReport> out;
    for (const auto& [seq, report] : seen_) out.push_back(report);
    return out;
  }

  // Reports announced that never came: what the summary cannot tell.
  std::size_t lost() const { return lost_.size(); }

 private:
  // A report is read within a poll interval (at most 1 s) plus a round trip of
  // being published: a larger gap between its publication time and this host's
  // clock is the two clocks' difference, and is taken out of its times.
  static void correct_clock(FailureReport& report) {
    const std::int64_t skew = report.published_ns - detail::now_nanoseconds();
    constexpr std::int64_t tolerance = 2'000'000'000;
    if (skew < tolerance && skew > -tolerance) return;
    log::warning("the clock of {} differs from this host's by about {:.1f} s; its failure's time is corrected by that",
                 report.failure.host, static_cast<double>(skew) / 1e9);
    report.failure.time_ns -= skew;
    report.failure.timestamp = report.failure.time_ns / 1'000'000'000;
  }

  rendezvous::Store& store_;
  std::string prefix_;
  std::set<std::int64_t> own_, lost_;
  std::map<std::int64_t, FailureReport> seen_;
  std::map<std::int64_t, std::chrono::steady_clock::time_point> announced_;
};

inline bool earlier_failure(const ProcessFailure& a, const ProcessFailure& b) {
  return a.timestamp != b.timestamp ? a.timestamp < b.timestamp : a.time_ns < b.time_ns;
}

// The earliest of `failures` (not empty), by local rank.
inline std::pair<int, const ProcessFailure&> earliest_failure(const std::map<int, ProcessFailure>& failures) {
  auto root = failures.begin();
  for (auto it = failures.begin(); it != failures.end(); ++it)
    if (earlier_failure(it->second, root->second)) root = it;
  return {root->first, root->second};
}

// The earliest of `reports` (not empty).
inline const FailureReport& earliest_report(const std::vector<FailureReport>& reports) {
  auto root = reports.begin();
  for (auto it = reports.begin(); it != reports.end(); ++it)
    if (earlier_failure(it->failure, root->failure)) root = it;
  return *root;
}

// The summary's failures: this node's (by global rank) and the other nodes'
// reports. In a job of several nodes, every failure after the earliest one is
// labelled collateral, as are this node's workers that the launcher stopped.
inline ChildFailedError::Failures merge_job_failures(ChildFailedError::Failures local,
                                                     const std::vector<FailureReport>& remote, bool label) {
  for (const auto& report : remote) local.emplace(report.global_rank, report.failure);
  if (!label || local.size() < 2) return local;
  const ProcessFailure* root = nullptr;
  int root_rank = -1;
  for (const auto& [rank, failure] : local)
    if (failure.collateral.empty() && (root == nullptr || earlier_failure(failure, *root))) {
      root = &failure;
      root_rank = rank;
    }
  if (root == nullptr) return local;
  const std::int64_t root_ns = root->time_ns;
  for (auto& [rank, failure] : local) {
    if (rank == root_rank || !failure.collateral.empty()) continue;
    const std::int64_t after_ms = (failure.time_ns - root_ns) / 1'000'000;
    failure.collateral =
        after_ms < 1 ? "failed within 1 ms of rank " + std::to_string(root_rank) + " (which came first is not known)"
                     : "failed " + std::to_string(after_ms) + " ms after rank " + std::to_string(root_rank) +
                           ", the job's first failure";
  }
  return local;
}

}  // namespace elastic::launcher
