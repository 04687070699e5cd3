// Command-line conveniences of torchrun's argparse that a plain option parser lacks:
// unambiguous prefixes of long options, a suggestion for a typo, and usage errors
// that stay on one line whatever the offending value holds.
#pragma once

#include <algorithm>
#include <cstdio>
#include <elastic/launcher/config.hpp>
#include <optional>
#include <string>
#include <vector>

namespace elastic_run {

using elastic::launcher::UsageError;

// One option of the command line: its long names without "--" (every spelling,
// e.g. "nproc-per-node" and "nproc_per_node"), its short names without "-", and
// whether it takes a value.
struct OptionSpelling {
  std::vector<std::string> long_names;
  std::vector<std::string> short_names;
  bool takes_value = false;
};

namespace detail {

// Dashes and underscores are one character in option names.
inline std::string fold_dashes(std::string name) {
  std::replace(name.begin(), name.end(), '_', '-');
  return name;
}

inline std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace detail

// `text` with control characters written as escapes (\n, \t, \xHH), so that a
// message quoting user input stays one line.
inline std::string one_line(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof(hex), "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// The long option closest to `name` (without "--"), when it is close enough to be a likely typo.
inline std::optional<std::string> nearest_option(const std::string& name, const std::vector<OptionSpelling>& options) {
  const std::string folded = detail::fold_dashes(name);
  std::optional<std::string> best;
  std::size_t best_distance = 0;
  for (const auto& option : options) {
    if (option.long_names.empty()) continue;
    const std::string candidate = detail::fold_dashes(option.long_names.front());
    std::size_t distance = detail::edit_distance(folded, candidate);
    if (!best || distance < best_distance) {
      best = option.long_names.front();
      best_distance = distance;
    }
  }
  // A third of the name's length, at least 2: "nprc-per-node" finds "nproc-per-node", "foo" finds nothing.
  if (best && best_distance <= std::max<std::size_t>(2, folded.size() / 3)) return best;
  return std::nullopt;
}

// The launcher's own arguments (before the entry) with every long option spelled in
// full, as argparse accepts them: an unambiguous prefix ("--nproc=2", "--no_py") becomes
// the option's first name; spellings of one option count as one. Throws UsageError for
// an ambiguous prefix (listing the candidates) or an unknown option (with the nearest
// option, if any). The entry and everything after it, or after "--", is kept as is.
inline std::vector<std::string> expand_option_prefixes(const std::vector<std::string>& args,
                                                       const std::vector<OptionSpelling>& options) {
  std::vector<std::string> out;
  std::size_t i = 0;
  auto unknown = [&](const std::string& token, const std::string& name) {
    std::string message = "unrecognized arguments: " + token;
    if (auto near = nearest_option(name, options)) message += " (did you mean --" + *near + "?)";
    return UsageError(message + "; see elastic-run --help");
  };
  for (; i < args.size(); ++i) {
    const std::string& token = args[i];
    if (token == "--" || token.size() < 2 || token[0] != '-') break;  // the entry, or the end of options
    if (token[1] != '-') {
      // A short option: "-r 3", "-r3" or the flag "-m".
      const std::string name = token.substr(1, 1);
      const OptionSpelling* found = nullptr;
      for (const auto& option : options)
        if (std::find(option.short_names.begin(), option.short_names.end(), name) != option.short_names.end())
          found = &option;
      if (found == nullptr) throw unknown(token, token.substr(1));
      out.push_back(token);
      if (found->takes_value && token.size() == 2 && i + 1 < args.size()) out.push_back(args[++i]);
      continue;
    }
    const auto eq = token.find('=');
    const std::string name = token.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    const std::string folded = detail::fold_dashes(name);
    const OptionSpelling* exact = nullptr;
    std::vector<const OptionSpelling*> candidates;
    for (const auto& option : options) {
      bool is_prefix = false;
      for (const auto& long_name : option.long_names) {
        const std::string full = detail::fold_dashes(long_name);
        if (full == folded) exact = &option;
        if (!folded.empty() && full.compare(0, folded.size(), folded) == 0) is_prefix = true;
      }
      if (is_prefix) candidates.push_back(&option);
    }
    const OptionSpelling* chosen = exact;
    if (chosen == nullptr) {
      if (candidates.empty()) throw unknown(token.substr(0, eq), name);
      if (candidates.size() > 1) {
        std::string list;
        for (const auto* option : candidates) list += (list.empty() ? "--" : ", --") + option->long_names.front();
        throw UsageError("ambiguous option: --" + name + " could match " + list);
      }
      chosen = candidates.front();
    }
    out.push_back("--" + chosen->long_names.front() + (eq == std::string::npos ? "" : token.substr(eq)));
    if (chosen->takes_value && eq == std::string::npos && i + 1 < args.size()) out.push_back(args[++i]);
  }
  out.insert(out.end(), args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
  return out;
}

}  // namespace elastic_run
