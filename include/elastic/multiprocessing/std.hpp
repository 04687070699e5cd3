// Std: which of a worker's standard streams are redirected to a log file or teed
// (file and console). Parsed as TorchElastic does: "3" for every rank, or a
// per-local-rank map "0:1,1:2" (ranks not named get NONE).
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <variant>

namespace elastic::multiprocessing {

enum class Std : int { NONE = 0, OUT = 1, ERR = 2, ALL = 3 };

inline bool has_out(Std s) { return (static_cast<int>(s) & 1) != 0; }
inline bool has_err(Std s) { return (static_cast<int>(s) & 2) != 0; }

// One value for every local rank, or one per local rank.
using StdSpec = std::variant<Std, std::map<int, Std>>;

namespace detail {
inline int parse_small_int(const std::string& text, const std::string& whole) {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument("invalid redirect/tee value '" + whole + "': expected 0-3 or a map like 0:1,1:2");
  return std::stoi(text);
}
inline Std to_std(int value, const std::string& whole) {
  if (value < 0 || value > 3)
    throw std::invalid_argument("invalid redirect/tee value '" + whole + "': each value must be 0, 1, 2 or 3");
  return static_cast<Std>(value);
}
}  // namespace detail

// "3" -> Std::ALL; "0:1,1:2" -> {0: OUT, 1: ERR}. Throws std::invalid_argument.
inline StdSpec parse_std(const std::string& text) {
  if (text.find(':') == std::string::npos) return detail::to_std(detail::parse_small_int(text, text), text);
  std::map<int, Std> per_rank;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::size_t colon = item.find(':');
    if (colon == std::string::npos)
      throw std::invalid_argument("invalid redirect/tee value '" + text + "': expected RANK:VALUE pairs");
    int rank = detail::parse_small_int(item.substr(0, colon), text);
    per_rank[rank] = detail::to_std(detail::parse_small_int(item.substr(colon + 1), text), text);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return per_rank;
}

// The value for each of `nprocs` local ranks.
inline std::map<int, Std> to_map(const StdSpec& spec, int nprocs) {
  std::map<int, Std> result;
  for (int rank = 0; rank < nprocs; ++rank) {
    if (auto one = std::get_if<Std>(&spec)) {
      result[rank] = *one;
    } else {
      const auto& per_rank = std::get<std::map<int, Std>>(spec);
      auto found = per_rank.find(rank);
      result[rank] = found == per_rank.end() ? Std::NONE : found->second;
    }
  }
  return result;
}

}  // namespace elastic::multiprocessing
