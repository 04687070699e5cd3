// ChildFailedError: root cause, numbering and the summary layout, byte for byte.
#include <catch2/catch.hpp>
#include <ctime>
#include <elastic/errors.hpp>

#include "support/subprocess.hpp"

using elastic::ChildFailedError;
using elastic::ProcessFailure;
using elastic::testing::ScopedEnv;
using elastic::testing::TempDir;
using elastic::testing::write_file;

namespace {

struct UtcClock {
  ScopedEnv tz{"TZ", "UTC"};
  UtcClock() { ::tzset(); }
  ~UtcClock() { ::tzset(); }
};

std::string host() { return elastic::fqdn(); }

}  // namespace

TEST_CASE("test_child_failed_error: the earliest failure is the root cause", "[child_failed_error]") {
  TempDir dir;
  write_file(dir.file("0.json"), R"({"message": {"message": "SentinelError: foobar", "extraInfo": )"
                                 R"({"py_callstack": "Traceback:\n  boom", "timestamp": "1000"}}})");
  std::map<int, ProcessFailure> failures;
  failures.emplace(0, ProcessFailure(0, 997, 1, dir.file("0.json")));
  failures.emplace(1, ProcessFailure(1, 998, 3, "no_exist.json"));
  failures.emplace(2, ProcessFailure(2, 999, -15, "no_exist.json"));
  ChildFailedError error("trainer.par", std::move(failures));
  auto [rank, failure] = error.get_first_failure();
  CHECK(rank == 0);
  CHECK(failure.pid == 997);
  CHECK(error.name() == "trainer.par");
  CHECK(error.failures().size() == 3);
  CHECK(std::string(error.what()) == error.format_msg());
  const std::string summary = error.what();
  CHECK_THAT(summary, Catch::Contains("trainer.par FAILED"));
  CHECK_THAT(summary, Catch::Contains("traceback : Traceback:\n    boom"));
  CHECK_THAT(summary, Catch::Contains("traceback : Signal 15 (SIGTERM) received by PID 999"));
  // The two non-root failures are listed under Failures, numbered in rank order.
  auto failures_at = summary.find("Failures:");
  auto root_at = summary.find("Root Cause");
  CHECK(summary.find("[1]:", failures_at) < root_at);
  CHECK(summary.find("[2]:", failures_at) < root_at);
  CHECK(summary.find("[0]:", root_at) != std::string::npos);
}

TEST_CASE("the summary layout matches TorchElastic byte for byte", "[child_failed_error]") {
  UtcClock utc;
  TempDir dir;
  write_file(dir.file("1.json"), R"({"message": "short", "timestamp": 1605774851})");
  std::map<int, ProcessFailure> failures;
  failures.emplace(1, ProcessFailure(1, 42, 1, dir.file("1.json")));
  ChildFailedError error("w", std::move(failures));
  const std::string file = dir.file("1.json");
  const std::vector<std::string> lines = {
      "[0]:",
      "  time      : 2020-11-19_08:34:11",
      "  host      : " + host(),
      "  rank      : 1 (local_rank: 1)",
      "  exitcode  : 1 (pid: 42)",
      "  error_file: " + file,
      "  traceback : short",
  };
  std::size_t width = 0;
  std::string block;
  for (const auto& line : lines) {
    width = std::max(width, line.size());
    block += (block.empty() ? "" : "\n") + line;
  }
  width = std::min<std::size_t>(width, 60);
  const std::string expected = "\n" + std::string(width, '=') + "\nw FAILED\n" + std::string(width, '-') +
                               "\nFailures:\n  <NO_OTHER_FAILURES>\n" + std::string(width, '-') +
                               "\nRoot Cause (first observed failure):\n" + block + "\n" + std::string(width, '=');
  CHECK(error.format_msg() == expected);
  CHECK(error.format_msg('#', '~').find(std::string(width, '#')) == 1);
}

TEST_CASE("width is counted in code points and capped at 60", "[child_failed_error]") {
  TempDir dir;
  // 20 three-byte characters: 20 code points, 60 bytes.
  std::string wide;
  for (int i = 0; i < 20; ++i) wide += "\xe2\x82\xac";
  write_file(dir.file("e.json"), "{\"message\": \"" + wide + "\", \"timestamp\": 1}");
  std::map<int, ProcessFailure> failures;
  failures.emplace(0, ProcessFailure(0, 1, 1, dir.file("e.json")));
  const std::string summary = ChildFailedError("x", failures).format_msg();
  const std::string first_rule = summary.substr(1, summary.find('\n', 1) - 1);
  // The widest line is host or error_file, or "  traceback : " + 20 code points (34).
  std::size_t expected = std::max<std::size_t>(34, 14 + host().size());
  expected = std::max<std::size_t>(expected, 14 + dir.file("e.json").size());
  CHECK(first_rule.size() == std::min<std::size_t>(expected, 60));

  write_file(dir.file("long.json"), "{\"message\": \"" + std::string(500, 'x') + "\", \"timestamp\": 1}");
  failures.clear();
  failures.emplace(0, ProcessFailure(0, 1, 1, dir.file("long.json")));
  CHECK(ChildFailedError("x", failures).format_msg().substr(1, 61) == std::string(60, '=') + "\n");
}

TEST_CASE("only a nested message is indented, and values are inserted literally", "[child_failed_error]") {
  TempDir dir;
  write_file(dir.file("s.json"), R"({"message": "a\nb ${idx} $$ {} %s", "timestamp": 1})");
  write_file(dir.file("n.json"),
             R"({"message": {"message": "M", "extraInfo": {"py_callstack": "", "timestamp": "2"}}})");
  write_file(dir.file("m.json"), R"({"message": {"message": "only\nmessage", "extraInfo": {"timestamp": "3"}}})");
  std::map<int, ProcessFailure> failures;
  failures.emplace(0, ProcessFailure(0, 1, 1, dir.file("s.json")));
  failures.emplace(1, ProcessFailure(1, 2, 1, dir.file("n.json")));
  failures.emplace(2, ProcessFailure(2, 3, 1, dir.file("m.json")));
  const std::string summary = ChildFailedError("x", failures).format_msg();
  CHECK_THAT(summary, Catch::Contains("traceback : a\nb ${idx} $$ {} %s\n"));
  CHECK_THAT(summary, Catch::Contains("traceback : \n"));  // empty py_callstack shows empty
  CHECK_THAT(summary, Catch::Contains("traceback : only\n  message"));
}

TEST_CASE("ties on the timestamp go to the first rank in order", "[child_failed_error]") {
  TempDir dir;
  write_file(dir.file("t.json"), R"({"message": "same", "timestamp": 7})");
  std::map<int, ProcessFailure> failures;
  for (int rank : {5, 3, 9}) failures.emplace(rank, ProcessFailure(rank, rank, 1, dir.file("t.json")));
  CHECK(ChildFailedError("x", failures).get_first_failure().first == 3);
}

TEST_CASE("an empty failure map is rejected", "[child_failed_error]") {
  // NOLINTNEXTLINE(bugprone-throw-keyword-missing): constructed only to see the constructor throw
  CHECK_THROWS_AS(ChildFailedError("x", {}), std::invalid_argument);
}

TEST_CASE("the enrichment hook sees the rendered root cause of a signal failure", "[child_failed_error]") {
  struct Enriching : elastic::ErrorHandler {
    std::string seen_file;
    std::string maybe_enrich_signal_failure_message(std::string message, const std::string& error_file) override {
      seen_file = error_file;
      return message + "\n[device context]";
    }
  };
  auto handler = std::make_shared<Enriching>();
  elastic::set_error_handler(handler);
  std::map<int, ProcessFailure> failures;
  failures.emplace(0, ProcessFailure(0, 10, -6, ""));
  const std::string with_signal = ChildFailedError("x", failures).format_msg();
  failures.clear();
  failures.emplace(0, ProcessFailure(0, 10, 1, ""));
  const std::string without_signal = ChildFailedError("x", failures).format_msg();
  elastic::set_error_handler(nullptr);
  CHECK_THAT(with_signal, Catch::Contains("Signal 6 (SIGABRT) received by PID 10\n[device context]"));
  CHECK(handler->seen_file == "<N/A>");
  CHECK_THAT(without_signal, !Catch::Contains("[device context]"));
}
