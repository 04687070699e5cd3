// ProcessFailure: the cases of PyTorch's api_test.py for reading a failed child,
// with real files and real processes.
#include <catch2/catch.hpp>
#include <csignal>
#include <ctime>
#include <elastic/errors.hpp>

#include "support/subprocess.hpp"

using elastic::ProcessFailure;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::TempDir;
using elastic::testing::write_file;

TEST_CASE("test_failure_incorrect_reply_file: an unknown layout is rejected", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"unknown_key": "unknown_value"})");
  REQUIRE_THROWS_AS(ProcessFailure(0, 997, 1, path), elastic::ErrorFileError);
  try {
    ProcessFailure(0, 997, 1, path);
  } catch (const elastic::ErrorFileError& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
    CHECK(e.reason().find("message") != std::string::npos);
    CHECK(e.path() == path);
  }
}

TEST_CASE("test_process_failure_new_format: string message, integer timestamp", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"message": "test error message", "timestamp": 10})");
  ProcessFailure failure(0, 997, 1, path);
  CHECK(failure.message == "test error message");
  CHECK(failure.timestamp == 10);
  CHECK(failure.error_file == path);
  CHECK(failure.error_file_data["message"] == "test error message");
}

TEST_CASE("new format without a timestamp reads as timestamp 0", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"message": "no time"})");
  ProcessFailure failure(0, 1, 1, path);
  CHECK(failure.timestamp == 0);
}

TEST_CASE("test_process_mast_error_format: string timestamp", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"message": "test error message", "timestamp": "10"})");
  ProcessFailure failure(0, 997, 1, path);
  CHECK(failure.message == "test error message");
  CHECK(failure.timestamp == 10);
}

TEST_CASE("test_process_failure: a recorded child's file is read back", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  auto before = static_cast<std::int64_t>(std::time(nullptr));
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "throw"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}}});
  REQUIRE(child.exitcode == 1);
  ProcessFailure failure(0, child.pid, child.exitcode, path);
  CHECK(failure.local_rank == 0);
  CHECK(failure.pid == child.pid);
  CHECK(failure.exitcode == 1);
  CHECK(failure.error_file == path);
  REQUIRE(failure.message.is_object());
  CHECK(failure.message["message"] == "(anonymous namespace)::SentinelError: foobar");
  CHECK(failure.timestamp >= before);
  CHECK(failure.timestamp <= static_cast<std::int64_t>(std::time(nullptr)));
  CHECK(failure.signal_name() == "<N/A>");
}

TEST_CASE("test_process_failure_signal: a child killed by SIGSEGV without a file", "[process_failure]") {
  TempDir dir;
  // A child with no error file path dies by the signal and leaves nothing behind.
  auto child =
      run({ELASTIC_TEST_RECORD_WORKER, "signal", std::to_string(SIGSEGV)}, RunOptions{{}, {"TORCHELASTIC_ERROR_FILE"}});
  REQUIRE(child.exitcode == -SIGSEGV);
  ProcessFailure failure(0, 997, -SIGSEGV, dir.file("no_such_file.json"));
  CHECK(failure.signal_name() == "SIGSEGV");
  CHECK(failure.message == "Signal 11 (SIGSEGV) received by PID 997");
  CHECK(failure.error_file == "<N/A>");
  CHECK(failure.error_file_data == nlohmann::json{{"message", "<NONE>"}});
}

TEST_CASE("test_process_failure_no_error_file: exit code without a file", "[process_failure]") {
  auto before = static_cast<std::int64_t>(std::time(nullptr));
  ProcessFailure failure(0, 997, 1, "/no/such/dir/error.json");
  CHECK(failure.error_file == "<N/A>");
  CHECK(failure.message == "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html");
  CHECK(failure.timestamp >= before);
  CHECK(failure.signal_name() == "<N/A>");
}

TEST_CASE("an empty string message is replaced like a missing one", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"message": "", "timestamp": 5})");
  ProcessFailure failure(3, 42, -9, path);
  CHECK(failure.message == "Signal 9 (SIGKILL) received by PID 42");
  CHECK(failure.timestamp == 5);
  CHECK(failure.error_file == path);
}

TEST_CASE("signal names follow Python's, unnamed ones are <N/A>", "[process_failure]") {
  auto name = [](int exitcode) { return ProcessFailure(0, 1, exitcode, "").signal_name(); };
  CHECK(name(-6) == "SIGABRT");
  CHECK(name(-29) == "SIGIO");
  CHECK(name(-16) == "SIGSTKFLT");
  CHECK(name(-30) == "SIGPWR");
  CHECK(name(-31) == "SIGSYS");
  CHECK(name(-34) == "SIGRTMIN");
  CHECK(name(-64) == "SIGRTMAX");
  CHECK(name(-32) == "<N/A>");
  CHECK(name(-40) == "<N/A>");
  CHECK(name(-65) == "<N/A>");
  CHECK(name(0) == "<N/A>");
  CHECK(name(2) == "<N/A>");
  CHECK(ProcessFailure(0, 7, -40, "").message == "Signal 40 (<N/A>) received by PID 7");
}

TEST_CASE("timestamp_isoformat is local time as YYYY-MM-DD_HH:MM:SS", "[process_failure]") {
  elastic::testing::ScopedEnv tz("TZ", "UTC");
  ::tzset();
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"message": "m", "timestamp": 1605774851})");
  CHECK(ProcessFailure(0, 1, 1, path).timestamp_isoformat() == "2020-11-19_08:34:11");
  write_file(path, R"({"message": "m", "timestamp": 9223372036854775807})");
  CHECK(ProcessFailure(0, 1, 1, path).timestamp_isoformat() == "9223372036854775807");
}

TEST_CASE("nested format: timestamp string and errorCode", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"message": {"message": "RuntimeError: foobar", "extraInfo": {"py_callstack": "tb", )"
                   R"("timestamp": "1605774851"}, "errorCode": 11}})");
  ProcessFailure failure(1, 2, -11, path);
  CHECK(failure.timestamp == 1605774851);
  CHECK(failure.message["errorCode"] == 11);
  CHECK(failure.message["extraInfo"]["py_callstack"] == "tb");
}

TEST_CASE("timestamps are read as Python's int() reads them", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  auto read = [&](const std::string& value) {
    write_file(path, R"({"message": "m", "timestamp": )" + value + "}");
    return ProcessFailure(0, 1, 1, path).timestamp;
  };
  CHECK(read("10.9") == 10);
  CHECK(read("-3") == -3);
  CHECK(read("\" 42 \"") == 42);
  CHECK(read("\"1_000\"") == 1000);
  CHECK(read("true") == 1);
  CHECK_THROWS_AS(read("\"10.5\""), elastic::ErrorFileError);
  CHECK_THROWS_AS(read("null"), elastic::ErrorFileError);
  CHECK_THROWS_AS(read("[1]"), elastic::ErrorFileError);
  CHECK_THROWS_AS(read("1e300"), elastic::ErrorFileError);
  CHECK_THROWS_AS(read("\"99999999999999999999\""), elastic::ErrorFileError);
}

TEST_CASE("malformed files throw ErrorFileError naming the problem", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  auto reason = [&](const std::string& contents) -> std::string {
    write_file(path, contents);
    try {
      ProcessFailure(0, 1, 1, path);
    } catch (const elastic::ErrorFileError& e) {
      return e.reason();
    }
    return "no error";
  };
  CHECK_THAT(reason(""), Catch::Contains("not valid JSON"));
  CHECK_THAT(reason(R"({"message": {"message": "x")"), Catch::Contains("not valid JSON"));
  CHECK_THAT(reason("[1, 2]"), Catch::Contains("not a JSON object"));
  CHECK_THAT(reason(R"({"message": 5})"), Catch::Contains("neither a string nor an object"));
  CHECK_THAT(reason(R"({"message": {"message": "x"}})"), Catch::Contains("extraInfo"));
  CHECK_THAT(reason(R"({"message": {"extraInfo": {}}})"), Catch::Contains("timestamp"));
  CHECK_THAT(reason(R"({"message": {"extraInfo": {"timestamp": "1", "py_callstack": 3}}})"),
             Catch::Contains("py_callstack"));
  CHECK_THAT(reason(std::string(10000, '[') + std::string(10000, ']')), Catch::Contains("nested deeper"));
  CHECK_THAT(reason("{\"message\": \"\xff\xfe\"}"), Catch::Contains("not valid JSON"));
}

TEST_CASE("special files at the error-file path count as no file", "[process_failure]") {
  TempDir dir;
  REQUIRE(::mkfifo(dir.file("fifo").c_str(), 0600) == 0);
  std::filesystem::create_directory(dir.file("directory"));
  std::filesystem::create_symlink(dir.file("loop"), dir.file("loop"));
  for (const std::string& path :
       {dir.file("fifo"), dir.file("directory"), dir.file("loop"), std::string("/dev/zero")}) {
    ProcessFailure failure(0, 5, 1, path);
    CHECK(failure.error_file == "<N/A>");
    CHECK(failure.message == elastic::no_traceback_message);
  }
}

TEST_CASE("read_or_describe keeps the path and the reason of an unusable file", "[process_failure]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, "{truncated");
  auto failure = ProcessFailure::read_or_describe(2, 77, -6, path);
  CHECK(failure.error_file == path);
  CHECK_THAT(failure.message.get<std::string>(), Catch::StartsWith("Signal 6 (SIGABRT) received by PID 77"));
  CHECK_THAT(failure.message.get<std::string>(), Catch::Contains("error file unusable: not valid JSON"));
}

TEST_CASE("ProcessFailure compares equal field by field", "[process_failure]") {
  TempDir dir;
  write_file(dir.file("error.json"), R"({"message": "boom", "timestamp": 42})");
  ProcessFailure a(1, 100, 3, dir.file("error.json"));
  ProcessFailure b(1, 100, 3, dir.file("error.json"));
  CHECK(a == b);
  CHECK_FALSE(a != b);
  for (int field = 0; field < 7; ++field) {
    ProcessFailure c = a;
    switch (field) {
      case 0: c.local_rank = 2; break;
      case 1: c.pid = 101; break;
      case 2: c.exitcode = 4; break;
      case 3: c.error_file = "other"; break;
      case 4: c.error_file_data = {{"message", "x"}}; break;
      case 5: c.message = "other"; break;
      case 6: c.timestamp = 43; break;
    }
    INFO("field " << field);
    CHECK(a != c);
    CHECK_FALSE(a == c);
  }
}
