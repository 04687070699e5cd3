// Elastic jobs under the real elastic-run on loopback: --nnodes MIN:MAX over the
// c10d rendezvous, several launchers, a late joiner, a SIGKILLed launcher, worker
// failures with restarts, and the rendezvous errors (timeout, connection, closed).
// The first three cases are PyTorch's launcher suite's test_launch_elastic*.
#include <catch2/catch.hpp>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/elastic_scenarios.hpp"
#include "support/jobs.hpp"
#include "support/launcher.hpp"

using namespace elastic::testing;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> elastic_args(const std::string& nnodes, int port, const std::string& id,
                                      const std::string& conf, int nproc) {
  return {"--nnodes=" + nnodes,   "--nproc-per-node=" + std::to_string(nproc),
          "--rdzv-backend=c10d",  "--rdzv-endpoint=localhost:" + std::to_string(port),
          "--rdzv-id=" + id,      "--rdzv-conf=" + conf,
          "--monitor-interval=1", "--term-timeout=5"};
}

// The seed's own form: quotes inside the value (no shell between), on localhost:0.
const std::string seed_conf = "'join_timeout=5,last_call_timeout=1,timeout=5'";

}  // namespace

TEST_CASE("test_launch_elastic") {
  TempDir out;
  auto r = elastic_run(elastic_args("1:2", 0, "elastic", seed_conf, 4) +
                       std::vector<std::string>{"--max-restarts=0", ELASTIC_TEST_LAUNCH_WORKER, out.path().string()});
  INFO(r.out << r.err);
  REQUIRE(r.exitcode == 0);
  CHECK(files_in(out.path()) == std::set<std::string>{"0", "1", "2", "3"});
  for (int rank = 0; rank < 4; ++rank) {
    auto env = read_env_file(out.file(std::to_string(rank)));
    CHECK(env["WORLD_SIZE"] == "4");
    CHECK(env["LOCAL_RANK"] == std::to_string(rank));
    CHECK(env["GROUP_RANK"] == "0");
    CHECK(env["GROUP_WORLD_SIZE"] == "1");
    CHECK(env["TORCHELASTIC_RUN_ID"] == "elastic");
    CHECK(env["TORCHELASTIC_RESTART_COUNT"] == "0");
    CHECK(env["TORCHELASTIC_USE_AGENT_STORE"] == "True");
  }
}

TEST_CASE("test_launch_elastic_worker_raise_exception") {
  TempDir out;
  auto r = elastic_run(elastic_args("1:2", 0, "raise", seed_conf, 4) +
                       std::vector<std::string>{"--max-restarts=0", ELASTIC_TEST_LAUNCH_WORKER, out.path().string(),
                                                "--fail-rank", "1", "--sleep-ms", "60000"});
  INFO(r.out << r.err);
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("ChildFailedError") && Catch::Contains("rank      : 1 (local_rank: 1)"));
}

TEST_CASE("test_launch_elastic_multiple_agents") {
  TempDir out, logs;
  const int port = free_port();
  auto args = elastic_args("1:2", port, "multi", "join_timeout=60,last_call_timeout=30", 2) +
              std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, out.path().string()};
  Background a(args, logs.file("a.out"), logs.file("a.err"));
  Background b(args, logs.file("b.out"), logs.file("b.err"));
  const int code_a = a.wait(std::chrono::seconds(100)), code_b = b.wait(std::chrono::seconds(100));
  INFO(a.err() << "\n---\n" << b.err());
  REQUIRE(code_a == 0);
  REQUIRE(code_b == 0);
  REQUIRE(files_in(out.path()) == std::set<std::string>{"0", "1", "2", "3"});
  const auto port0 = read_env_file(out.file("0"))["MASTER_PORT"];
  for (int rank = 0; rank < 4; ++rank) {
    auto env = read_env_file(out.file(std::to_string(rank)));
    CHECK(env["WORLD_SIZE"] == "4");
    CHECK(env["GROUP_WORLD_SIZE"] == "2");
    CHECK(env["GROUP_RANK"] == std::to_string(rank / 2));
    CHECK(env["LOCAL_RANK"] == std::to_string(rank % 2));
    CHECK(env["MASTER_PORT"] == port0);
    CHECK(env["TORCHELASTIC_RESTART_COUNT"] == "0");
  }
  CHECK(read_env_file(out.file("0"))["TORCHELASTIC_RUN_ID"] == "multi");
}

TEST_CASE("elastic: no complete round by join_timeout is RendezvousTimeoutError") {
  TempDir out;
  auto r = elastic_run(elastic_args("2:2", free_port(), "lonely", "join_timeout=3", 1) +
                       std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, out.path().string()});
  INFO(r.err);
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("RendezvousTimeoutError"));
  CHECK(files_in(out.path()).empty());  // no worker started
}

TEST_CASE("elastic: no store host is RendezvousConnectionError") {
  TempDir out;
  auto r = elastic_run(elastic_args("1:2", free_port(), "nohost", "is_host=0,read_timeout=3", 1) +
                       std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, out.path().string()});
  INFO(r.err);
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("RendezvousConnectionError"));
  CHECK(files_in(out.path()).empty());
}

TEST_CASE("elastic: a finished job's id reused on the same store is RendezvousClosedError") {
  // A long job hosts the store; a short job on it ends (closing its rendezvous);
  // a new launcher with the short job's id is refused.
  TempDir host_out, out, logs;
  const int port = free_port();
  Background host(elastic_args("1:1", port, "long", "last_call_timeout=1", 1) + waiting_worker(host_out),
                  logs.file("host.out"), logs.file("host.err"));
  REQUIRE(wait_until([&] { return has_world(host_out, 1); }));
  auto client = elastic_args("1:1", port, "short", "is_host=0", 1) +
                std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, out.path().string()};
  auto first = elastic_run(client);
  INFO(first.err);
  CHECK(first.exitcode == 0);
  CHECK(files_in(out.path()) == std::set<std::string>{"0"});
  fs::remove(out.file("0"));
  auto again = elastic_run(client);
  INFO(again.err);
  CHECK(again.exitcode == 1);
  CHECK_THAT(again.err, Catch::Contains("RendezvousClosedError"));
  CHECK(files_in(out.path()).empty());
  write_file(host_out.file("stop"), "");
  CHECK(host.wait(std::chrono::seconds(60)) == 0);
}

TEST_CASE(
    "elastic: a late third launcher scales the job up, its SIGKILL scales it down at once, a fourth scales it up") {
  TempDir out, logs;
  const int port = free_port();
  auto args = elastic_args("1:3", port, "scale", "last_call_timeout=2,join_timeout=60", 2) + waiting_worker(out);
  Background a(args, logs.file("a.out"), logs.file("a.err"));
  Background b(args, logs.file("b.out"), logs.file("b.err"));
  INFO(a.err() << "\n---\n" << b.err());
  REQUIRE(wait_until([&] { return has_world(out, 4); }));
  {
    Background c(args, logs.file("c.out"), logs.file("c.err"));
    REQUIRE(wait_until([&] { return has_world(out, 6); }));  // membership change: a round of 6
    c.signal(SIGKILL);
    c.wait();
  }
  // The survivors see the lost launcher and form a round of 4 again.
  for (int rank = 0; rank < 4; ++rank) fs::remove(out.file("w4_r" + std::to_string(rank)));
  REQUIRE(wait_until([&] { return has_world(out, 4); }));
  // A fourth launcher, late: back to a round of 6.
  for (int rank = 0; rank < 6; ++rank) fs::remove(out.file("w6_r" + std::to_string(rank)));
  Background d(args, logs.file("d.out"), logs.file("d.err"));
  REQUIRE(wait_until([&] { return has_world(out, 6); }));
  write_file(out.file("stop"), "");
  CHECK(a.wait(std::chrono::seconds(60)) == 0);
  CHECK(b.wait(std::chrono::seconds(60)) == 0);
  CHECK(d.wait(std::chrono::seconds(60)) == 0);
  // Membership changes are not restarts.
  for (int rank = 0; rank < 4; ++rank)
    CHECK(read_env_file(out.file("w4_r" + std::to_string(rank)))["TORCHELASTIC_RESTART_COUNT"] == "0");
  CHECK(read_env_file(out.file("w6_r5"))["GROUP_WORLD_SIZE"] == "3");
}

TEST_CASE("elastic: a SIGSTOPped launcher is dropped after its keep-alives lapse, and rejoins when continued") {
  TempDir out, logs;
  const int port = free_port();
  // A session lapses after keep_alive_interval x keep_alive_max_attempt = 2 s of
  // silence. a hosts the store (a stopped host would stop everyone).
  const std::string conf = "last_call_timeout=1,join_timeout=60,keep_alive_interval=1,keep_alive_max_attempt=2";
  Background a(elastic_args("1:2", port, "stopped", conf + ",is_host=1", 2) + waiting_worker(out), logs.file("a.out"),
               logs.file("a.err"));
  Background b(elastic_args("1:2", port, "stopped", conf + ",is_host=0", 2) + waiting_worker(out), logs.file("b.out"),
               logs.file("b.err"));
  INFO(a.err() << "\n---\n" << b.err());
  check_stopped_peer_rejoins(a, b, out);
}

TEST_CASE("elastic: failing workers with --max-restarts=1 run twice on every node, then fail") {
  TempDir out, logs;
  const int port = free_port();
  auto args =
      elastic_args("1:2", port, "restarts", "last_call_timeout=2", 1) +
      std::vector<std::string>{"--max-restarts=1", "--no-python", "/bin/sh", "-c",
                               "touch " + out.path().string() + "/c${TORCHELASTIC_RESTART_COUNT}_p$PPID; exit 3"};
  Background a(args, logs.file("a.out"), logs.file("a.err"));
  Background b(args, logs.file("b.out"), logs.file("b.err"));
  const int code_a = a.wait(std::chrono::seconds(100)), code_b = b.wait(std::chrono::seconds(100));
  INFO(a.err() << "\n---\n" << b.err());
  CHECK(code_a == 1);
  CHECK(code_b == 1);
  CHECK_THAT(a.err(), Catch::Contains("ChildFailedError") && Catch::Contains("exitcode  : 3"));
  for (auto pid : {a.pid(), b.pid()})
    for (int count : {0, 1}) CHECK(file_exists(out.file("c" + std::to_string(count) + "_p" + std::to_string(pid))));
}

TEST_CASE("elastic: the store host's death is RendezvousConnectionError for the others, workers stopped") {
  TempDir out, logs;
  const int port = free_port();
  auto host = elastic_args("1:2", port, "hostdies", "is_host=1,last_call_timeout=30", 1) + waiting_worker(out);
  auto other = elastic_args("1:2", port, "hostdies", "is_host=0,last_call_timeout=30", 1) + waiting_worker(out);
  Background a(host, logs.file("a.out"), logs.file("a.err"));
  Background b(other, logs.file("b.out"), logs.file("b.err"));
  REQUIRE(wait_until([&] { return has_world(out, 2); }));
  a.signal(SIGKILL);
  a.wait();
  const int code = b.wait(std::chrono::seconds(60));
  INFO(b.err());
  CHECK(code == 1);
  CHECK_THAT(b.err(), Catch::Contains("RendezvousConnectionError"));
  // Both nodes' workers are gone: the host's with its launcher, the other's stopped by it.
  for (int rank = 0; rank < 2; ++rank) {
    const pid_t worker = read_pid(out.file("pid_w2_r" + std::to_string(rank)));
    CHECK(wait_until([&] { return !alive(worker); }));
  }
}

TEST_CASE("elastic: a signal while joining ends the launcher at once") {
  TempDir out, logs;
  const int port = free_port();
  Background a(elastic_args("2:2", port, "sigjoin", "join_timeout=600", 1) +
                   std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, out.path().string()},
               logs.file("a.out"), logs.file("a.err"));
  // Joining once its store answers.
  REQUIRE(wait_until([&] { return tcp_port_open(port); }));
  a.signal(SIGTERM);
  CHECK(a.wait(std::chrono::seconds(60)) == 128 + SIGTERM);
  CHECK(files_in(out.path()).empty());
}

TEST_CASE("elastic: the round's MASTER_PORT is held on group rank 0's host while its workers run") {
  // Rank 0 listens on MASTER_PORT only once it starts: until then (and after) no
  // other job on this host may be handed the port.
  TempDir out, logs, other_out;
  Background a(elastic_args("1:1", free_port(), "holdport", "last_call_timeout=1", 1) + waiting_worker(out),
               logs.file("a.out"), logs.file("a.err"));
  REQUIRE(wait_until([&] { return has_world(out, 1); }));
  const std::string master_port = read_env_file(out.file("w1_r0"))["MASTER_PORT"];
  INFO("MASTER_PORT " << master_port);
  auto second = elastic_run({"--nnodes=1", "--nproc-per-node=1", "--master-port=" + master_port,
                             ELASTIC_TEST_LAUNCH_WORKER, other_out.path().string()});
  CHECK(second.exitcode == 1);
  CHECK_THAT(second.err, Catch::Contains("port " + master_port + " is busy on this host"));
  CHECK(files_in(other_out.path()).empty());
  write_file(out.file("stop"), "");
  CHECK(a.wait(std::chrono::seconds(60)) == 0);
}

TEST_CASE("elastic: launchers sharing a job secret form a round, a launcher without it is refused") {
  TempDir out, logs, secret;
  write_file(secret.file("key"), "job secret\n");
  const int port = free_port();
  const std::string conf = "join_timeout=60,last_call_timeout=30,secret_file=" + secret.file("key");
  // The workers stay a few seconds, so the store is up when the stranger comes.
  auto args = elastic_args("2:2", port, "secret", conf, 1) +
              std::vector<std::string>{"/bin/sh", "-c", "touch " + out.path().string() + "/$RANK; sleep 5"};
  RunOptions info;
  info.set_env["ELASTIC_LOG_LEVEL"] = "info";
  Background a(args, logs.file("a.out"), logs.file("a.err"), info);
  Background b(args, logs.file("b.out"), logs.file("b.err"), info);
  REQUIRE(wait_until([&] { return files_in(out.path()).size() == 2; }, std::chrono::seconds(60)));
  auto stranger = elastic_run(elastic_args("2:2", port, "secret", "join_timeout=5,read_timeout=5,is_host=0", 1) +
                              std::vector<std::string>{"/bin/true"});
  INFO(stranger.err);
  CHECK(stranger.exitcode == 1);
  CHECK_THAT(stranger.err, Catch::Contains("requires the job secret"));
  const int code_a = a.wait(std::chrono::seconds(60)), code_b = b.wait(std::chrono::seconds(60));
  INFO(a.err() << "\n---\n" << b.err());
  CHECK(code_a == 0);
  CHECK(code_b == 0);
  CHECK(files_in(out.path()) == std::set<std::string>{"0", "1"});
  CHECK_THAT(a.err() + b.err(), Catch::Contains("peers must prove the job secret"));
}
