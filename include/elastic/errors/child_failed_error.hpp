// ChildFailedError: the failures of a group of children, and their summary in
// exactly the layout torchrun prints.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <elastic/errors/detail/summary_hook.hpp>
#include <elastic/errors/hostname.hpp>
#include <elastic/errors/process_failure.hpp>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

namespace elastic {

namespace errors::detail {

// Python's len(): code points, not bytes. Invalid bytes count one each.
inline std::size_t code_points(std::string_view text) {
  std::size_t count = 0;
  for (unsigned char c : text)
    if ((c & 0xC0) != 0x80) ++count;
  return count;
}

inline std::size_t widest_line(std::string_view text) {
  std::size_t widest = 0;
  std::size_t start = 0;
  for (;;) {
    std::size_t end = text.find('\n', start);
    widest = std::max(widest, code_points(text.substr(start, end == std::string_view::npos ? end : end - start)));
    if (end == std::string_view::npos) return widest;
    start = end + 1;
  }
}

// Linear in the text's size (replacing in place would move the tail each time).
inline std::string replace_all(const std::string& text, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(text.size());
  std::size_t start = 0;
  for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, start)) {
    out.append(text, start, at - start).append(to);
    start = at + from.size();
  }
  out.append(text, start, std::string::npos);
  return out;
}

// What the summary shows as a failure's traceback: a string message as is; for a
// nested one extraInfo.py_callstack, else message.message, else "<N/A>", indented.
inline std::string traceback_text(const nlohmann::json& message) {
  if (message.is_string()) return message.get<std::string>();
  if (!message.is_object()) return message.dump();
  const nlohmann::json* shown = nullptr;
  if (auto extra = message.find("extraInfo"); extra != message.end() && extra->is_object())
    if (auto stack = extra->find("py_callstack"); stack != extra->end()) shown = &*stack;
  if (shown == nullptr)
    if (auto text = message.find("message"); text != message.end()) shown = &*text;
  std::string text = shown == nullptr     ? std::string(not_available)
                     : shown->is_string() ? shown->get<std::string>()
                                          : shown->dump();
  return replace_all(text, "\n", "\n  ");
}

}  // namespace errors::detail

class ChildFailedError : public std::runtime_error {
 public:
  using Failures = std::map<int, ProcessFailure>;  // global rank -> failure

  // `failures` must not be empty (std::invalid_argument otherwise).
  ChildFailedError(std::string name, Failures failures)
      : std::runtime_error(format(name, checked(failures), '=', '-')),
        name_(std::move(name)),
        failures_(std::move(failures)) {}

  const std::string& name() const noexcept { return name_; }
  const Failures& failures() const noexcept { return failures_; }

  // The root cause: the smallest timestamp, the lowest rank on a tie (torchrun's
  // rule); a collateral failure only when every failure is one.
  std::pair<int, const ProcessFailure&> get_first_failure() const { return first_failure(failures_); }

  std::string format_msg(char boarder = '=', char section = '-') const {
    return format(name_, failures_, boarder, section);
  }

 private:
  static const Failures& checked(const Failures& failures) {
    if (failures.empty()) throw std::invalid_argument("ChildFailedError needs at least one failure");
    return failures;
  }

  static std::pair<int, const ProcessFailure&> first_failure(const Failures& failures) {
    auto earlier = [](const ProcessFailure& a, const ProcessFailure& b) {
      if (a.collateral.empty() != b.collateral.empty()) return a.collateral.empty();
      return a.timestamp < b.timestamp;
    };
    auto root = failures.begin();
    for (auto it = failures.begin(); it != failures.end(); ++it)
      if (earlier(it->second, root->second)) root = it;
    return {root->first, root->second};
  }

  static std::string format_failure(std::size_t idx, int rank, const ProcessFailure& failure) {
    return fmt::format(
        "[{}]:\n"
        "  time      : {}\n"
        "  host      : {}\n"
        "  rank      : {} (local_rank: {})\n"
        "  exitcode  : {} (pid: {})\n"
        "  error_file: {}\n"
        "  traceback : {}{}",
        idx, failure.timestamp_isoformat(), failure.host.empty() ? fqdn() : failure.host, rank,
        failure.local_rank, failure.exitcode, failure.pid, failure.error_file,
        errors::detail::traceback_text(failure.message),
        failure.collateral.empty() ? std::string() : "\n  collateral: " + failure.collateral);
  }

  static std::string format(const std::string& name, const Failures& failures, char boarder, char section) {
    const std::string title = name + " FAILED";
    const int root_rank = first_failure(failures).first;
    std::string root, others;
    std::size_t width = errors::detail::code_points(title);
    std::size_t idx = 0;
    for (const auto& [rank, failure] : failures) {
      std::string rendered = format_failure(idx++, rank, failure);
      width = std::max(width, errors::detail::widest_line(rendered));
      if (rank == root_rank) {
        if (failure.exitcode < 0)
          rendered = errors::detail::enrich_signal_failure_message(std::move(rendered), failure.error_file);
        root = std::move(rendered);
      } else {
        if (!others.empty()) others += '\n';
        others += rendered;
      }
    }
    if (others.empty()) others = "  <NO_OTHER_FAILURES>";
    width = std::min<std::size_t>(width, 60);
    const std::string boarder_line(width, boarder), section_line(width, section);
    return fmt::format("\n{0}\n{1}\n{2}\nFailures:\n{3}\n{2}\nRoot Cause (first observed failure):\n{4}\n{0}",
                       boarder_line, title, section_line, others, root);
  }

  std::string name_;
  Failures failures_;
};

}  // namespace elastic
