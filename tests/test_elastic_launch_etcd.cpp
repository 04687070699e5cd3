// Elastic jobs under the real elastic-run with --rdzv-backend=etcd, on a real
// etcd-server each test starts: launchers forming one round, a reused closed id,
// a SIGKILLed launcher, two jobs on one etcd, etcd restarted under a job, and a
// PyTorch gloo job across two launchers.
#include <algorithm>
#include <catch2/catch.hpp>
#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/elastic_scenarios.hpp"
#include "support/etcd_server.hpp"
#include "support/hostile_etcd_gateway.hpp"
#include "support/jobs.hpp"
#include "support/launcher.hpp"

using namespace elastic::testing;
using namespace std::chrono_literals;

namespace {

std::vector<std::string> etcd_args(const EtcdServer& etcd, const std::string& nnodes, const std::string& id,
                                   const std::string& conf, int nproc, const std::string& backend = "etcd") {
  return {"--nnodes=" + nnodes,        "--nproc-per-node=" + std::to_string(nproc),
          "--rdzv-backend=" + backend, "--rdzv-endpoint=" + etcd.endpoint(),
          "--rdzv-id=" + id,           "--rdzv-conf=" + conf,
          "--monitor-interval=1",      "--term-timeout=5"};
}

}  // namespace

TEST_CASE("etcd: two launchers 1:2 form one round of 4 (etcd and etcd-v2 names)") {
  EtcdServer etcd;
  for (std::string backend : {"etcd", "etcd-v2"}) {
    TempDir out, logs;
    auto args = etcd_args(etcd, "1:2", "multi-" + backend, "join_timeout=60,last_call_timeout=30", 2, backend) +
                std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, out.path().string()};
    Background a(args, logs.file("a.out"), logs.file("a.err"));
    Background b(args, logs.file("b.out"), logs.file("b.err"));
    const int code_a = a.wait(100s), code_b = b.wait(100s);
    INFO(backend << ":\n" << a.err() << "\n---\n" << b.err());
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
      CHECK(env["TORCHELASTIC_RUN_ID"] == "multi-" + backend);
    }
  }
}

TEST_CASE("etcd: a finished job's id reused is RendezvousClosedError, no worker started") {
  EtcdServer etcd;
  TempDir out, late;
  auto first = elastic_run(etcd_args(etcd, "1:2", "once", "last_call_timeout=1", 1) +
                           std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, out.path().string()});
  INFO(first.err);
  REQUIRE(first.exitcode == 0);
  auto again = elastic_run(etcd_args(etcd, "1:2", "once", "last_call_timeout=1", 1) +
                           std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, late.path().string()});
  INFO(again.err);
  CHECK(again.exitcode == 1);
  CHECK_THAT(again.err, Catch::Contains("RendezvousClosedError"));
  CHECK(files_in(late.path()).empty());
}

TEST_CASE("etcd: a SIGKILLed launcher is noticed long before its keep-alive could age") {
  // Keep-alives every 60 s, 3 misses: a node ages out only after 180 s. The
  // survivor's new round within the test's bound comes from the dead launcher's
  // lease being revoked the moment it died.
  EtcdServer etcd;
  TempDir out, logs;
  const std::string conf = "join_timeout=60,last_call_timeout=2,keep_alive_interval=60,keep_alive_max_attempt=3";
  auto args = etcd_args(etcd, "1:2", "kill", conf, 1) + waiting_worker(out);
  Background a(args, logs.file("a.out"), logs.file("a.err"));
  Background b(args, logs.file("b.out"), logs.file("b.err"));
  REQUIRE(wait_until([&] { return has_world(out, 2); }, 60s));
  b.signal(SIGKILL);
  b.wait();
  INFO(a.err());
  // The survivor restarts alone: a world of 1.
  CHECK(wait_until([&] { return has_world(out, 1); }, 60s));
  write_file(out.file("stop"), "");
  CHECK(a.wait(60s) == 0);
}

TEST_CASE("etcd: a launcher SIGKILLed after a membership change is noticed as fast") {
  // Rounds of 2, then 3 when a third launcher joins; between rounds the launchers
  // kill every process left over, but not their lease sentinels: the third one's
  // SIGKILL still ends its lease at once (its TTL is 180 s).
  EtcdServer etcd;
  TempDir out, logs;
  const std::string conf = "join_timeout=60,last_call_timeout=1,keep_alive_interval=60,keep_alive_max_attempt=3";
  auto args = etcd_args(etcd, "1:3", "change", conf, 1) +
              std::vector<std::string>{"--no-python", "/bin/sh", "-c",
                                       "d=" + out.path().string() +
                                           "; touch $d/w${WORLD_SIZE}.$$; while [ ! -e $d/stop ]; do sleep 0.1; done"};
  auto started_in = [&](int world) {
    int count = 0;
    for (const auto& name : files_in(out.path())) count += name.rfind("w" + std::to_string(world) + ".", 0) == 0;
    return count;
  };
  Background a(args, logs.file("a.out"), logs.file("a.err"));
  Background b(args, logs.file("b.out"), logs.file("b.err"));
  REQUIRE(wait_until([&] { return started_in(2) == 2; }, 60s));
  Background c(args, logs.file("c.out"), logs.file("c.err"));
  REQUIRE(wait_until([&] { return started_in(3) == 3; }, 60s));
  c.signal(SIGKILL);
  c.wait();
  INFO(a.err() << "\n---\n" << b.err());
  CHECK(wait_until([&] { return started_in(2) == 4; }, 60s));
  write_file(out.file("stop"), "");
  CHECK(a.wait(60s) == 0);
  CHECK(b.wait(60s) == 0);
}

TEST_CASE("etcd: a SIGSTOPped launcher's lease lapses, the survivor goes on alone, and it rejoins when continued") {
  EtcdServer etcd;
  TempDir out, logs;
  // Leases of keep_alive_interval x keep_alive_max_attempt = 2 s.
  auto args = etcd_args(etcd, "1:2", "stopped",
                        "join_timeout=60,last_call_timeout=1,keep_alive_interval=1,keep_alive_max_attempt=2", 2) +
              waiting_worker(out);
  Background a(args, logs.file("a.out"), logs.file("a.err"));
  Background b(args, logs.file("b.out"), logs.file("b.err"));
  INFO(a.err() << "\n---\n" << b.err());
  check_stopped_peer_rejoins(a, b, out);
}

TEST_CASE("etcd: two jobs on one etcd run side by side") {
  EtcdServer etcd;
  TempDir out_x, out_y, logs;
  auto args_x = etcd_args(etcd, "2:2", "job-x", "join_timeout=60", 1) + waiting_worker(out_x);
  auto args_y = etcd_args(etcd, "1:1", "job-y", "join_timeout=60", 3) + waiting_worker(out_y);
  Background x0(args_x, logs.file("x0.out"), logs.file("x0.err"));
  Background y0(args_y, logs.file("y0.out"), logs.file("y0.err"));
  Background x1(args_x, logs.file("x1.out"), logs.file("x1.err"));
  INFO(x0.err() << "\n---\n" << x1.err() << "\n---\n" << y0.err());
  CHECK(wait_until([&] { return has_world(out_x, 2) && has_world(out_y, 3); }, 60s));
  write_file(out_x.file("stop"), "");
  write_file(out_y.file("stop"), "");
  CHECK(x0.wait(60s) == 0);
  CHECK(x1.wait(60s) == 0);
  CHECK(y0.wait(60s) == 0);
  CHECK(files_in(out_x.path()) == std::set<std::string>{"w2_r0", "w2_r1", "pid_w2_r0", "pid_w2_r1", "stop"});
  CHECK(files_in(out_y.path()) ==
        std::set<std::string>{"w3_r0", "w3_r1", "w3_r2", "pid_w3_r0", "pid_w3_r1", "pid_w3_r2", "stop"});
}

TEST_CASE("etcd: etcd restarted under a running job: the job rides it out") {
  EtcdServer etcd;
  TempDir out, logs;
  auto args = etcd_args(etcd, "2:2", "restart", "join_timeout=60", 1) + waiting_worker(out);
  Background a(args, logs.file("a.out"), logs.file("a.err"));
  Background b(args, logs.file("b.out"), logs.file("b.err"));
  REQUIRE(wait_until([&] { return has_world(out, 2); }, 60s));
  etcd.stop();
  std::this_thread::sleep_for(1s);
  etcd.start();
  write_file(out.file("stop"), "");
  const int code_a = a.wait(100s), code_b = b.wait(100s);
  INFO(a.err() << "\n---\n" << b.err());
  CHECK(code_a == 0);
  CHECK(code_b == 0);
}

TEST_CASE("etcd: no etcd at the endpoint is RendezvousConnectionError within read_timeout") {
  int port = 0;
  {
    EtcdServer gone;
    port = gone.client_port();
  }
  TempDir out;
  auto r =
      elastic_run({"--nnodes=1:2", "--rdzv-backend=etcd", "--rdzv-endpoint=127.0.0.1:" + std::to_string(port),
                   "--rdzv-id=none", "--rdzv-conf=read_timeout=2", ELASTIC_TEST_LAUNCH_WORKER, out.path().string()});
  INFO(r.err);
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("RendezvousConnectionError") && Catch::Contains("etcd at http://127.0.0.1:"));
  CHECK(files_in(out.path()).empty());
}

TEST_CASE("etcd: bad TLS options of --rdzv-conf are usage errors (exit 2), nothing started") {
  TempDir out;
  for (std::string conf : {"protocol=ftp", "ssl_cert=/nonexistent/cert.pem", "key=/nonexistent/key.pem"}) {
    auto r = elastic_run({"--nnodes=1:2", "--rdzv-backend=etcd", "--rdzv-endpoint=127.0.0.1:1", "--rdzv-id=bad",
                          "--rdzv-conf=" + conf, ELASTIC_TEST_LAUNCH_WORKER, out.path().string()});
    INFO(conf << ": " << r.err);
    CHECK(r.exitcode == 2);
    CHECK_THAT(r.err, Catch::StartsWith("elastic-run: error: --rdzv-conf: etcd"));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
  CHECK(files_in(out.path()).empty());
}

TEST_CASE("etcd: a PyTorch gloo all_reduce across two launchers", "[pytorch]") {
  EtcdServer etcd;
  TempDir out, logs;
  const std::string worker = std::string(ELASTIC_TEST_PYTHON_DIR) + "/jobs/job_worker.py";
  RunOptions options(std::map<std::string, std::string>{{"PYTHON_EXEC", system_python()}, {"OMP_NUM_THREADS", "1"}});
  auto args = etcd_args(etcd, "1:2", "gloo", "join_timeout=90,last_call_timeout=60", 2) +
              std::vector<std::string>{worker, "--timeout=60", "--out-dir", out.path().string()};
  Background a(args, logs.file("a.out"), logs.file("a.err"), options);
  Background b(args, logs.file("b.out"), logs.file("b.err"), options);
  const int code_a = a.wait(100s), code_b = b.wait(100s);
  INFO(a.err() << "\n---\n" << b.err());
  REQUIRE(code_a == 0);
  REQUIRE(code_b == 0);
  REQUIRE(files_in(out.path()) == std::set<std::string>{"0", "1", "2", "3"});
  for (int rank = 0; rank < 4; ++rank) {
    auto seen = nlohmann::json::parse(read_file(out.file(std::to_string(rank))));
    CHECK(seen["RANK"] == std::to_string(rank));
    CHECK(seen["WORLD_SIZE"] == "4");
    CHECK(seen["GROUP_RANK"] == std::to_string(rank / 2));
    CHECK(seen["all_reduce"].get<std::vector<int>>() == std::vector<int>{1, 1, 1, 1});
  }
}

TEST_CASE("etcd: SIGTERM is acted on at once while a gateway drips its answer") {
  HostileEtcdGateway gateway("drip");
  REQUIRE(gateway.port() != 0);
  TempDir logs;
  Background launcher({"--nnodes=1:2", "--rdzv-backend=etcd",
                       "--rdzv-endpoint=127.0.0.1:" + std::to_string(gateway.port()), "--rdzv-id=drip", "/bin/true"},
                      logs.file("out"), logs.file("err"));
  std::this_thread::sleep_for(3s);  // blocked in its first request (read_timeout 60 s)
  launcher.signal(SIGTERM);
  const auto start = std::chrono::steady_clock::now();
  const int code = launcher.wait(30s);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  INFO(launcher.err());
  WARN("elastic-run exited " << took.count() << " ms after SIGTERM");
  CHECK(code == 128 + SIGTERM);
  CHECK(took < 10s);  // without cancelling the request: about 57 s
}
