// Jobs across hosts: elastic-run on the hosts of a network lab (support/netlab.hpp),
// each with its own address, host name and /etc/hosts, over the c10d rendezvous
// hosted by h1. A job of three hosts; hosts whose own names resolve to loopback;
// a host cut off mid-job (the others run a new round, the cut host stops its
// workers once its session has lapsed and says what it could not reach); an etcd
// cluster of 3 members, given as 3 endpoints, losing the first one mid-job.
#include <fcntl.h>
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "support/jobs.hpp"
#include "support/lab_processes.hpp"
#include "support/launcher.hpp"
#include "support/netlab.hpp"
#include "support/skip.hpp"

using namespace elastic::testing;
namespace fs = std::filesystem;

namespace {

// elastic-run on one host of the lab, in the background.
class HostLaunch : public LabLaunch {
 public:
  HostLaunch(const NetLab& lab, int host, std::vector<std::string> args, const std::string& log_prefix,
             const std::map<std::string, std::string>& env = {})
      : LabLaunch(lab, host, with_binary(std::move(args)), log_prefix, env) {}

 private:
  static std::vector<std::string> with_binary(std::vector<std::string> args) {
    args.insert(args.begin(), ELASTIC_RUN_BINARY);
    return args;
  }
};

std::vector<std::string> c10d_args(const std::string& nnodes, int nproc, const std::string& conf) {
  return {"--nnodes=" + nnodes,   "--nproc-per-node=" + std::to_string(nproc),
          "--rdzv-backend=c10d",  "--rdzv-endpoint=" + NetLab::name(1) + ":29400",
          "--rdzv-id=lab",        "--rdzv-conf=" + conf,
          "--monitor-interval=1", "--term-timeout=5"};
}

// Every env file the workers wrote under `dir` (one subdirectory per host).
std::map<std::string, std::map<std::string, std::string>> worker_envs(const fs::path& dir) {
  std::map<std::string, std::map<std::string, std::string>> envs;
  for (const auto& host : fs::directory_iterator(dir))
    for (const auto& file : fs::directory_iterator(host.path()))
      if (file.path().extension() != ".tmp")
        envs[host.path().filename().string() + "/" + file.path().filename().string()] =
            read_env_file(file.path().string());
  return envs;
}

#define LAB_OR_SKIP()                                         \
  do {                                                        \
    if (auto why = NetLab::unavailable()) ELASTIC_SKIP(*why); \
  } while (false)

}  // namespace

TEST_CASE("c10d: three hosts form one job and MASTER_ADDR is the host name of group rank 0") {
  LAB_OR_SKIP();
  NetLab lab(3);
  TempDir out, logs;
  std::vector<std::unique_ptr<HostLaunch>> hosts;
  for (int h = 1; h <= 3; ++h) {
    fs::create_directories(out.path() / NetLab::name(h));
    hosts.push_back(std::make_unique<HostLaunch>(
        lab, h,
        c10d_args("3", 2, "join_timeout=40,last_call_timeout=1") +
            std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, (out.path() / NetLab::name(h)).string()},
        logs.file(NetLab::name(h))));
  }
  for (int h = 1; h <= 3; ++h) {
    INFO(NetLab::name(h) << ":\n" << hosts[h - 1]->err());
    REQUIRE(hosts[h - 1]->wait(std::chrono::seconds(60)) == 0);
  }
  auto envs = worker_envs(out.path());
  REQUIRE(envs.size() == 6);
  std::set<std::string> ranks;
  std::map<std::string, std::string> group_rank_of_host;
  const std::string master = envs.begin()->second["MASTER_ADDR"];
  for (auto& [where, env] : envs) {
    INFO(where);
    ranks.insert(env["RANK"]);
    CHECK(env["WORLD_SIZE"] == "6");
    CHECK(env["GROUP_WORLD_SIZE"] == "3");
    CHECK(env["MASTER_ADDR"] == master);
    group_rank_of_host[where.substr(0, where.find('/'))] = env["GROUP_RANK"];
  }
  CHECK(ranks == std::set<std::string>{"0", "1", "2", "3", "4", "5"});
  // Each host ran its own two ranks, and rank 0's host is the one named.
  REQUIRE(group_rank_of_host.size() == 3);
  CHECK(group_rank_of_host[master] == "0");
}

TEST_CASE("c10d: host names that resolve to loopback: MASTER_ADDR is rank 0's lab address and the log says why") {
  LAB_OR_SKIP();
  NetLab lab(2, NetLab::Names::loopback);
  TempDir out, logs;
  std::vector<std::unique_ptr<HostLaunch>> hosts;
  for (int h = 1; h <= 2; ++h) {
    fs::create_directories(out.path() / NetLab::name(h));
    hosts.push_back(std::make_unique<HostLaunch>(
        lab, h,
        c10d_args("2", 1, "join_timeout=40,last_call_timeout=1") +
            std::vector<std::string>{ELASTIC_TEST_LAUNCH_WORKER, (out.path() / NetLab::name(h)).string()},
        logs.file(NetLab::name(h))));
  }
  for (int h = 1; h <= 2; ++h) {
    INFO(NetLab::name(h) << ":\n" << hosts[h - 1]->err());
    REQUIRE(hosts[h - 1]->wait(std::chrono::seconds(60)) == 0);
  }
  auto envs = worker_envs(out.path());
  REQUIRE(envs.size() == 2);
  std::string rank0_host;
  for (auto& [where, env] : envs)
    if (env["GROUP_RANK"] == "0") rank0_host = where.substr(0, where.find('/'));
  REQUIRE(!rank0_host.empty());
  const int rank0 = std::stoi(rank0_host.substr(1));
  for (auto& [where, env] : envs) {
    INFO(where);
    CHECK(env["MASTER_ADDR"] == NetLab::address(rank0));
  }
  const std::string log = hosts[static_cast<std::size_t>(rank0 - 1)]->err();
  INFO(log);
  CHECK_THAT(log, Catch::Contains("resolves to a loopback address") && Catch::Contains(NetLab::address(rank0)));
}

namespace {

// Three hosts of one worker each, `--nnodes=2:3`, on `backend` (c10d: the store on
// h1; etcd: a member on each host); h3's link is cut while the workers run. The
// survivors go on in a round of two, restarting once (not counted); the cut host
// stops its workers once its session has lapsed, says what it could not reach, and
// exits 1 when its attempt to join again gets no answer (read_timeout). The times
// are logged, not asserted.
void cut_host_case(const std::string& backend) {
  NetLab lab(3);
  TempDir out, logs, data;
  std::vector<std::unique_ptr<EtcdMember>> members;
  std::string endpoint = NetLab::name(1) + ":29400";
  if (backend == "etcd") {
    for (int h = 1; h <= 3; ++h) members.push_back(std::make_unique<EtcdMember>(lab, h, 3, data));
    endpoint = NetLab::address(1) + ":2379," + NetLab::address(2) + ":2379," + NetLab::address(3) + ":2379";
  }
  // Sessions lapse 3 s after the last keep-alive; the cut host's requests give up after 10 s.
  const std::string conf = "join_timeout=40,last_call_timeout=1,keep_alive_interval=1,read_timeout=10";
  std::vector<std::unique_ptr<HostLaunch>> hosts;
  for (int h = 1; h <= 3; ++h) {
    fs::create_directories(out.path() / NetLab::name(h));
    hosts.push_back(std::make_unique<HostLaunch>(
        lab, h,
        std::vector<std::string>{"--nnodes=2:3", "--nproc-per-node=1", "--rdzv-backend=" + backend,
                                 "--rdzv-endpoint=" + endpoint, "--rdzv-id=lab", "--rdzv-conf=" + conf,
                                 "--term-timeout=5", ELASTIC_TEST_LAUNCH_WORKER,
                                 (out.path() / NetLab::name(h)).string(), "--sleep-ms", "12000"},
        logs.file(NetLab::name(h)), std::map<std::string, std::string>{{"ELASTIC_LOG_LEVEL", "info"}}));
  }
  auto dump = [&] {
    std::string text;
    for (int h = 1; h <= 3; ++h) text += NetLab::name(h) + ":\n" + hosts[h - 1]->err() + "\n";
    return text;
  };
#define LAB_REQUIRE(condition) \
  if (!(condition)) FAIL(#condition << "\n" << dump())
  LAB_REQUIRE(wait_until([&] { return worker_envs(out.path()).size() == 3; }, std::chrono::seconds(40)));
  for (auto& [where, env] : worker_envs(out.path())) LAB_REQUIRE(env["GROUP_WORLD_SIZE"] == "3");
  // Its workers (on etcd the launcher has a lease sentinel too, forked from it).
  std::set<pid_t> cut_workers;
  for (pid_t child : hosts[2]->children())
    if (read_file("/proc/" + std::to_string(child) + "/cmdline").rfind(ELASTIC_TEST_LAUNCH_WORKER, 0) == 0)
      cut_workers.insert(child);
  LAB_REQUIRE(!cut_workers.empty());

  lab.cut(3);
  const auto cut_at = std::chrono::steady_clock::now();
  auto since_cut = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - cut_at).count(); };
  // The survivors' next round: their workers' files rewritten with two nodes.
  auto in_new_round = [&] {
    auto envs = worker_envs(out.path());
    int fresh = 0;
    for (auto& [where, env] : envs)
      if (where.rfind("h3/", 0) != 0 && env["GROUP_WORLD_SIZE"] == "2") ++fresh;
    return fresh == 2;
  };
  LAB_REQUIRE(wait_until(in_new_round, std::chrono::seconds(30)));
  const double new_round_s = since_cut();
  // The cut host's workers are stopped once its own session has lapsed, before
  // its store requests give up (read_timeout); its attempt to join again fails then.
  LAB_REQUIRE(
      wait_until([&] { return std::none_of(cut_workers.begin(), cut_workers.end(), [](pid_t p) { return alive(p); }); },
                 std::chrono::seconds(30)));
  const double stopped_s = since_cut();
  const int cut_code = hosts[2]->wait(std::chrono::seconds(30));
  const double cut_exit_s = since_cut();
  WARN(backend << ": survivors' workers in the new round " << new_round_s
               << " s after the cut; the cut host's workers stopped after " << stopped_s
               << " s, the cut host exited after " << cut_exit_s << " s");
  INFO(dump());
  CHECK(cut_code == 1);
  CHECK_THAT(hosts[2]->err(), Catch::Contains("RendezvousConnectionError"));
  CHECK_THAT(hosts[2]->err(), Catch::Contains("has not been reached for") &&
                                  Catch::Contains(backend + " " + (backend == "c10d" ? endpoint : NetLab::address(1))));
  for (pid_t worker : cut_workers) CHECK_FALSE(alive(worker));
  for (int h = 1; h <= 2; ++h) CHECK(hosts[h - 1]->wait(std::chrono::seconds(40)) == 0);
#undef LAB_REQUIRE
  for (auto& [where, env] : worker_envs(out.path()))
    if (where.rfind("h3/", 0) != 0) {
      CHECK(env["WORLD_SIZE"] == "2");
      CHECK(env["TORCHELASTIC_RESTART_COUNT"] == "0");
    }
  // One new round each: no restart but the one the lost host asked for.
  for (int h = 1; h <= 2; ++h) {
    const std::string log = hosts[h - 1]->err();
    std::size_t restarts = 0;
    for (auto at = log.find("in a new round"); at != std::string::npos; at = log.find("in a new round", at + 1))
      ++restarts;
    CHECK(restarts == 1);
  }
}

}  // namespace

TEST_CASE("c10d: a host cut off mid-job: the others run a round without it and it stops its workers saying why") {
  LAB_OR_SKIP();
  cut_host_case("c10d");
}

TEST_CASE("etcd: a host cut off mid-job: the others run a round without it and it stops its workers saying why") {
  LAB_OR_SKIP();
  if (!fs::exists("/usr/bin/etcd")) ELASTIC_SKIP("etcd-server is not installed");
  cut_host_case("etcd");
}

// The c10d store's host cut off: no node can go on (the store went with h1, and h1
// alone is below MIN). Each ends with exit 1 and a message saying what it could not
// reach and for how long, within read_timeout of the cut (not join_timeout later).
TEST_CASE("c10d: the store's host cut off mid-job: it and the others stop their workers and exit 1 saying why") {
  LAB_OR_SKIP();
  NetLab lab(3);
  TempDir out, logs;
  const std::string conf = "join_timeout=300,last_call_timeout=1,keep_alive_interval=1,read_timeout=10";
  std::vector<std::unique_ptr<HostLaunch>> hosts;
  for (int h = 1; h <= 3; ++h) {
    fs::create_directories(out.path() / NetLab::name(h));
    hosts.push_back(std::make_unique<HostLaunch>(
        lab, h,
        std::vector<std::string>{"--nnodes=2:3", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                 "--rdzv-endpoint=" + NetLab::name(1) + ":29400", "--rdzv-id=lab",
                                 "--rdzv-conf=" + conf, "--term-timeout=5", ELASTIC_TEST_LAUNCH_WORKER,
                                 (out.path() / NetLab::name(h)).string(), "--sleep-ms", "60000"},
        logs.file(NetLab::name(h)), std::map<std::string, std::string>{{"ELASTIC_LOG_LEVEL", "info"}}));
  }
  auto dump = [&] {
    std::string text;
    for (int h = 1; h <= 3; ++h) text += NetLab::name(h) + ":\n" + hosts[h - 1]->err() + "\n";
    return text;
  };
  if (!wait_until([&] { return worker_envs(out.path()).size() == 3; }, std::chrono::seconds(40)))
    FAIL("the job did not start\n" << dump());
  std::vector<std::set<pid_t>> workers;
  for (int h = 1; h <= 3; ++h) workers.push_back(hosts[h - 1]->children());

  lab.cut(1);
  const auto cut_at = std::chrono::steady_clock::now();
  std::vector<int> codes(3);
  std::vector<double> exited_s(3);
  // All three end on their own; the longest wait is h1's: read_timeout after the
  // last request from another host, then its workers' stop.
  for (int h : {2, 3, 1}) {
    codes[h - 1] = hosts[h - 1]->wait(std::chrono::seconds(60));
    exited_s[h - 1] = std::chrono::duration<double>(std::chrono::steady_clock::now() - cut_at).count();
  }
  WARN("the store's host cut: h1 exited after " << exited_s[0] << " s, h2 after " << exited_s[1] << " s, h3 after "
                                                << exited_s[2] << " s");
  INFO(dump());
  for (int h = 1; h <= 3; ++h) {
    CHECK(codes[h - 1] == 1);
    CHECK_THAT(hosts[h - 1]->err(), Catch::Contains("RendezvousConnectionError"));
    for (pid_t worker : workers[h - 1]) CHECK_FALSE(alive(worker));
  }
  CHECK_THAT(hosts[0]->err(), Catch::Contains("no other host has reached the c10d store served here (h1:29400) for"));
  for (int h = 2; h <= 3; ++h) {
    CHECK_THAT(hosts[h - 1]->err(), Catch::Contains("c10d h1:29400) has not been reached for"));
    CHECK_THAT(hosts[h - 1]->err(), Catch::Contains("a job cannot go on without that host"));
  }
}

namespace {

// A gloo job of one rank per host; `names` as NetLab takes it, `env` for the workers.
void check_gloo_job(NetLab::Names names, const std::map<std::string, std::string>& extra_env,
                    const std::set<std::string>& allowed_masters) {
  NetLab lab(3, names);
  TempDir out, logs;
  const std::string job_worker = std::string(ELASTIC_TEST_PYTHON_DIR) + "/jobs/job_worker.py";
  std::map<std::string, std::string> env{{"PYTHON_EXEC", system_python()}, {"OMP_NUM_THREADS", "1"}};
  for (const auto& [k, v] : extra_env) env[k] = v;
  std::vector<std::unique_ptr<HostLaunch>> hosts;
  for (int h = 1; h <= 3; ++h)
    hosts.push_back(std::make_unique<HostLaunch>(
        lab, h,
        c10d_args("3", 1, "join_timeout=60,last_call_timeout=1") +
            std::vector<std::string>{job_worker, "--timeout=60", "--out-dir", out.path().string()},
        logs.file(NetLab::name(h)), env));
  for (int h = 1; h <= 3; ++h) {
    INFO(NetLab::name(h) << ":\n" << hosts[h - 1]->err());
    REQUIRE(hosts[h - 1]->wait(std::chrono::seconds(100)) == 0);
  }
  REQUIRE(files_in(out.path()) == std::set<std::string>{"0", "1", "2"});
  std::set<std::string> masters;
  for (int rank = 0; rank < 3; ++rank) {
    const std::string text = read_file(out.file(std::to_string(rank)));
    INFO(text);
    // Every element of the all_reduce of one-hot vectors is 1: each host's rank took part.
    CHECK_THAT(text, Catch::Contains("\"all_reduce\": [1, 1, 1]"));
    CHECK_THAT(text, Catch::Contains("\"WORLD_SIZE\": \"3\""));
    const auto at = text.find("\"MASTER_ADDR\": \"");
    REQUIRE(at != std::string::npos);
    masters.insert(text.substr(at + 16, text.find('"', at + 16) - at - 16));
  }
  REQUIRE(masters.size() == 1);
  CHECK(allowed_masters.count(*masters.begin()) == 1);
}

}  // namespace

TEST_CASE("c10d: a torch gloo job across three hosts all_reduces to the right sum", "[pytorch]") {
  LAB_OR_SKIP();
  check_gloo_job(NetLab::Names::addresses, {}, {"h1", "h2", "h3"});
}

// gloo listens on the address its host name resolves to unless told an interface.
TEST_CASE("c10d: a torch gloo job across hosts whose names resolve to loopback", "[pytorch]") {
  LAB_OR_SKIP();
  check_gloo_job(NetLab::Names::loopback, {{"GLOO_SOCKET_IFNAME", "eth0"}},
                 {NetLab::address(1), NetLab::address(2), NetLab::address(3)});
}

namespace {

// A job of 2 hosts on an etcd cluster of 3 members (h1 to h3), given as 3 endpoints
// in that order; the member every launcher tried first is SIGKILLed while the
// workers run. With `tls`, the cluster serves https and asks for client certificates.
void etcd_member_lost_case(bool tls) {
  NetLab lab(3);
  TempDir out, logs, data;
  std::optional<LabCertificates> certificates;
  if (tls) certificates.emplace(data, 3);
  std::vector<std::unique_ptr<EtcdMember>> members;
  for (int h = 1; h <= 3; ++h)
    members.push_back(std::make_unique<EtcdMember>(lab, h, 3, data, certificates ? &*certificates : nullptr));
  const std::string endpoints =
      NetLab::address(1) + ":2379," + NetLab::address(2) + ":2379," + NetLab::address(3) + ":2379";
  std::string conf = "join_timeout=40,last_call_timeout=1,keep_alive_interval=1,read_timeout=20";
  if (certificates)
    conf += ",protocol=https,ca_cert=" + certificates->ca + ",ssl_cert=" + certificates->client +
            ",ssl_cert_key=" + certificates->client_key;
  std::vector<std::unique_ptr<HostLaunch>> hosts;
  for (int h = 1; h <= 2; ++h) {
    fs::create_directories(out.path() / NetLab::name(h));
    hosts.push_back(std::make_unique<HostLaunch>(
        lab, h,
        std::vector<std::string>{"--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=etcd",
                                 "--rdzv-endpoint=" + endpoints, "--rdzv-id=lab-etcd", "--rdzv-conf=" + conf,
                                 "--monitor-interval=1", "--term-timeout=5", ELASTIC_TEST_LAUNCH_WORKER,
                                 (out.path() / NetLab::name(h)).string(), "--sleep-ms", "6000"},
        logs.file(NetLab::name(h)), std::map<std::string, std::string>{{"ELASTIC_LOG_LEVEL", "info"}}));
  }
  auto dump = [&] { return "h1:\n" + hosts[0]->err() + "\nh2:\n" + hosts[1]->err(); };
  if (!wait_until([&] { return worker_envs(out.path()).size() == 2; }, std::chrono::seconds(40)))
    FAIL("the job did not start\n" << dump());
  // The member every launcher tried first goes away while the workers run.
  members[0]->kill();
  for (int h = 1; h <= 2; ++h) {
    const int code = hosts[h - 1]->wait(std::chrono::seconds(60));
    INFO(dump());
    CHECK(code == 0);
  }
  auto envs = worker_envs(out.path());
  REQUIRE(envs.size() == 2);
  for (auto& [where, env] : envs) {
    CHECK(env["WORLD_SIZE"] == "2");
    CHECK(env["TORCHELASTIC_RESTART_COUNT"] == "0");
  }
  // Never restarted: the round stood while a member was lost.
  for (int h = 1; h <= 2; ++h) CHECK_THAT(hosts[h - 1]->err(), !Catch::Contains("restarting the workers"));
}

}  // namespace

TEST_CASE("etcd: a cluster of 3 members given as 3 endpoints loses the first member mid-job and the job goes on") {
  LAB_OR_SKIP();
  if (!fs::exists("/usr/bin/etcd")) ELASTIC_SKIP("etcd-server is not installed");
  etcd_member_lost_case(false);
}

TEST_CASE("etcd: over TLS with client certificates, a cluster of 3 members loses one mid-job and the job goes on") {
  LAB_OR_SKIP();
  if (!fs::exists("/usr/bin/etcd")) ELASTIC_SKIP("etcd-server is not installed");
  if (!fs::exists("/usr/bin/openssl")) ELASTIC_SKIP("openssl is not installed");
  etcd_member_lost_case(true);
}

namespace {

// A job of 2 hosts on a 3-member etcd cluster whose first member (the one both
// launchers use) is SIGKILLed while h1 waits for h2 in the rendezvous, or while h1
// waits at the exit barrier for h2's longer worker. The job ends well either way.
enum class MemberLoss { joining, exit_barrier };

void etcd_member_lost_at(MemberLoss when) {
  NetLab lab(3);
  TempDir out, logs, data;
  std::vector<std::unique_ptr<EtcdMember>> members;
  for (int h = 1; h <= 3; ++h) members.push_back(std::make_unique<EtcdMember>(lab, h, 3, data));
  const std::string endpoints =
      NetLab::address(1) + ":2379," + NetLab::address(2) + ":2379," + NetLab::address(3) + ":2379";
  std::vector<std::unique_ptr<HostLaunch>> hosts;
  auto launch = [&](int h, const std::string& sleep_ms) {
    fs::create_directories(out.path() / NetLab::name(h));
    hosts.push_back(std::make_unique<HostLaunch>(
        lab, h,
        std::vector<std::string>{
            "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=etcd", "--rdzv-endpoint=" + endpoints,
            "--rdzv-id=lab-etcd",
            "--rdzv-conf=join_timeout=60,last_call_timeout=1,keep_alive_interval=1,read_timeout=20", "--term-timeout=5",
            ELASTIC_TEST_LAUNCH_WORKER, (out.path() / NetLab::name(h)).string(), "--sleep-ms", sleep_ms},
        logs.file(NetLab::name(h)), std::map<std::string, std::string>{{"ELASTIC_LOG_LEVEL", "info"}}));
  };
  auto dump = [&] {
    std::string text;
    for (std::size_t h = 0; h < hosts.size(); ++h) text += NetLab::name(int(h) + 1) + ":\n" + hosts[h]->err() + "\n";
    return text;
  };
  if (when == MemberLoss::joining) {
    launch(1, "2000");
    // h1 alone waits for a second node: its join is under way.
    std::this_thread::sleep_for(std::chrono::seconds(3));
    if (!worker_envs(out.path()).empty()) FAIL("h1 did not wait\n" << dump());
    members[0]->kill();
    launch(2, "2000");
  } else {
    launch(1, "1000");
    launch(2, "8000");
    if (!wait_until([&] { return worker_envs(out.path()).size() == 2; }, std::chrono::seconds(40)))
      FAIL("the job did not start\n" << dump());
    // h1's worker done (its env file says so when it exits: the launcher reaps it):
    // h1 is at the exit barrier while h2's worker runs on.
    auto workers_of_h1 = [&] {
      std::size_t n = 0;
      for (pid_t child : hosts[0]->children())
        if (read_file("/proc/" + std::to_string(child) + "/cmdline").rfind(ELASTIC_TEST_LAUNCH_WORKER, 0) == 0) ++n;
      return n;
    };
    if (!wait_until([&] { return workers_of_h1() == 0; }, std::chrono::seconds(20)))
      FAIL("h1's worker did not end\n" << dump());
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    members[0]->kill();
  }
  for (int h = 1; h <= 2; ++h) {
    const int code = hosts[h - 1]->wait(std::chrono::seconds(90));
    INFO(dump());
    CHECK(code == 0);
  }
  auto envs = worker_envs(out.path());
  REQUIRE(envs.size() == 2);
  for (auto& [where, env] : envs) CHECK(env["WORLD_SIZE"] == "2");
}

}  // namespace

TEST_CASE("etcd: the member in use lost while a node waits in the rendezvous: the job forms and ends well") {
  LAB_OR_SKIP();
  if (!fs::exists("/usr/bin/etcd")) ELASTIC_SKIP("etcd-server is not installed");
  etcd_member_lost_at(MemberLoss::joining);
}

TEST_CASE("etcd: the member in use lost while a node waits at the exit barrier: both nodes exit 0") {
  LAB_OR_SKIP();
  if (!fs::exists("/usr/bin/etcd")) ELASTIC_SKIP("etcd-server is not installed");
  etcd_member_lost_at(MemberLoss::exit_barrier);
}
