// ErrorHandler: the cases of PyTorch's error_handler_test.py.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <elastic/errors.hpp>
#include <filesystem>

#include "support/subprocess.hpp"

using elastic::ErrorHandler;
using elastic::testing::read_file;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::ScopedEnv;
using elastic::testing::TempDir;
using elastic::testing::write_file;

TEST_CASE("test_initialize: initialize is safe to call, repeatedly", "[error_handler]") {
  ErrorHandler handler;
  handler.initialize();
  handler.initialize();
  SUCCEED("initialize returned");
}

TEST_CASE("test_initialize_error: a failing initialize is warned about, not fatal", "[error_handler]") {
  struct FailingInit : ErrorHandler {
    void initialize() override { throw std::runtime_error("no fault handler here"); }
  };
  auto recorded = elastic::record([] { return 11; }, std::make_shared<FailingInit>());
  CHECK(recorded() == 11);
}

TEST_CASE("test_record_exception: the nested format with callstack and timestamp", "[error_handler]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("error.json"));
  ErrorHandler handler;
  const auto before = std::time(nullptr);
  try {
    throw std::runtime_error("foobar");
  } catch (...) {
    handler.record_exception(std::current_exception());
  }
  auto data = nlohmann::json::parse(read_file(dir.file("error.json")));
  CHECK(data["message"]["message"] == "std::runtime_error: foobar");
  CHECK(data["message"]["extraInfo"]["py_callstack"].get<std::string>().rfind("std::runtime_error: foobar", 0) == 0);
  const auto stamp = std::stoll(data["message"]["extraInfo"]["timestamp"].get<std::string>());
  CHECK(stamp >= before);
  CHECK(stamp <= std::time(nullptr));
  // The reference overload writes the same message.
  handler.record_exception(std::logic_error("by reference"));
  data = nlohmann::json::parse(read_file(dir.file("error.json")));
  CHECK(data["message"]["message"] == "std::logic_error: by reference");
}

TEST_CASE("test_record_exception_no_error_file: nothing is written, nothing thrown", "[error_handler]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", std::nullopt);
  ErrorHandler handler;
  CHECK_FALSE(handler.error_file_path().has_value());
  handler.record_exception(std::make_exception_ptr(std::runtime_error("x")));
  ScopedEnv empty("TORCHELASTIC_ERROR_FILE", "");
  CHECK_FALSE(handler.error_file_path().has_value());
  handler.record_exception(std::make_exception_ptr(std::runtime_error("x")));
  CHECK(std::filesystem::is_empty(dir.path()));
}

TEST_CASE("test_dump_error_file: a byte-identical copy with code 0", "[error_handler]") {
  TempDir dir;
  // Deliberately not in our own serialization (other spacing, key order, escapes).
  const std::string original =
      "{\"message\":{\"extraInfo\":{\"timestamp\":\"1\",\"py_callstack\":\"x\\u00e9\"},"
      "\"message\":\"e\"}}\n";
  write_file(dir.file("child.json"), original);
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("parent/error.json"));
  ErrorHandler handler;
  handler.dump_error_file(dir.file("child.json"));
  CHECK(read_file(dir.file("parent/error.json")) == original);
  // With an error code the key order of the child is kept and errorCode is appended.
  handler.dump_error_file(dir.file("child.json"), 9);
  CHECK(read_file(dir.file("parent/error.json")) ==
        R"({"message": {"extraInfo": {"timestamp": "1", "py_callstack": "x\u00e9"}, "message": "e", "errorCode": 9}})");
  // A string message has no place for errorCode: copied unchanged.
  write_file(dir.file("new.json"), R"({"message": "m", "timestamp": 3})");
  handler.dump_error_file(dir.file("new.json"), 9);
  CHECK(read_file(dir.file("parent/error.json")) == R"({"message": "m", "timestamp": 3})");
}

TEST_CASE("test_dump_error_file_overwrite_existing: the old file is logged, then replaced", "[error_handler]") {
  TempDir dir;
  write_file(dir.file("child.json"), R"({"message": {"message": "new", "extraInfo": {"timestamp": "2"}}})");
  write_file(dir.file("parent.json"), R"({"message": "stale record", "timestamp": 1})");
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "child_failure", dir.file("child.json"), "0"},
                   RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("parent.json")}}});
  CHECK(child.exitcode == 1);
  CHECK_THAT(child.err, Catch::Contains("already exists and will be overwritten"));
  CHECK_THAT(child.err, Catch::Contains("stale record"));
  CHECK(read_file(dir.file("parent.json")) == read_file(dir.file("child.json")));
}

TEST_CASE("a replaced file is echoed only when it is an error file, never through a symlink", "[error_handler]") {
  TempDir dir;
  write_file(dir.file("child.json"), R"({"message": {"message": "new", "extraInfo": {"timestamp": "2"}}})");
  auto copy_up_to = [&](const std::string& parent_file) {
    auto child = run({ELASTIC_TEST_RECORD_WORKER, "child_failure", dir.file("child.json"), "0"},
                     RunOptions{{{"TORCHELASTIC_ERROR_FILE", parent_file}}});
    CHECK(child.exitcode == 1);
    CHECK(read_file(parent_file) == read_file(dir.file("child.json")));
    return child.err;
  };
  SECTION("a symlink to a private file: its target is neither read nor written") {
    write_file(dir.file("private"), R"({"message": "SECRET-TOKEN-1234", "timestamp": 1})");
    std::filesystem::create_symlink(dir.file("private"), dir.file("parent.json"));
    const std::string err = copy_up_to(dir.file("parent.json"));
    CHECK_THAT(err, !Catch::Contains("SECRET-TOKEN"));
    CHECK_THAT(err, Catch::Contains("symbolic link"));
    CHECK_FALSE(std::filesystem::is_symlink(dir.file("parent.json")));
    CHECK(read_file(dir.file("private")) == R"({"message": "SECRET-TOKEN-1234", "timestamp": 1})");
  }
  SECTION("bytes that are not an error file are not shown") {
    write_file(dir.file("parent.json"), "SECRET-TOKEN-5678 not json at all");
    const std::string err = copy_up_to(dir.file("parent.json"));
    CHECK_THAT(err, !Catch::Contains("SECRET-TOKEN"));
    CHECK_THAT(err, Catch::Contains("not an error file"));
    write_file(dir.file("parent.json"), R"(["SECRET-TOKEN-5678"])");
    CHECK_THAT(copy_up_to(dir.file("parent.json")), !Catch::Contains("SECRET-TOKEN"));
  }
  SECTION("a big error file is not echoed") {
    write_file(dir.file("parent.json"),
               R"({"message": "SECRET-TOKEN-9 )" + std::string(200000, 'x') + R"(", "timestamp": 1})");
    const std::string err = copy_up_to(dir.file("parent.json"));
    CHECK_THAT(err, !Catch::Contains("SECRET-TOKEN"));
    CHECK(err.size() < 64 * 1024);
  }
}

TEST_CASE("dump_error_file never throws on a bad child file", "[error_handler]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("parent.json"));
  ErrorHandler handler;
  write_file(dir.file("bad.json"), "{not json");
  CHECK_NOTHROW(handler.dump_error_file(dir.file("bad.json"), 1));
  CHECK_NOTHROW(handler.dump_error_file(dir.file("missing.json"), 1));
  CHECK_NOTHROW(handler.dump_error_file(dir.path().string(), 1));
  CHECK_FALSE(std::filesystem::exists(dir.file("parent.json")));
}

TEST_CASE("log level: ELASTIC_LOG_LEVEL=debug shows the handler's debug lines", "[error_handler]") {
  TempDir dir;
  write_file(dir.file("child.json"), R"({"message": {"message": "m", "extraInfo": {"timestamp": "2"}}})");
  auto quiet = run({ELASTIC_TEST_RECORD_WORKER, "child_failure", dir.file("child.json"), "1"},
                   RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("p1.json")}}});
  auto loud = run({ELASTIC_TEST_RECORD_WORKER, "child_failure", dir.file("child.json"), "1"},
                  RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("p2.json")}, {"ELASTIC_LOG_LEVEL", "debug"}}});
  CHECK_THAT(quiet.err, !Catch::Contains("[elastic] DEBUG"));
  CHECK_THAT(loud.err, Catch::Contains("[elastic] DEBUG: child error file"));
  CHECK_THAT(loud.err, Catch::Contains("[elastic] INFO: dumped error file to parent's"));
}

namespace {
// What `step` writes to this process's stderr (the library logs there).
template <typename Step>
std::string stderr_of(Step&& step) {
  TempDir dir;
  const std::string path = dir.file("stderr");
  std::fflush(stderr);
  const int saved = ::dup(STDERR_FILENO);
  const int capture = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(saved >= 0);
  REQUIRE(capture >= 0);
  ::dup2(capture, STDERR_FILENO);
  ::close(capture);
  step();
  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  return read_file(path);
}
}  // namespace

TEST_CASE("the entry point's name is logged at debug level, and only when one is set", "[error_handler]") {
  TempDir dir;
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("error.json"));
  elastic::log::set_level(elastic::log::Level::debug);
  ErrorHandler unnamed;
  CHECK(stderr_of([&] { unnamed.record_success(); }).empty());
  CHECK_THAT(stderr_of([&] { unnamed.record_exception(std::runtime_error("boom")); }),
             !Catch::Contains("recording the exception raised by"));
  ErrorHandler named;
  named.set_entrypoint_fn_name("train_main");
  CHECK_THAT(stderr_of([&] { named.record_success(); }),
             Catch::Contains("[elastic] DEBUG: train_main finished successfully"));
  CHECK_THAT(stderr_of([&] { named.record_exception(std::runtime_error("boom")); }),
             Catch::Contains("[elastic] DEBUG: recording the exception raised by train_main"));
  elastic::log::set_level(elastic::log::Level::warning);
  CHECK(stderr_of([&] { named.record_success(); }).empty());
  elastic::log::reset_level();
}

namespace {
// Puts the code under a key of its own instead of message.errorCode.
class ElsewhereHandler : public ErrorHandler {
 public:
  bool override_error_code_in_rootcause_data(const std::string& file, nlohmann::ordered_json& data,
                                             int error_code) override {
    seen_file = file;
    data["exit_code"] = error_code;
    return true;
  }
  std::string seen_file;
};
}  // namespace

TEST_CASE("override_error_code_in_rootcause_data: a subclass decides how the code is set", "[error_handler]") {
  TempDir dir;
  write_file(dir.file("child.json"), R"({"message": {"message": "e", "extraInfo": {"timestamp": "1"}}})");
  ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("parent.json"));
  ElsewhereHandler handler;
  handler.dump_error_file(dir.file("child.json"), 7);
  CHECK(handler.seen_file == dir.file("child.json"));
  CHECK(read_file(dir.file("parent.json")) ==
        R"({"message": {"message": "e", "extraInfo": {"timestamp": "1"}}, "exit_code": 7})");
  // The default sets message.errorCode, and says whether it changed anything.
  ErrorHandler plain;
  nlohmann::ordered_json nested = {{"message", {{"message", "e"}}}};
  CHECK(plain.override_error_code_in_rootcause_data("f", nested, 3));
  CHECK(nested["message"]["errorCode"] == 3);
  nlohmann::ordered_json flat = {{"message", "m"}};
  CHECK_FALSE(plain.override_error_code_in_rootcause_data("f", flat, 3));
  CHECK(flat == nlohmann::ordered_json{{"message", "m"}});
  // Code 0 is never passed on: the copy stays byte-identical.
  handler.seen_file.clear();
  handler.dump_error_file(dir.file("child.json"));
  CHECK(handler.seen_file.empty());
}
