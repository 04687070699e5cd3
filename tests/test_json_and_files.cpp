// The pieces under the handler: Python-style JSON bytes and atomic, bounded file I/O.
#include <atomic>
#include <catch2/catch.hpp>
#include <elastic/errors.hpp>
#include <filesystem>
#include <thread>

#include "support/subprocess.hpp"

using elastic::testing::read_file;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::TempDir;

namespace detail = elastic::errors::detail;

TEST_CASE("JSON is written with Python's separators and ensure_ascii escapes", "[json]") {
  nlohmann::ordered_json data;
  data["b"] = "caf\xc3\xa9 \xf0\x9f\x98\x80 tab\t nl\n ctl\x01 del\x7f slash/ quote\" back\\";
  data["a"] = {1, 2.5, true, nullptr};
  data["c"] = nlohmann::ordered_json::object();
  CHECK(detail::python_json_dumps(data) ==
        R"({"b": "caf\u00e9 \ud83d\ude00 tab\t nl\n ctl\u0001 del\u007f slash/ quote\" back\\", )"
        R"("a": [1, 2.5, true, null], "c": {}})");
  // Invalid UTF-8 never throws: it becomes U+FFFD.
  CHECK(detail::python_json_dumps(nlohmann::json("bad \xff")) == R"("bad \ufffd")");
}

TEST_CASE("atomic write creates directories and leaves no temporary files", "[files]") {
  TempDir dir;
  const auto path = dir.file("a/b/c/error.json");
  CHECK(detail::write_file_atomically(path, "one").empty());
  CHECK(detail::write_file_atomically(path, "two").empty());
  CHECK(read_file(path) == "two");
  int entries = 0;
  for (auto& entry : std::filesystem::directory_iterator(dir.file("a/b/c"))) {
    (void)entry;
    ++entries;
  }
  CHECK(entries == 1);
}

TEST_CASE("a concurrent reader sees a whole file or none, never a part", "[files]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  std::string big_a = "{\"message\": \"" + std::string(1 << 20, 'a') + "\", \"timestamp\": 1}";
  std::string big_b = "{\"message\": \"" + std::string(1 << 19, 'b') + "\", \"timestamp\": 2}";
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 0; i < 200; ++i) detail::write_file_atomically(path, i % 2 ? big_a : big_b);
    done = true;
  });
  int reads = 0, partial = 0;
  while (!done) {
    auto result = detail::read_regular_file(path, 8u << 20);
    if (result.status != detail::ReadResult::Status::ok) continue;
    ++reads;
    if (result.data != big_a && result.data != big_b) ++partial;
  }
  writer.join();
  CHECK(partial == 0);
  INFO("whole reads: " << reads);
  CHECK(detail::read_regular_file(path, 8u << 20).status == detail::ReadResult::Status::ok);
}

TEST_CASE("an unwritable error file path is a warning, the original failure stands", "[files]") {
  TempDir dir;
  elastic::testing::write_file(dir.file("plain_file"), "x");
  // A path under a regular file cannot be created, whatever the permissions.
  const std::string path = dir.file("plain_file/sub/error.json");
  CHECK_FALSE(detail::write_file_atomically(path, "{}").empty());
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "throw"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}}});
  CHECK(child.exitcode == 1);
  CHECK_THAT(child.err, Catch::Contains("Unable to write error to file " + path));
  CHECK_THAT(child.err, Catch::Contains("SentinelError: foobar"));
  // A directory standing where the file should be.
  std::filesystem::create_directory(dir.file("is_a_dir"));
  auto second =
      run({ELASTIC_TEST_RECORD_WORKER, "throw"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("is_a_dir")}}});
  CHECK(second.exitcode == 1);
  CHECK_THAT(second.err, Catch::Contains("Unable to write error to file"));
}

TEST_CASE("reads are bounded", "[files]") {
  TempDir dir;
  elastic::testing::write_file(dir.file("big"), std::string(4096, 'x'));
  auto result = detail::read_regular_file(dir.file("big"), 1024);
  CHECK(result.status == detail::ReadResult::Status::error);
  CHECK_THAT(result.reason, Catch::Contains("over the limit"));
  CHECK(result.data.empty());
}
