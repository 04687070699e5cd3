// libFuzzer target: the launcher's parsers of user strings, fed one input split
// at newlines: --redirects/--tee (parse_std), --nnodes, --nproc-per-node,
// --rdzv-conf, and the ${...} substitution of prefixes and worker arguments.
// A usage error (std::invalid_argument) is the expected answer to bad input; a
// crash, a sanitizer report, any other exception or a broken invariant is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <elastic/launcher.hpp>
#include <elastic/multiprocessing.hpp>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace {

void check(bool condition) {
  if (!condition) std::abort();
}

template <typename F>
void expect_usage_error_at_most(F&& parse) {
  try {
    parse();
  } catch (const std::invalid_argument&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> fields;
  for (std::size_t start = 0;;) {
    std::size_t end = input.find('\n', start);
    fields.push_back(input.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  fields.resize(std::max<std::size_t>(fields.size(), 5));

  namespace mp = elastic::multiprocessing;
  namespace launcher = elastic::launcher;
  expect_usage_error_at_most([&] {
    mp::StdSpec spec = mp::parse_std(fields[0]);
    for (const auto& [rank, value] : mp::to_map(spec, 8)) {
      check(rank >= 0 && rank < 8);
      check(static_cast<int>(value) >= 0 && static_cast<int>(value) <= 3);
    }
  });
  expect_usage_error_at_most([&] {
    auto [min, max] = launcher::parse_min_max_nnodes(fields[1]);
    check(min > 0 && min <= max);
  });
  // "gpu" and "auto" depend on the machine, not on the input; the rest must parse or be refused.
  if (fields[2] != "gpu" && fields[2] != "auto")
    expect_usage_error_at_most([&] { check(launcher::determine_local_world_size(fields[2]) > 0); });
  expect_usage_error_at_most([&] {
    for (const auto& [key, value] : launcher::parse_rendezvous_config(fields[3])) {
      check(!key.empty());
      check(key.find(',') == std::string::npos && value.find(',') == std::string::npos);
    }
  });
  const std::map<std::string, std::string> values{{"rank", "12"}, {"local_rank", "3"}, {"role_name", fields[4]}};
  for (bool dollar_escape : {true, false}) {
    const std::string out = launcher::detail::substitute(fields[4], values, dollar_escape);
    if (fields[4].find('$') == std::string::npos) check(out == fields[4]);
  }
  return 0;
}
