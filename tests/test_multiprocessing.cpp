// The multiprocessing API itself: Std parsing, logs specs, start_processes,
// wait, close, tee lines.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <elastic/multiprocessing.hpp>
#include <filesystem>
#include <string>
#include <thread>

#include "support/launcher.hpp"

using namespace elastic::testing;
namespace mp = elastic::multiprocessing;

namespace {

std::map<int, mp::Env> envs_for(int nprocs, const mp::Env& extra = {}) {
  std::map<int, mp::Env> envs;
  for (int r = 0; r < nprocs; ++r) {
    mp::Env env = {{"PATH", "/usr/bin:/bin"}, {"LOCAL_RANK", std::to_string(r)}};
    env.insert(extra.begin(), extra.end());
    envs[r] = env;
  }
  return envs;
}

std::map<int, std::vector<std::string>> same_args(int nprocs, const std::vector<std::string>& args) {
  std::map<int, std::vector<std::string>> result;
  for (int r = 0; r < nprocs; ++r) result[r] = args;
  return result;
}

}  // namespace

TEST_CASE("Std parses a value or a per-rank map") {
  CHECK(std::get<mp::Std>(mp::parse_std("0")) == mp::Std::NONE);
  CHECK(std::get<mp::Std>(mp::parse_std("3")) == mp::Std::ALL);
  auto per_rank = std::get<std::map<int, mp::Std>>(mp::parse_std("0:1,1:2"));
  CHECK(per_rank.at(0) == mp::Std::OUT);
  CHECK(per_rank.at(1) == mp::Std::ERR);
  for (const char* bad : {"4", "", "a", "0:", "0:1,", ":1", "0:1;1:2", "-1"}) {
    INFO(bad);
    CHECK_THROWS_AS(mp::parse_std(bad), std::invalid_argument);
  }
  auto map = mp::to_map(mp::parse_std("1:3"), 3);
  CHECK(map.at(0) == mp::Std::NONE);
  CHECK(map.at(1) == mp::Std::ALL);
  CHECK(map.at(2) == mp::Std::NONE);
  CHECK(mp::to_map(mp::Std::ERR, 2).at(1) == mp::Std::ERR);
}

TEST_CASE("start_processes: all succeed, logs where the logs spec says") {
  TempDir dir;
  mp::DefaultLogsSpecs specs(dir.file("logs"), mp::Std::ALL);
  auto context =
      mp::start_processes("test", "/bin/sh", same_args(2, {"-c", "echo out$LOCAL_RANK; echo err >&2"}),
                          envs_for(2, {{"TORCHELASTIC_RUN_ID", "job"}, {"TORCHELASTIC_RESTART_COUNT", "0"}}), specs);
  auto result = context->wait();
  REQUIRE(result);
  CHECK(!result->is_failed());
  CHECK(result->return_values == std::map<int, int>{{0, 0}, {1, 0}});
  CHECK(read_file(result->stdouts.at(1)) == "out1\n");
  CHECK(read_file(result->stderrs.at(0)) == "err\n");
  CHECK(result->stdouts.at(1).find("/job_") != std::string::npos);
  CHECK(result->stdouts.at(1).find("/attempt_0/1/stdout.log") != std::string::npos);
}

TEST_CASE("start_processes: a failure stops the others at once") {
  TempDir dir;
  mp::DefaultLogsSpecs specs(dir.file("logs"));
  auto context = mp::start_processes("test", "/bin/sh",
                                     same_args(3, {"-c", "if [ $LOCAL_RANK = 1 ]; then exit 3; fi; exec sleep 300"}),
                                     envs_for(3), specs);
  auto pids = context->pids();
  auto result = context->wait(std::chrono::seconds(60), std::chrono::seconds(5));
  REQUIRE(result);
  REQUIRE(result->failures.size() == 1);
  const auto& failure = result->failures.at(1);
  CHECK(failure.exitcode == 3);
  CHECK(failure.pid == pids.at(1));
  CHECK(failure.error_file == elastic::not_available);
  for (auto [rank, pid] : pids) CHECK(!alive(pid));
}

TEST_CASE("wait with a timeout returns nothing while workers run, close stops them") {
  TempDir dir;
  mp::DefaultLogsSpecs specs(dir.file("logs"));
  auto context = mp::start_processes("test", "sleep", same_args(2, {"300"}), envs_for(2), specs);
  CHECK(!context->wait(std::chrono::milliseconds(50)));
  auto pids = context->pids();
  for (auto [rank, pid] : pids) CHECK(alive(pid));
  context->close(SIGTERM, std::chrono::seconds(5));
  for (auto [rank, pid] : pids) CHECK(!alive(pid));
}

TEST_CASE("a custom LogsSpecs decides where the logs go") {
  TempDir dir;
  struct FlatLogs : mp::LogsSpecs {
    std::string root;
    explicit FlatLogs(std::string r) : mp::LogsSpecs(std::nullopt, mp::Std::OUT), root(std::move(r)) {}
    std::string root_log_dir() override { return root; }
    mp::LogsDest reify(const std::map<int, mp::Env>& envs) override {
      mp::LogsDest dest;
      for (const auto& [rank, env] : envs) {
        dest.stdouts[rank] = root + "/out-" + std::to_string(rank) + ".txt";
        dest.stderrs[rank] = "";
        dest.tee_stdouts[rank] = "";
        dest.tee_stderrs[rank] = "";
        dest.error_files[rank] = root + "/err-" + std::to_string(rank) + ".json";
      }
      return dest;
    }
  } specs(dir.path().string());
  auto context =
      mp::start_processes("test", "/bin/sh", same_args(2, {"-c", "echo $TORCHELASTIC_ERROR_FILE"}), envs_for(2), specs);
  auto result = context->wait();
  REQUIRE(result);
  CHECK(read_file(dir.file("out-1.txt")) == dir.file("err-1.json") + "\n");
}

TEST_CASE("LinePrefixer writes whole prefixed lines and completes the last one") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  {
    mp::LinePrefixer prefixer(fds[1], "[p]:");
    prefixer.feed("a");
    prefixer.feed("b\nc");
    prefixer.feed("\nd\ne");
    prefixer.flush();
  }
  // The console is written by a thread of its own: wait until it took everything.
  CHECK(mp::Console::of(fds[1]).flush(std::chrono::seconds(60)));
  ::close(fds[1]);
  std::string out;
  char buffer[256];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof(buffer))) > 0;) out.append(buffer, static_cast<std::size_t>(n));
  ::close(fds[0]);
  CHECK(out == "[p]:ab\n[p]:c\n[p]:d\n[p]:e\n");
}

TEST_CASE("LinePrefixer holds lines fed for a batch until commit, then hands them over at once") {
  int fds[2];
  REQUIRE(::pipe2(fds, O_NONBLOCK) == 0);
  {
    mp::LinePrefixer prefixer(fds[1], "[p]:");
    prefixer.feed("a\nb", false);
    prefixer.feed("\nc\n", false);
    // Nothing handed over yet: the console has nothing queued, the pipe is empty.
    CHECK(mp::Console::of(fds[1]).flush(std::chrono::seconds(60)));
    char byte;
    CHECK(::read(fds[0], &byte, 1) == -1);
    CHECK(errno == EAGAIN);
    prefixer.commit();
    prefixer.flush();
  }
  CHECK(mp::Console::of(fds[1]).flush(std::chrono::seconds(60)));
  std::string out(64, '\0');
  const ssize_t n = ::read(fds[0], out.data(), out.size());
  REQUIRE(n > 0);
  out.resize(static_cast<std::size_t>(n));
  CHECK(out == "[p]:a\n[p]:b\n[p]:c\n");
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("Console: chunks of two ranks handed over while a slow reader drains arrive whole, in order") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::string out;
  // The reader takes small bites with pauses, so the console thread finds
  // several chunks queued at a time (written together) and a full pipe.
  std::thread reader([&] {
    char buffer[1024];
    for (ssize_t n; (n = ::read(fds[0], buffer, sizeof(buffer))) > 0;) {
      out.append(buffer, static_cast<std::size_t>(n));
      if (out.size() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  constexpr int lines = 20000;
  {
    mp::LinePrefixer rank0(fds[1], "[0]:"), rank1(fds[1], "[1]:");
    std::string text0, text1;
    for (int i = 0; i < lines; ++i) {
      text0 += "zero " + std::to_string(i) + "\n";
      text1 += "one " + std::to_string(i) + "\n";
    }
    // Pieces of odd sizes, so lines are split between feeds; a commit every few feeds.
    for (std::size_t at = 0, piece = 0; at < text0.size(); at += 777, ++piece) {
      rank0.feed(std::string_view(text0).substr(at, 777), false);
      if (at < text1.size()) rank1.feed(std::string_view(text1).substr(at, 777), piece % 3 == 0);
      if (piece % 5 == 0) rank0.commit();
    }
    rank0.flush();
    rank1.flush();
  }
  CHECK(mp::Console::of(fds[1]).flush(std::chrono::seconds(60)));
  ::close(fds[1]);
  reader.join();
  ::close(fds[0]);
  // Every line is whole and of one rank; each rank's lines come in order, none lost.
  int next0 = 0, next1 = 0;
  std::size_t bad = 0;
  for (std::size_t start = 0; start < out.size();) {
    std::size_t end = out.find('\n', start);
    REQUIRE(end != std::string::npos);
    const std::string line = out.substr(start, end - start);
    if (line == "[0]:zero " + std::to_string(next0))
      ++next0;
    else if (line == "[1]:one " + std::to_string(next1))
      ++next1;
    else
      ++bad;
    start = end + 1;
  }
  CHECK(bad == 0);
  CHECK(next0 == lines);
  CHECK(next1 == lines);
}
