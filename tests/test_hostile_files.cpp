// The reader under hostile and broken error files: it never crashes, hangs or
// reads without bound; an unusable file is an ErrorFileError with a clear,
// printable reason, and a parent's summary still lists that rank with its path.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <climits>
#include <cstdint>
#include <elastic/errors.hpp>
#include <filesystem>
#include <thread>

#include "support/sanitizers.hpp"
#include "support/subprocess.hpp"

using elastic::ErrorFileError;
using elastic::ErrorFileLimits;
using elastic::ProcessFailure;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::TempDir;
using elastic::testing::write_file;

namespace detail = elastic::errors::detail;

namespace {

// The reason ProcessFailure gives for `path`, or "" when it reads fine.
std::string reason_for(const std::string& path) {
  try {
    ProcessFailure(0, 1, 1, path);
  } catch (const ErrorFileError& e) {
    return e.reason();
  }
  return "";
}

std::string reason_for_contents(const TempDir& dir, const std::string& contents) {
  const auto path = dir.file("error.json");
  write_file(path, contents);
  return reason_for(path);
}

bool printable_ascii(const std::string& text) {
  for (unsigned char c : text)
    if (c < 0x20 || c >= 0x7f) return false;
  return true;
}

// A complete record as a C++ worker writes it.
std::string recorded_file(const TempDir& dir) {
  const auto path = dir.file("recorded.json");
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "nested"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}}});
  REQUIRE(child.exitcode == 1);
  return elastic::testing::read_file(path);
}

long maxrss_kib(const std::string& err) {
  auto at = err.rfind("maxrss_kib=");
  REQUIRE(at != std::string::npos);
  return std::stol(err.substr(at + 11));
}

}  // namespace

TEST_CASE("every truncation of a real error file is read whole or rejected clearly", "[hostile]") {
  TempDir dir;
  const std::string whole = recorded_file(dir);
  REQUIRE(whole.size() > 20);
  const auto path = dir.file("error.json");
  for (std::size_t size = 0; size < whole.size(); ++size) {
    write_file(path, whole.substr(0, size));
    INFO("first " << size << " bytes");
    const std::string reason = reason_for(path);
    CHECK_THAT(reason, Catch::Contains("not valid JSON"));
    auto described = ProcessFailure::read_or_describe(0, 9, 1, path);
    CHECK(described.error_file == path);
    CHECK_THAT(described.message.get<std::string>(), Catch::Contains("error file unusable"));
  }
  write_file(path, whole);
  CHECK(reason_for(path).empty());
}

TEST_CASE("invalid UTF-8 is rejected with a printable reason", "[hostile]") {
  TempDir dir;
  for (const std::string& bad : {std::string("\xff\xfe"), std::string("\xc3"), std::string("\xed\xa0\x80"),
                                 std::string("\xf8\x88\x80\x80\x80"), std::string("a\0b", 3)}) {
    const std::string reason = reason_for_contents(dir, R"({"message": ")" + bad + R"(", "timestamp": 1})");
    INFO(reason);
    CHECK_THAT(reason, Catch::Contains("not valid JSON"));
    CHECK(printable_ascii(reason));
    auto described = ProcessFailure::read_or_describe(0, 9, 1, dir.file("error.json"));
    CHECK(printable_ascii(described.message.get<std::string>()));
    // The summary of such a failure can itself be written as JSON.
    CHECK_NOTHROW(nlohmann::json(described.message).dump());
  }
}

TEST_CASE("a 1 GB file is refused from its size without being read", "[hostile]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, off_t(1) << 30) == 0);  // sparse: costs no disk
    ::close(fd);
  }
  CHECK_THAT(reason_for(path), Catch::Contains("over the limit of 67108864 bytes"));
  // In a separate process, so its peak memory shows the file was never read.
  auto reader = run({ELASTIC_TEST_FAILURE_READER, "1", path});
  REQUIRE(reader.exitcode == 0);
  CHECK_THAT(reader.out, Catch::Contains("error_file: " + path));
  CHECK_THAT(reader.out, Catch::Contains("over the limit"));
  CHECK(maxrss_kib(reader.err) < 256 * 1024);
}

TEST_CASE("a file just over the byte limit is refused, one at the limit is parsed", "[hostile]") {
  TempDir dir;
  const std::string head = R"({"message": ")", tail = R"(", "timestamp": 1})";
  const std::size_t fill = ErrorFileLimits::max_bytes - head.size() - tail.size();
  CHECK(reason_for_contents(dir, head + std::string(fill, 'm') + tail).empty());
  CHECK_THAT(reason_for_contents(dir, head + std::string(fill + 1, 'm') + tail), Catch::Contains("over the limit"));
}

TEST_CASE("JSON nested 100 000 deep is refused before parsing", "[hostile]") {
  TempDir dir;
  const std::size_t deep = 100000;
  std::string objects;
  for (std::size_t i = 0; i < deep; ++i) objects += R"({"a":)";
  objects += "1" + std::string(deep, '}');
  for (const std::string& text :
       {std::string(deep, '[') + std::string(deep, ']'), objects, R"({"message": )" + std::string(deep, '['),
        R"({"message": {"message": "m", "extraInfo": {"timestamp": 1, "x": )" + std::string(deep, '[')}) {
    CHECK_THAT(reason_for_contents(dir, text), Catch::Contains("nested deeper than 512 levels"));
  }
  // Brackets inside strings are text, not nesting.
  CHECK(reason_for_contents(dir, R"({"message": ")" + std::string(deep, '[') + R"(\"[", "timestamp": 1})").empty());
  // At the limit exactly, the file is read.
  std::string at_limit = R"({"message": "m", "x": )" + std::string(511, '[') + std::string(511, ']') + "}";
  CHECK(reason_for_contents(dir, at_limit).empty());
  CHECK_THAT(
      reason_for_contents(dir, R"({"message": "m", "x": )" + std::string(512, '[') + std::string(512, ']') + "}"),
      Catch::Contains("nested deeper"));
}

TEST_CASE("a parent copying a deeply nested child file warns and survives", "[hostile]") {
  TempDir dir;
  const auto child_file = dir.file("child.json");
  write_file(child_file, R"({"message": {"message": "m", "extraInfo": {"timestamp": "1", "x": )" +
                             std::string(200000, '[') + std::string(200000, ']') + "}}}");
  auto parent = run({ELASTIC_TEST_RECORD_WORKER, "child_failure", child_file, "1"},
                    RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("parent.json")}}});
  // The child's file is unusable, so the parent's own failure is what is recorded.
  CHECK(parent.exitcode == 1);
  CHECK_THAT(parent.err, Catch::Contains("nested deeper"));
  auto copy = ProcessFailure::read_or_describe(0, 1, 1, dir.file("parent.json"));
  CHECK(copy.error_file == dir.file("parent.json"));

  // dump_error_file itself, given the hostile file directly.
  elastic::testing::ScopedEnv env("TORCHELASTIC_ERROR_FILE", dir.file("copy.json"));
  elastic::ErrorHandler handler;
  CHECK_NOTHROW(handler.dump_error_file(child_file, 3));
  CHECK_FALSE(std::filesystem::exists(dir.file("copy.json")));
}

TEST_CASE("millions of values are refused, bounding the parser's memory", "[hostile]") {
  TempDir dir;
  std::string many = R"({"message": "m", "x": [)";
  for (std::size_t i = 0; i < ErrorFileLimits::max_values + 10; ++i) many += "{},";
  many += "{}]}";
  CHECK_THAT(reason_for_contents(dir, many), Catch::Contains("more than 1048576 values"));
  auto reader = run({ELASTIC_TEST_FAILURE_READER, "1", dir.file("error.json")});
  REQUIRE(reader.exitcode == 0);
  CHECK_THAT(reader.out, Catch::Contains("more than 1048576 values"));
  CHECK(maxrss_kib(reader.err) < 256 * 1024);
  // Commas inside strings are text.
  CHECK(reason_for_contents(dir, R"({"message": ")" + std::string(3u << 20, ',') + R"(", "timestamp": 1})").empty());
}

TEST_CASE("a reason quoting a huge truncated string stays short", "[hostile]") {
  TempDir dir;
  const std::string reason = reason_for_contents(dir, R"({"message": ")" + std::string(10u << 20, 'a'));
  CHECK_THAT(reason, Catch::Contains("not valid JSON"));
  CHECK(reason.size() <= ErrorFileLimits::max_reason_bytes + 3);
  auto described = ProcessFailure::read_or_describe(0, 9, 1, dir.file("error.json"));
  CHECK(described.message.get<std::string>().size() < 2 * ErrorFileLimits::max_reason_bytes);
}

TEST_CASE("a number, array, object or null where a string belongs is rejected", "[hostile]") {
  TempDir dir;
  for (const std::string value : {"5", "[\"a\"]", "{}", "null", "true"}) {
    INFO(value);
    if (value != "{}")
      CHECK_THAT(reason_for_contents(dir, R"({"message": )" + value + "}"), Catch::Contains("message"));
    CHECK_THAT(
        reason_for_contents(
            dir, R"({"message": {"message": "m", "extraInfo": {"timestamp": "1", "py_callstack": )" + value + "}}}"),
        Catch::Contains("py_callstack"));
    CHECK_THAT(
        reason_for_contents(dir, R"({"message": {"message": )" + value + R"(, "extraInfo": {"timestamp": "1"}}})"),
        Catch::Contains("message.message"));
    CHECK_THAT(reason_for_contents(dir, R"({"message": {"message": "m", "extraInfo": )" + value + "}}"),
               Catch::Contains("extraInfo"));
  }
  // Each rejected file still gives a summary line naming the file.
  write_file(dir.file("error.json"), R"({"message": 5})");
  auto reader = run({ELASTIC_TEST_FAILURE_READER, "1", dir.file("error.json")});
  REQUIRE(reader.exitcode == 0);
  CHECK_THAT(reader.out, Catch::Contains("error_file: " + dir.file("error.json")));
}

TEST_CASE("timestamps out of range or negative never break reading or the summary", "[hostile]") {
  TempDir dir;
  auto read = [&](const std::string& stamp) {
    write_file(dir.file("error.json"), R"({"message": "m", "timestamp": )" + stamp + "}");
    return ProcessFailure(0, 1, 1, dir.file("error.json"));
  };
  CHECK(read("-1").timestamp == -1);
  CHECK(read("-9223372036854775808").timestamp == INT64_MIN);
  CHECK(read("9223372036854775807").timestamp == INT64_MAX);
  CHECK(read("-1").timestamp_isoformat().size() == 19);
  CHECK(read("-9223372036854775808").timestamp_isoformat() == "-9223372036854775808");
  CHECK(read("9223372036854775807").timestamp_isoformat() == "9223372036854775807");
  for (const std::string stamp : {"1e300", "-1e300", "9223372036854775808", "\"9223372036854775808\"",
                                  "18446744073709551615", "{}", "\"\"", "\"1 2\""}) {
    INFO(stamp);
    write_file(dir.file("error.json"), R"({"message": "m", "timestamp": )" + stamp + "}");
    CHECK_THAT(reason_for(dir.file("error.json")), Catch::Contains("timestamp"));
  }
  // Extreme timestamps in a summary, and as the root-cause ordering key.
  write_file(dir.file("min.json"), R"({"message": "lowest", "timestamp": -9223372036854775808})");
  write_file(dir.file("max.json"), R"({"message": "highest", "timestamp": 9223372036854775807})");
  auto reader = run({ELASTIC_TEST_FAILURE_READER, "1", dir.file("max.json"), dir.file("min.json")});
  REQUIRE(reader.exitcode == 0);
  CHECK_THAT(reader.out, Catch::Contains("time      : -9223372036854775808"));
  CHECK_THAT(reader.out, Catch::Contains("time      : 9223372036854775807"));
  CHECK_THAT(reader.out,
             Catch::Contains("Root Cause (first observed failure):\n[1]:\n  time      : -9223372036854775808"));
}

TEST_CASE("special files at the path are treated as no file and never block", "[hostile]") {
  TempDir dir;
  // A FIFO with a writer that keeps it open: a blocking read would wait forever.
  REQUIRE(::mkfifo(dir.file("fifo").c_str(), 0600) == 0);
  int fifo_reader = ::open(dir.file("fifo").c_str(), O_RDONLY | O_NONBLOCK);
  int fifo_writer = ::open(dir.file("fifo").c_str(), O_WRONLY | O_NONBLOCK);
  REQUIRE(fifo_writer >= 0);
  REQUIRE(::write(fifo_writer, "{\"message\": \"in the pipe\"}", 26) == 26);
  // A listening UNIX socket.
  int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string socket_path = dir.file("sock");
  REQUIRE(socket_path.size() < sizeof(address.sun_path));
  std::copy(socket_path.begin(), socket_path.end(), address.sun_path);
  REQUIRE(::bind(sock, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
  REQUIRE(::listen(sock, 1) == 0);
  std::filesystem::create_symlink("/dev/zero", dir.file("zero_link"));
  std::filesystem::create_symlink(dir.file("loop_b"), dir.file("loop_a"));
  std::filesystem::create_symlink(dir.file("loop_a"), dir.file("loop_b"));
  std::filesystem::create_symlink(dir.file("nothing"), dir.file("dangling"));
  write_file(dir.file("plain"), "{}");
  for (const std::string& path :
       {dir.file("fifo"), socket_path, dir.file("zero_link"), std::string("/dev/zero"), std::string("/dev/urandom"),
        std::string("/dev/null"), dir.file("loop_a"), dir.file("dangling"), dir.file("plain/below"),
        dir.path().string(), std::string(PATH_MAX + 10, 'x'), std::string("/") + std::string(NAME_MAX + 1, 'n')}) {
    INFO(path.substr(0, 200));
    ProcessFailure failure(0, 5, -9, path);
    CHECK(failure.error_file == "<N/A>");
    CHECK(failure.message == "Signal 9 (SIGKILL) received by PID 5");
  }
  // The pipe's data was not consumed.
  char buffer[64];
  CHECK(::read(fifo_reader, buffer, sizeof(buffer)) == 26);
  ::close(fifo_writer);
  ::close(fifo_reader);
  ::close(sock);
}

TEST_CASE("a file rewritten in place while it is read gives a whole record or a clear error", "[hostile]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  const std::string record = R"({"message": ")" + std::string(1 << 16, 'w') + R"(", "timestamp": 7})";
  write_file(path, record);
  std::atomic<bool> stop{false};
  // A careless writer: truncates and rewrites in small pieces, never atomically.
  std::thread writer([&] {
    while (!stop) {
      int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC);
      if (fd < 0) continue;
      for (std::size_t at = 0; at < record.size(); at += 4096)
        if (::write(fd, record.data() + at, std::min<std::size_t>(4096, record.size() - at)) < 0) break;
      ::close(fd);
    }
  });
  int whole = 0, rejected = 0;
  for (int i = 0; i < 2000; ++i) {
    auto failure = ProcessFailure::read_or_describe(0, 1, 1, path);
    REQUIRE(failure.error_file == path);
    if (failure.timestamp == 7 && failure.message == record.substr(13, 1 << 16)) {
      ++whole;
    } else {
      ++rejected;
      CHECK_THAT(failure.message.get<std::string>(), Catch::Contains("error file unusable"));
    }
  }
  stop = true;
  writer.join();
  INFO("whole " << whole << ", rejected " << rejected);
  CHECK(whole + rejected == 2000);
}

TEST_CASE("a file that keeps growing while it is read is cut at the limit", "[hostile]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, "");
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    int fd = ::open(path.c_str(), O_WRONLY | O_APPEND);
    const std::string chunk(1 << 16, ' ');
    while (!stop && ::write(fd, chunk.data(), chunk.size()) > 0) {
      if (::lseek(fd, 0, SEEK_END) > (off_t(256) << 20)) break;  // never fill the disk
    }
    ::close(fd);
  });
  // A small limit makes the growth outrun it; each read ends, bounded.
  for (int i = 0; i < 50; ++i) {
    auto read = detail::read_regular_file(path, 1 << 20);
    if (read.status == detail::ReadResult::Status::ok) {
      CHECK(read.data.size() <= std::size_t(1) << 20);
    } else {
      CHECK(read.data.empty());
      CHECK_THAT(read.reason, Catch::Contains("limit"));
    }
  }
  stop = true;
  writer.join();
}

TEST_CASE("a file deleted and recreated around the read is whole or absent", "[hostile]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  const std::string record = R"({"message": "gone and back", "timestamp": 3})";
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    while (!stop) {
      detail::write_file_atomically(path, record);
      ::unlink(path.c_str());
    }
  });
  int present = 0, absent = 0;
  for (int i = 0; i < 5000; ++i) {
    ProcessFailure failure(0, 1, 1, path);  // must never throw here
    if (failure.error_file == path) {
      ++present;
      CHECK(failure.message == "gone and back");
    } else {
      ++absent;
      CHECK(failure.error_file == "<N/A>");
    }
  }
  stop = true;
  churn.join();
  INFO("present " << present << ", absent " << absent);
  CHECK(present + absent == 5000);
}

TEST_CASE("the summary lists every rank, an unusable file with its path and reason", "[hostile]") {
  TempDir dir;
  write_file(dir.file("good.json"), R"({"message": "real failure", "timestamp": 100})");
  write_file(dir.file("truncated.json"), R"({"message": {"message": "x", "extra)");
  write_file(dir.file("binary.json"), std::string("\x7f"
                                                  "ELF\x02\x01\x01\0\0\xff",
                                                  10));
  write_file(dir.file("deep.json"), std::string(100000, '['));
  std::filesystem::create_directory(dir.file("dir.json"));
  auto reader = run({ELASTIC_TEST_FAILURE_READER, "-6", dir.file("good.json"), dir.file("truncated.json"),
                     dir.file("binary.json"), dir.file("deep.json"), dir.file("dir.json"), dir.file("absent.json")});
  REQUIRE(reader.exitcode == 0);
  const std::string& summary = reader.out;
  CHECK_THAT(summary, Catch::Contains("real failure"));
  for (const char* name : {"truncated.json", "binary.json", "deep.json"})
    CHECK_THAT(summary, Catch::Contains("error_file: " + dir.file(name)));
  CHECK_THAT(summary, Catch::Contains("error file unusable: not valid JSON"));
  CHECK_THAT(summary, Catch::Contains("error file unusable: JSON nested deeper than 512 levels"));
  for (int rank = 0; rank < 6; ++rank) CHECK_THAT(summary, Catch::Contains("rank      : " + std::to_string(rank)));
  // The binary file's bytes come out escaped, so the summary is plain text.
  for (unsigned char c : summary) REQUIRE((c == '\n' || (c >= 0x20 && c < 0x7f)));
}

TEST_CASE("the pre-parse scan agrees with the parser on nesting", "[hostile]") {
  CHECK(detail::json_depth(R"({"a": [1, {"b": "[[[{{{"}], "c": "\"[{"})", 100) == 3);
  CHECK(detail::json_depth(R"("\\" [[)", 100) == 2);
  CHECK(detail::json_depth(std::string(1000, '['), 10) == 11);  // stops just past the limit
  CHECK(detail::printable_reason("a\xff\n") == "a\\xff\\x0a");
  CHECK(detail::printable_reason(std::string(50, 'z'), 10) == std::string(10, 'z') + "...");
}

TEST_CASE("a 60 MB error file is summarized with bounded memory", "[hostile]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  {
    // A nested record whose trace is 60 MB: its first lines, then a flood of frames.
    std::string trace = "RuntimeError: the real cause\\n#0 0x1 in first_frame() (worker+0x1)";
    const std::string frame = "\\n#1 0x2 in some_frame_in_a_very_deep_recursion() (worker+0x2)";
    trace.reserve(60u << 20);
    while (trace.size() < (60u << 20)) trace += frame;
    write_file(path, R"({"message": {"message": "RuntimeError: the real cause", "extraInfo": {"py_callstack": ")" +
                         trace + R"(", "timestamp": "1700000000"}}})");
  }
  // A separate process, so its peak memory is the reader's alone.
  auto reader = run({ELASTIC_TEST_FAILURE_READER, "1", path});
  REQUIRE(reader.exitcode == 0);
  CHECK_THAT(reader.out, Catch::Contains("traceback : RuntimeError: the real cause\n  #0 0x1 in first_frame()"));
  CHECK_THAT(reader.out, Catch::Contains("bytes cut)"));
  CHECK(reader.out.size() < 2 * ErrorFileLimits::max_string_bytes);
  // A sanitizer's shadow memory and quarantine add their own; the old reader took 528 MB.
  CHECK(maxrss_kib(reader.err) < (elastic::testing::under_sanitizer ? 320 : 96) * 1024);
}

TEST_CASE("cutting long strings never breaks an escape, a surrogate pair or a UTF-8 sequence", "[hostile]") {
  TempDir dir;
  const std::size_t limit = ErrorFileLimits::max_string_bytes;
  // Each unit placed so that the limit falls inside it, at every offset.
  for (const std::string& unit : {std::string("\\u00e9"), std::string("\\ud83d\\ude00"), std::string("\xe2\x82\xac"),
                                  std::string("\xf0\x9f\x98\x80"), std::string("\\n")}) {
    for (std::size_t shift = 0; shift < unit.size(); ++shift) {
      const std::string text = std::string(limit - shift - 1, 'a') + unit + std::string(1000, 'b');
      const auto path = dir.file("error.json");
      write_file(path, R"({"message": ")" + text + R"(", "timestamp": 1})");
      INFO("unit " << unit << ", shift " << shift);
      ProcessFailure failure(0, 1, 1, path);
      const std::string message = failure.message.get<std::string>();
      CHECK(message.size() < limit + 100);
      CHECK_THAT(message, Catch::EndsWith(" bytes cut)"));
    }
  }
}

TEST_CASE("what is cut from a long string is still checked", "[hostile]") {
  TempDir dir;
  const std::string head = R"({"message": ")" + std::string(ErrorFileLimits::max_string_bytes + 10, 'a');
  for (const std::string& bad : {std::string("\x01"), std::string("\\x"), std::string("\\u12G4"), std::string("\xff"),
                                 std::string("\xc3("), std::string("\x80")}) {
    INFO("bad bytes: " << bad);
    CHECK_THAT(reason_for_contents(dir, head + bad + R"(tail", "timestamp": 1})"), Catch::Contains("not valid JSON"));
  }
  CHECK_THAT(reason_for_contents(dir, head), Catch::Contains("not valid JSON"));
  CHECK(reason_for_contents(dir, head + R"(\"\\ tail", "timestamp": 1})").empty());
}
