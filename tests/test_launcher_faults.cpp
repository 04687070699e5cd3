// elastic-run under pressure and hostile input: workers that leave unusable error
// files, flood or close their output, hundreds of workers, few file descriptors,
// signals at every phase, user strings that a shell would interpret. The summary
// always comes out and nothing the job started outlives it.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <set>

#include "support/backends.hpp"
#include "support/launcher.hpp"

using namespace elastic::testing;
namespace fs = std::filesystem;

namespace {

RunOptions base_options() { return quiet_launch_options(); }

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Pids written by workers (and their children) as files named PREFIX* in `dir`.
std::vector<pid_t> recorded_pids(const TempDir& dir, const std::string& prefix) {
  std::vector<pid_t> pids;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && name.find(".tmp") == std::string::npos) {
      pid_t pid = read_pid(entry.path().string());
      if (pid > 0) pids.push_back(pid);
    }
  }
  return pids;
}

bool none_alive(const std::vector<pid_t>& pids) {
  for (pid_t pid : pids)
    if (alive(pid)) return false;
  return true;
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// A shell worker whose rank 1 leaves `contents` (a shell command writing
// $TORCHELASTIC_ERROR_FILE) and exits 3; the other ranks exit 0.
std::vector<std::string> rank1_writes(const std::string& command) {
  return {"/bin/sh", "-c", "if [ \"$RANK\" = 1 ]; then " + command + "; exit 3; fi"};
}

}  // namespace

TEST_CASE("hostile error files from workers: the summary names each rank and why its file is unusable") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  struct Case {
    const char* name;
    std::string command;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"truncated", "printf '{\"message\": {\"message\": \"x\", \"ext' > \"$TORCHELASTIC_ERROR_FILE\"",
       "error file unusable: not valid JSON"},
      {"invalid UTF-8", "printf '{\"message\": \"\\377\\376\"}' > \"$TORCHELASTIC_ERROR_FILE\"",
       "error file unusable: not valid JSON"},
      {"nested 100 000 deep", "head -c 100000 /dev/zero | tr '\\0' '[' > \"$TORCHELASTIC_ERROR_FILE\"",
       "error file unusable: JSON nested deeper than 512 levels"},
      {"a number for the message", "printf '{\"message\": 5}' > \"$TORCHELASTIC_ERROR_FILE\"",
       "error file unusable: \"message\" is neither a string nor an object"},
      {"1 GB", "truncate -s 1G \"$TORCHELASTIC_ERROR_FILE\"",
       "error file unusable: file is 1073741824 bytes, over the limit"},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    auto r = elastic_run(on_backend(backend, with({"--nproc-per-node=2"}, rank1_writes(c.command))), base_options());
    INFO(r.err);
    CHECK(r.exitcode == 1);
    CHECK_THAT(r.err, Catch::Contains("/bin/sh FAILED"));
    CHECK_THAT(r.err, Catch::Contains("rank      : 1 (local_rank: 1)"));
    CHECK_THAT(r.err, Catch::Contains("exitcode  : 3"));
    CHECK_THAT(r.err, Catch::Contains("attempt_0/1/error.json"));  // the raw path is kept
    CHECK_THAT(r.err, Catch::Contains(c.expect));
  }
  // Special files at the path read as no file at all, without blocking the launcher.
  for (const std::string command : {"mkfifo \"$TORCHELASTIC_ERROR_FILE\"", "mkdir \"$TORCHELASTIC_ERROR_FILE\"",
                                    "ln -s /dev/zero \"$TORCHELASTIC_ERROR_FILE\"",
                                    "ln -s \"$TORCHELASTIC_ERROR_FILE\" \"$TORCHELASTIC_ERROR_FILE\""}) {
    INFO(command);
    auto r = elastic_run(on_backend(backend, with({"--nproc-per-node=2"}, rank1_writes(command))), base_options());
    CHECK(r.exitcode == 1);
    CHECK_THAT(r.err, Catch::Contains("rank      : 1 (local_rank: 1)"));
    CHECK_THAT(r.err, Catch::Contains("error_file: <N/A>"));
  }
}

TEST_CASE("the launcher's own error file: an unusable root-cause file is reported, not copied") {
  TempDir dir;
  RunOptions options = base_options();
  options.set_env["TORCHELASTIC_ERROR_FILE"] = dir.file("launcher_error.json");
  auto r = elastic_run(with({"--nproc-per-node=2"},
                            rank1_writes("head -c 100000 /dev/zero | tr '\\0' '{' > \"$TORCHELASTIC_ERROR_FILE\"")),
                       options);
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("JSON nested deeper than 512 levels"));
  CHECK_THAT(r.err, Catch::Contains("rank      : 1 (local_rank: 1)"));
}

TEST_CASE("a stale error file from an earlier attempt is never reported for a later one") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  // Attempt 0: rank 1 records "attempt 0 failed" and fails. Attempt 1: it fails without a file.
  const std::string script =
      "if [ \"$RANK\" = 1 ]; then "
      "  if [ \"$TORCHELASTIC_RESTART_COUNT\" = 0 ]; then "
      "    printf '{\"message\": \"attempt 0 failed\", \"timestamp\": 1}' > \"$TORCHELASTIC_ERROR_FILE\"; "
      "  fi; exit 5; fi";
  auto r = elastic_run(on_backend(backend, {"--nproc-per-node=2", "--max-restarts=1", "/bin/sh", "-c", script}),
                       base_options());
  INFO(r.err);
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("exitcode  : 5"));
  CHECK_THAT(r.err, Catch::Contains("error_file: <N/A>"));
  CHECK(r.err.find("attempt 0 failed") == std::string::npos);
}

TEST_CASE("workers flooding their output, or closing it, do not stop the summary") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  // 4 workers x 16 MiB on stdout and stderr, teed to the console; rank 2 fails once
  // every worker has written all of it (a failure stops the others: what they had
  // not written yet would not count as lost).
  TempDir dir;
  const std::string script =
      "head -c 16777216 /dev/zero | tr '\\0' 'x'; head -c 16777216 /dev/zero >&2; touch \"$1/done.$RANK\"; "
      "if [ \"$RANK\" = 2 ]; then while [ $(ls \"$1\" | wc -l) -lt 4 ]; do sleep 0.05; done; exit 9; fi";
  auto flood =
      elastic_run(on_backend(backend, {"--nproc-per-node=4", "--tee=3", "/bin/sh", "-c", script, "sh", dir.path()}),
                  base_options().with_timeout(std::chrono::seconds(300)));
  CHECK(flood.exitcode == 1);
  CHECK(flood.out.size() >= std::size_t{4} * 16777216);
  CHECK_THAT(flood.err, Catch::Contains("exitcode  : 9"));
  CHECK_THAT(flood.err, Catch::Contains("rank      : 2 (local_rank: 2)"));

  // Workers that close stdout and stderr at once, then fail.
  auto closed = elastic_run(on_backend(backend, {"--nproc-per-node=3", "--tee=3", "/bin/sh", "-c",
                                                 "exec >&- 2>&-; sleep 0.2; if [ \"$RANK\" = 0 ]; then exit 4; fi"}),
                            base_options());
  CHECK(closed.exitcode == 1);
  CHECK_THAT(closed.err, Catch::Contains("exitcode  : 4"));
}

TEST_CASE("the launcher's stdout closed by its reader: the summary still reaches stderr") {
  TempDir dir;
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  ::close(pipe_fds[0]);  // like `elastic-run ... | head -1` after head exits
  const std::string err_file = dir.file("err");
  std::vector<std::string> args = {ELASTIC_RUN_BINARY,
                                   "--nproc-per-node=2",
                                   "--tee=3",
                                   "/bin/sh",
                                   "-c",
                                   "for i in 1 2 3 4 5; do echo line $i; done; if [ \"$RANK\" = 1 ]; then exit 6; fi"};
  ChildSetup setup;
  setup.out = pipe_fds[1];
  setup.err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const pid_t pid = start_child(args, make_environment(base_options()), setup);
  ::close(setup.err);
  ::close(pipe_fds[1]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  const std::string err = read_file(err_file);
  INFO(err);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(err, Catch::Contains("exitcode  : 6"));
}

TEST_CASE("256 workers") {
  auto ok = elastic_run({"--nproc-per-node=256", "/bin/sh", "-c", "exit 0"},
                        base_options().with_timeout(std::chrono::seconds(300)));
  INFO(ok.err);
  CHECK(ok.exitcode == 0);
  auto failed = elastic_run({"--nproc-per-node=256", "/bin/sh", "-c", "if [ \"$RANK\" = 255 ]; then exit 8; fi"},
                            base_options().with_timeout(std::chrono::seconds(300)));
  CHECK(failed.exitcode == 1);
  CHECK_THAT(failed.err, Catch::Contains("rank      : 255 (local_rank: 255)"));
  CHECK_THAT(failed.err, Catch::Contains("exitcode  : 8"));
}

TEST_CASE("few file descriptors: a clear error or a clean run, never a hang or a leak") {
  TempDir dir;
  for (int limit : {16, 32, 64}) {
    INFO("RLIMIT_NOFILE " << limit);
    // 24 teed workers need more descriptors than the lower limits allow.
    auto r = run({"/bin/sh", "-c", "ulimit -n " + std::to_string(limit) + " && exec \"$@\"", "sh", ELASTIC_RUN_BINARY,
                  "--nproc-per-node=24", "--tee=3", "/bin/sh", "-c",
                  "echo $$ > \"$0/w_${RANK}_$$\"; echo hello; sleep 0.2", dir.path().string()},
                 base_options());
    INFO(r.err);
    if (r.exitcode != 0) {
      CHECK(r.exitcode == 1);
      CHECK_THAT(r.err, Catch::Contains("Too many open files"));
    }
    // Whatever was started is gone.
    auto pids = recorded_pids(dir, "w_");
    CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
  }
}

TEST_CASE("signals while starting: the launcher ends and leaves no worker behind") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  // Sent right after the launcher starts, at a range of moments through its start.
  for (int delay_us : {0, 200, 1000, 3000, 10000, 30000}) {
    for (int sig : {SIGTERM, SIGINT}) {
      INFO("signal " << sig << " after " << delay_us << " us");
      TempDir dir;
      Background launcher(on_backend(backend, {"--nproc-per-node=8", "/bin/sh", "-c",
                                               "echo $$ > \"$0/w_$RANK\"; exec sleep 300", dir.path().string()}),
                          dir.file("out"), dir.file("err"), base_options());
      ::usleep(static_cast<useconds_t>(delay_us));
      launcher.signal(sig);
      const int code = launcher.wait();
      CHECK((code == 128 + sig || code == -sig));
      auto pids = recorded_pids(dir, "w_");
      CHECK(wait_until([&] { return none_alive(pids); }, std::chrono::seconds(10)));
    }
  }
}

TEST_CASE("signals while stopping: a second signal during the grace period ends it cleanly") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  // Rank 0 fails at once; rank 1 ignores SIGTERM, so the launcher waits out its grace period.
  const std::string script =
      "if [ \"$RANK\" = 0 ]; then sleep 0.3; exit 2; fi; trap '' TERM; "
      "echo $$ > \"$0/w_$RANK\"; while :; do sleep 1; done";
  Background launcher(
      on_backend(backend, {"--nproc-per-node=2", "--term-timeout=3", "/bin/sh", "-c", script, dir.path().string()}),
      dir.file("out"), dir.file("err"), base_options());
  REQUIRE(wait_until([&] { return file_exists(dir.file("w_1")); }));
  // Rank 1 is stopping once the launcher has logged that it sent SIGTERM.
  REQUIRE(wait_until([&] { return read_file(dir.file("err")).find("SIGTERM") != std::string::npos; }));
  launcher.signal(SIGINT);
  launcher.signal(SIGTERM);
  const int code = launcher.wait();
  INFO(launcher.err());
  CHECK(code != 1000);  // it ended
  CHECK(wait_until([&] { return none_alive(recorded_pids(dir, "w_")); }, std::chrono::seconds(10)));
}

TEST_CASE("user strings are never run through a shell") {
  TempDir dir;
  const std::string marker = dir.file("pwned");
  const std::string hostile = "; touch " + marker + " $(touch " + marker + ") `touch " + marker + "` | touch " + marker;
  // The entry point itself and its arguments, with shell syntax.
  auto r = elastic_run(
      {"--nproc-per-node=1", "/bin/sh", "-c", "printf '%s' \"$1\" > \"$0/arg\"", dir.path().string(), hostile},
      base_options());
  CHECK(r.exitcode == 0);
  CHECK(read_file(dir.file("arg")) == hostile);
  auto missing = elastic_run({"--nproc-per-node=1", "/bin/true " + hostile}, base_options());
  CHECK(missing.exitcode != 0);
  // The prefix template and role name are text, too.
  auto prefixed = elastic_run({"--nproc-per-node=1", "--tee=3", "--role", "$(touch " + marker + ")",
                               "--log-line-prefix-template", "`touch " + marker + "` ${role_name}:", "/bin/echo", "hi"},
                              base_options());
  CHECK(prefixed.exitcode == 0);
  CHECK_THAT(prefixed.out, Catch::Contains("`touch " + marker + "` $(touch " + marker + "):hi"));
  CHECK_FALSE(file_exists(marker));
}

TEST_CASE("environment values with newlines and '=' reach the workers intact") {
  TempDir dir;
  RunOptions options = base_options();
  const std::string value = "line one\nline=two\n\nKEY=VALUE\n=\n";
  options.set_env["ELASTIC_TEST_TRICKY"] = value;
  options.set_env["ELASTIC_TEST_EQUALS"] = "a=b=c==";
  const std::string script =
      "printf '%s' \"$ELASTIC_TEST_TRICKY\" > \"$0/tricky_$RANK\"; "
      "printf '%s' \"$ELASTIC_TEST_EQUALS\" > \"$0/equals_$RANK\"; "
      "printf '%s' \"${KEY-unset}\" > \"$0/key_$RANK\"";
  auto r = elastic_run({"--nproc-per-node=2", "/bin/sh", "-c", script, dir.path().string()}, options);
  CHECK(r.exitcode == 0);
  for (const char* rank : {"0", "1"}) {
    CHECK(read_file(dir.file(std::string("tricky_") + rank)) == value);
    CHECK(read_file(dir.file(std::string("equals_") + rank)) == "a=b=c==");
    CHECK(read_file(dir.file(std::string("key_") + rank)) == "unset");  // no variable smuggled in
  }
}

TEST_CASE("log directories are private and made without following planted symlinks") {
  TempDir dir;
  // A shared, sticky, world-writable directory like /tmp, where another user
  // (nobody) has planted symlinks to a directory of the victim's.
  const std::string shared = dir.file("shared");
  fs::create_directory(shared);
  fs::permissions(shared, fs::perms::all | fs::perms::sticky_bit);
  fs::create_directory(dir.file("victim"));
  for (const std::string name : {"none_", "none_XXXXXX", "torchelastic_", "attempt_0"}) {
    const std::string link = shared + "/" + name;
    fs::create_symlink(dir.file("victim"), link);
    REQUIRE(::lchown(link.c_str(), 65534, 65534) == 0);
  }
  RunOptions options = base_options();
  options.set_env["TMPDIR"] = shared;
  auto r = elastic_run({"--nproc-per-node=2", "--redirects=3", ELASTIC_TEST_RECORD_WORKER, "throw"}, options);
  INFO(r.err);
  CHECK(r.exitcode == 1);
  CHECK(fs::is_empty(dir.file("victim")));
  // Default log dir: a fresh directory under TMPDIR; everything below is private.
  std::vector<std::string> roots;
  for (const auto& entry : fs::directory_iterator(shared))
    if (!fs::is_symlink(entry.path())) roots.push_back(entry.path().string());
  REQUIRE(roots.size() == 1);
  CHECK(mode_of(roots[0]) == 0700);
  int files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(roots[0])) {
    INFO(entry.path());
    CHECK_FALSE(fs::is_symlink(entry.symlink_status()));
    CHECK(mode_of(entry.path().string()) == (entry.is_directory() ? 0700 : 0600));
    if (entry.is_regular_file()) ++files;
  }
  CHECK(files >= 5);  // stdout.log and stderr.log of each rank, error.json of the one that failed first
}

TEST_CASE("numbers out of range on the command line are usage errors") {
  for (const std::string value : {"1e300", "-5", "nan", "inf"}) {
    INFO(value);
    auto r = elastic_run({"--nproc-per-node=1", "--term-timeout=" + value, "/bin/true"}, base_options());
    CHECK(r.exitcode == 2);
    CHECK_THAT(r.err, Catch::Contains("--term-timeout"));
  }
}
