// record(): the record cases of PyTorch's api_test.py, in process and as real
// worker processes, plus what C++ adds (return types, non-std exceptions).
#include <catch2/catch.hpp>
#include <elastic/errors.hpp>
#include <filesystem>

#include "support/subprocess.hpp"

using elastic::ProcessFailure;
using elastic::testing::read_file;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::ScopedEnv;
using elastic::testing::TempDir;
using elastic::testing::write_file;

namespace {

struct SentinelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int raise_exception_fn() { throw SentinelError("foobar"); }
int good_fn(int a, int b) { return a + b; }

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_file(path)); }

}  // namespace

TEST_CASE("test_record: an escaping exception is written, then propagates", "[record]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("error.json"));
  auto recorded = elastic::record(raise_exception_fn);
  REQUIRE_THROWS_AS(recorded(), SentinelError);
  auto data = read_json(dir.file("error.json"));
  CHECK(data["message"]["message"] == "(anonymous namespace)::SentinelError: foobar");
  CHECK_THAT(data["message"]["extraInfo"]["py_callstack"].get<std::string>(),
             Catch::StartsWith("(anonymous namespace)::SentinelError: foobar"));
  CHECK(data["message"]["extraInfo"]["timestamp"].is_string());
  ProcessFailure failure(0, 1, 1, dir.file("error.json"));
  CHECK(failure.message["message"] == "(anonymous namespace)::SentinelError: foobar");
}

TEST_CASE("test_record_system_exit: SystemExit 0 returns normally", "[record]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("error.json"));
  auto value = elastic::record([]() -> int { throw elastic::SystemExit{0}; })();
  CHECK(value == 0);
  elastic::record([] { throw elastic::SystemExit{0}; })();
  CHECK_FALSE(std::filesystem::exists(dir.file("error.json")));
}

TEST_CASE("test_record_system_exit_erronr: other SystemExit codes propagate unrecorded", "[record]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("error.json"));
  try {
    elastic::record([] { throw elastic::SystemExit{3}; })();
    FAIL("SystemExit did not propagate");
  } catch (const elastic::SystemExit& exit) {
    CHECK(exit.code == 3);
  }
  CHECK_FALSE(std::filesystem::exists(dir.file("error.json")));
}

TEST_CASE("test_record_no_error_file: without TORCHELASTIC_ERROR_FILE nothing is written", "[record]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", std::nullopt);
  ScopedEnv cwd_guard("ELASTIC_UNUSED", std::nullopt);
  REQUIRE_THROWS_AS(elastic::record(raise_exception_fn)(), SentinelError);
  CHECK(std::filesystem::is_empty(dir.path()));
  // As a real process: exit code 1, one line on stderr, no file anywhere in cwd.
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "throw"}, RunOptions({}, {"TORCHELASTIC_ERROR_FILE"}).in(dir.path()));
  CHECK(child.exitcode == 1);
  CHECK_THAT(child.err, Catch::Contains("worker_main failed: (anonymous namespace)::SentinelError: foobar"));
  CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("test_record_good_fn: success writes nothing and returns the result", "[record]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("error.json"));
  CHECK(elastic::record(good_fn)(1, 2) == 3);
  CHECK_FALSE(std::filesystem::exists(dir.file("error.json")));
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "return", "7"},
                   RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("error.json")}}});
  CHECK(child.exitcode == 7);
  CHECK(child.err.empty());
  CHECK_FALSE(std::filesystem::exists(dir.file("error.json")));
}

TEST_CASE("test_record_child_failure: the root cause's file is copied up with errorCode", "[record]") {
  TempDir dir;
  const auto child_file = dir.file("child/error.json");
  write_file(child_file, R"({"message": {"message": "RuntimeError: child", "extraInfo": )"
                         R"({"py_callstack": "tb", "timestamp": "5"}}})");
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("parent/error.json"));
  auto parent = [&] {
    std::map<int, ProcessFailure> failures;
    failures.emplace(0, ProcessFailure(0, 1234, -11, child_file));
    throw elastic::ChildFailedError("trainer", std::move(failures));
  };
  REQUIRE_THROWS_AS(elastic::record(parent)(), elastic::ChildFailedError);
  const std::string copied = read_file(dir.file("parent/error.json"));
  CHECK(copied ==
        R"({"message": {"message": "RuntimeError: child", "extraInfo": {"py_callstack": "tb", "timestamp": "5"}, )"
        R"("errorCode": -11}})");
  // The same through a real parent process.
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "child_failure", child_file, "3"},
                   RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("parent2.json")}}});
  CHECK(child.exitcode == 1);
  CHECK_THAT(child.err, Catch::Contains("trainer FAILED"));
  CHECK(read_json(dir.file("parent2.json"))["message"]["errorCode"] == 3);
}

TEST_CASE("test_record_child_failure_no_child_error_file: nothing is copied", "[record]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("parent.json"));
  auto parent = [&] {
    std::map<int, ProcessFailure> failures;
    failures.emplace(0, ProcessFailure(0, 1234, 1, dir.file("missing.json")));
    throw elastic::ChildFailedError("trainer", std::move(failures));
  };
  REQUIRE_THROWS_AS(elastic::record(parent)(), elastic::ChildFailedError);
  CHECK_FALSE(std::filesystem::exists(dir.file("parent.json")));
}

TEST_CASE("record keeps any signature: void, values, references, move-only arguments", "[record]") {
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", std::nullopt);
  int calls = 0;
  elastic::record([&] { ++calls; })();
  CHECK(calls == 1);
  CHECK(elastic::record([](std::string a, const std::string& b) { return a + b; })("ab", "cd") == "abcd");
  static int storage = 5;
  int& ref = elastic::record([]() -> int& { return storage; })();
  CHECK(&ref == &storage);
  auto moved = elastic::record([](std::unique_ptr<int> p) { return *p; })(std::make_unique<int>(9));
  CHECK(moved == 9);
  struct NoDefault {
    explicit NoDefault(int v) : value(v) {}
    int value;
  };
  CHECK(elastic::record([] { return NoDefault(4); })().value == 4);
  CHECK_THROWS_AS(elastic::record([]() -> NoDefault { throw elastic::SystemExit{0}; })(), elastic::SystemExit);
}

TEST_CASE("non-std exceptions are described by type and value", "[record]") {
  TempDir dir;
  struct Case {
    const char* mode;
    const char* message;
  };
  for (auto [mode, message] : {Case{"throw_int", "int: 42"}, Case{"throw_cstr", "const char*: plain C string"},
                               Case{"throw_struct",
                                    "(anonymous namespace)::NotAnException: <exception of a type "
                                    "not derived from std::exception>"}}) {
    const auto path = dir.file(std::string(mode) + ".json");
    auto child = run({ELASTIC_TEST_RECORD_WORKER, mode}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}}});
    INFO(mode << ": " << child.err);
    CHECK(child.exitcode == 1);
    CHECK(ProcessFailure(0, 1, 1, path).message["message"] == message);
  }
}

TEST_CASE("nested exceptions are listed outermost first", "[record]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "nested"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}}});
  CHECK(child.exitcode == 1);
  ProcessFailure failure(0, 1, 1, path);
  CHECK(failure.message["message"] == "std::runtime_error: optimizer setup failed");
  const std::string stack = failure.message["extraInfo"]["py_callstack"];
  auto outer = stack.find("std::runtime_error: optimizer setup failed");
  auto inner = stack.find("Caused by: std::invalid_argument: learning rate must be positive");
  CHECK(outer == 0);
  CHECK(inner != std::string::npos);
}

TEST_CASE("a custom handler installed with set_error_handler is used", "[record]") {
  struct Counting : elastic::ErrorHandler {
    int initialized = 0, exceptions = 0, successes = 0;
    void initialize() override { ++initialized; }
    void record_exception(std::exception_ptr) override { ++exceptions; }
    void record_success() override { ++successes; }
  };
  auto handler = std::make_shared<Counting>();
  elastic::set_error_handler(handler);
  elastic::record([] {})();
  CHECK_THROWS(elastic::record([] { throw std::logic_error("x"); })());
  elastic::set_error_handler(nullptr);
  CHECK(handler->initialized == 2);
  CHECK(handler->successes == 1);
  CHECK(handler->exceptions == 1);
  CHECK(elastic::get_error_handler() != handler);
  // An explicit handler wins over the process-wide one.
  auto explicit_handler = std::make_shared<Counting>();
  CHECK_THROWS(elastic::record([] { throw 1; }, explicit_handler)());
  CHECK(explicit_handler->exceptions == 1);
}

TEST_CASE("a failing handler never replaces the user's exception", "[record]") {
  struct Broken : elastic::ErrorHandler {
    void initialize() override { throw std::runtime_error("initialize broke"); }
    void record_exception(std::exception_ptr) override { throw std::runtime_error("record broke"); }
  };
  auto recorded = elastic::record(raise_exception_fn, std::make_shared<Broken>());
  CHECK_THROWS_AS(recorded(), SentinelError);
}

TEST_CASE("is_torchelastic_launched follows TORCHELASTIC_RUN_ID", "[record]") {
  {
    ScopedEnv env("TORCHELASTIC_RUN_ID", std::nullopt);
    CHECK_FALSE(elastic::is_torchelastic_launched());
  }
  ScopedEnv env("TORCHELASTIC_RUN_ID", "abc");
  CHECK(elastic::is_torchelastic_launched());
}
