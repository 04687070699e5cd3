// The writer under faults: whatever stops the error file from being written, the
// worker still exits with its own failure and says why the file is missing; a
// file that is written is whole, private to its owner, and never written through
// a symlink.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <climits>
#include <elastic/errors.hpp>
#include <filesystem>
#include <thread>
#include <vector>

#include "support/skip.hpp"
#include "support/subprocess.hpp"
#include "support/tmpfs.hpp"

using elastic::ProcessFailure;
using elastic::testing::read_file;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::RunResult;
using elastic::testing::TempDir;
using elastic::testing::write_file;
using elastic::testing::ChildSetup;
using elastic::testing::ScopedTmpfs;
using elastic::testing::start_child;

namespace fs = std::filesystem;

// ThreadSanitizer's runtime writes a file of its own at start, so a program
// built with it cannot even start under `ulimit -f 0`.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ELASTIC_TEST_UNDER_TSAN 1
#endif
#endif

namespace {

constexpr const char* worker = ELASTIC_TEST_RECORD_WORKER;

RunResult throw_with_error_file(const std::string& path) {
  return run({worker, "throw"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}, {"ELASTIC_LOG_LEVEL", "warning"}}});
}

// The worker failed its own way (exit 1, its error on stderr), and told why no file.
void check_original_failure_kept(const RunResult& child, const std::string& why) {
  CHECK(child.exitcode == 1);
  CHECK_THAT(child.err, Catch::Contains("SentinelError: foobar"));
  CHECK_THAT(child.err, Catch::Contains("Unable to write error to file"));
  CHECK_THAT(child.err, Catch::Contains(why));
}

std::size_t entries_in(const std::string& dir) {
  std::size_t count = 0;
  for (auto& entry : fs::directory_iterator(dir)) {
    (void)entry;
    ++count;
  }
  return count;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("a missing error-file directory is created, private to its owner", "[write_faults]") {
  TempDir dir;
  const auto path = dir.file("attempt_0/rank_3/error.json");
  auto child = throw_with_error_file(path);
  CHECK(child.exitcode == 1);
  REQUIRE(fs::exists(path));
  CHECK(mode_of(dir.file("attempt_0")) == 0700);
  CHECK(mode_of(dir.file("attempt_0/rank_3")) == 0700);
  CHECK(mode_of(path) == 0600);
  CHECK(ProcessFailure(3, child.pid, 1, path).message["message"] == "(anonymous namespace)::SentinelError: foobar");
}

TEST_CASE("a directory the worker may not write to", "[write_faults]") {
  TempDir dir;
  // Tests run as root, who may write anywhere: the worker runs as nobody instead.
  fs::permissions(dir.path(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  fs::create_directory(dir.file("readonly"));
  fs::permissions(dir.file("readonly"), fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                                            fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  const auto path = dir.file("readonly/error.json");
  if (::geteuid() == 0) {
    auto child = run({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", worker, "throw"},
                     RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}, {"ELASTIC_LOG_LEVEL", "warning"}}});
    INFO(child.err);
    check_original_failure_kept(child, "Permission denied");
    // Nor may it create a missing directory there.
    auto nested = run({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", worker, "throw"},
                      RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("readonly/sub/error.json")},
                                  {"ELASTIC_LOG_LEVEL", "warning"}}});
    check_original_failure_kept(nested, "cannot create directory");
  } else {
    check_original_failure_kept(throw_with_error_file(path), "Permission denied");
  }
  CHECK(entries_in(dir.file("readonly")) == 0);
}

TEST_CASE("a read-only file system", "[write_faults]") {
  TempDir dir;
  fs::create_directory(dir.file("ro"));
  ScopedTmpfs ro(dir.file("ro"), "ro,size=64k");
  if (!ro.mounted()) {
    ELASTIC_SKIP("cannot mount a tmpfs here (" + ro.error() + "); the read-only directory case covers EACCES");
  }
  check_original_failure_kept(throw_with_error_file(dir.file("ro/error.json")), "Read-only file system");
  check_original_failure_kept(throw_with_error_file(dir.file("ro/sub/error.json")), "Read-only file system");
}

TEST_CASE("a full disk", "[write_faults]") {
  TempDir dir;
  fs::create_directory(dir.file("small"));
  ScopedTmpfs small(dir.file("small"), "size=16k");
  if (!small.mounted()) {
    ELASTIC_SKIP("cannot mount a tmpfs here (" + small.error() + "); the RLIMIT_FSIZE case covers a failing write");
  }
  // Fill it up, then fail a worker there.
  {
    int fd = ::open(dir.file("small/filler").c_str(), O_WRONLY | O_CREAT, 0600);
    REQUIRE(fd >= 0);
    const std::string block(4096, 'f');
    while (::write(fd, block.data(), block.size()) > 0) {
    }
    CHECK(errno == ENOSPC);
    ::close(fd);
  }
  check_original_failure_kept(throw_with_error_file(dir.file("small/error.json")), "No space left on device");
  // No temporary is left behind to fill the disk further.
  CHECK(entries_in(dir.file("small")) == 1);
}

TEST_CASE("a file size limit: EFBIG, not death by SIGXFSZ", "[write_faults]") {
  TempDir dir;
  const auto path = dir.file("error.json");
#ifdef ELASTIC_TEST_UNDER_TSAN
  ELASTIC_SKIP("ThreadSanitizer cannot start under ulimit -f 0; the other builds run this case");
#endif
  // ulimit -f 0 makes any write to a regular file exceed RLIMIT_FSIZE.
  auto child = run({"/bin/sh", "-c", "ulimit -f 0 && exec \"$0\" throw", worker},
                   RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}, {"ELASTIC_LOG_LEVEL", "warning"}}});
  check_original_failure_kept(child, "File too large");
  CHECK_FALSE(fs::exists(path));
  CHECK(entries_in(dir.path().string()) == 0);
  // A program's own SIGXFSZ handler is left alone, and the disposition restored.
  struct sigaction current {};
  REQUIRE(::sigaction(SIGXFSZ, nullptr, &current) == 0);
  CHECK(current.sa_handler == SIG_DFL);
}

TEST_CASE("an error-file path that is too long", "[write_faults]") {
  TempDir dir;
  // Longer than PATH_MAX in total.
  std::string deep = dir.path().string();
  while (deep.size() <= PATH_MAX) deep += "/" + std::string(200, 'd');
  check_original_failure_kept(throw_with_error_file(deep + "/error.json"), "File name too long");
  // One component longer than NAME_MAX.
  check_original_failure_kept(throw_with_error_file(dir.file(std::string(NAME_MAX + 1, 'n'))), "File name too long");
  // A name that fits NAME_MAX exactly is written: its temporary's name must fit too.
  const auto longest = dir.file(std::string(NAME_MAX, 'n'));
  auto child = throw_with_error_file(longest);
  CHECK(child.exitcode == 1);
  CHECK(child.err.find("Unable to write") == std::string::npos);
  CHECK(fs::exists(longest));
}

TEST_CASE("a path ending in a slash names no file", "[write_faults]") {
  TempDir dir;
  check_original_failure_kept(throw_with_error_file(dir.file("sub/")), "names a directory");
}

TEST_CASE("a closed stderr pipe does not turn the failure into SIGPIPE", "[write_faults]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  ::close(pipe_fds[0]);  // nobody will ever read the worker's stderr
  ChildSetup setup;
  setup.err = pipe_fds[1];
  const pid_t pid = start_child({worker, "throw"}, {"TORCHELASTIC_ERROR_FILE=" + path}, setup);
  ::close(pipe_fds[1]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK_FALSE(WIFSIGNALED(status));
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK(ProcessFailure(0, pid, 1, path).message["message"] == "(anonymous namespace)::SentinelError: foobar");
}

TEST_CASE("two processes given the same error file leave one whole record", "[write_faults]") {
  TempDir dir;
  const auto path = dir.file("shared.json");
  std::vector<std::thread> threads;
  std::vector<RunResult> results(16);
  for (std::size_t i = 0; i < results.size(); ++i)
    threads.emplace_back([&, i] {
      results[i] = run({worker, i % 2 ? "throw" : "nested"},
                       RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}, {"ELASTIC_LOG_LEVEL", "warning"}}});
    });
  for (auto& thread : threads) thread.join();
  for (auto& result : results) CHECK(result.exitcode == 1);
  ProcessFailure failure(0, 1, 1, path);  // parses: whole, not interleaved
  const std::string message = failure.message["message"];
  CHECK((message == "(anonymous namespace)::SentinelError: foobar" ||
         message == "std::runtime_error: optimizer setup failed"));
  CHECK(entries_in(dir.path().string()) == 1);  // no temporaries left
}

TEST_CASE("a stale file from an earlier attempt is replaced by the new record", "[write_faults]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  write_file(path, R"({"message": "attempt 0 failed", "timestamp": 1})");
  auto child = throw_with_error_file(path);
  CHECK(child.exitcode == 1);
  ProcessFailure failure(0, child.pid, 1, path);
  CHECK(failure.message["message"] == "(anonymous namespace)::SentinelError: foobar");
  CHECK(failure.timestamp > 1);
  // A stale file that is not even JSON is replaced as well.
  write_file(path, "\xff\xfe garbage");
  CHECK(throw_with_error_file(path).exitcode == 1);
  CHECK(ProcessFailure(0, 1, 1, path).message.is_object());
}

TEST_CASE("a symlink planted at the error-file path is replaced, not followed", "[write_faults]") {
  TempDir dir;
  const auto victim = dir.file("victim");
  write_file(victim, "precious");
  const auto path = dir.file("error.json");
  fs::create_symlink(victim, path);
  auto child = throw_with_error_file(path);
  CHECK(child.exitcode == 1);
  CHECK(read_file(victim) == "precious");
  CHECK_FALSE(fs::is_symlink(path));
  CHECK(mode_of(path) == 0600);
  CHECK(ProcessFailure(0, 1, 1, path).message.is_object());
  // A symlink to a missing file: the target is not created.
  const auto dangling_target = dir.file("created_elsewhere");
  fs::create_symlink(dangling_target, dir.file("dangling.json"));
  CHECK(throw_with_error_file(dir.file("dangling.json")).exitcode == 1);
  CHECK_FALSE(fs::exists(dangling_target));
}

TEST_CASE("an existing directory keeps its mode, a file is never group or world readable", "[write_faults]") {
  TempDir dir;
  fs::create_directory(dir.file("shared"));
  fs::permissions(dir.file("shared"), fs::perms::all);
  const mode_t old_umask = ::umask(0);  // even with no umask at all
  auto child = throw_with_error_file(dir.file("shared/error.json"));
  ::umask(old_umask);
  CHECK(child.exitcode == 1);
  CHECK(mode_of(dir.file("shared")) == 0777);
  CHECK(mode_of(dir.file("shared/error.json")) == 0600);
}

TEST_CASE("files planted at predictable temporary names do not stop the write", "[write_faults]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  // Every name a writer numbering its temporaries by pid and a counter would try.
  for (int n = 0; n < 2048; ++n)
    write_file(dir.file(".error.json.tmp." + std::to_string(::getpid()) + "." + std::to_string(n)), "planted");
  CHECK(elastic::errors::detail::write_file_atomically(path, "{\"message\": \"new\"}").empty());
  CHECK(read_file(path) == "{\"message\": \"new\"}");
  CHECK(mode_of(path) == 0600);
  CHECK(entries_in(dir.path().string()) == 2048 + 1);  // no temporary left behind
}

TEST_CASE("temporary names are random: two writers in one process never collide", "[write_faults]") {
  TempDir dir;
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t)
    writers.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        if (!elastic::errors::detail::write_file_atomically(dir.file("error.json"), "{}").empty()) ++failures;
    });
  for (auto& writer : writers) writer.join();
  CHECK(failures == 0);
  CHECK(entries_in(dir.path().string()) == 1);
}
