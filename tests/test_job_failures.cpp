// A job's failures across its nodes: two launchers on loopback form one job of 4
// ranks (2 per node) on static, c10d and etcd; the last rank raises once every
// rank started, the others sleep (or fail "peer closed" 150 ms later). Every node
// must stop, name rank 3 as the root cause with its traceback, label its own
// ranks collateral, and copy the root cause to its own error file. The failure
// keys (job_failures.hpp) are also checked on an in-memory store: hostile values,
// a report announced but never written, clocks apart, two failures at once.
#include <catch2/catch.hpp>
#include <chrono>
#include <elastic/launcher/job_failures.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/backends.hpp"
#include "support/in_memory_store.hpp"
#include "support/jobs.hpp"
#include "support/launcher.hpp"
#include "support/sanitizers.hpp"

using namespace elastic::testing;
using namespace std::chrono_literals;

namespace {

const std::string worker = ELASTIC_TEST_LAUNCH_WORKER;

// The options of node `node_rank` of a 2-node job on `backend`.
std::vector<std::string> node_args(const std::string& backend, int node_rank, int port, const std::string& id,
                                   std::vector<std::string> more) {
  std::vector<std::string> args{"--nproc-per-node=2", "--monitor-interval=0.2", "--term-timeout=5"};
  if (backend == "static") {
    args.insert(args.end(), {"--nnodes=2", "--node-rank=" + std::to_string(node_rank), "--master-addr=127.0.0.1",
                             "--master-port=" + std::to_string(port)});
  } else if (backend == "c10d") {
    args.insert(args.end(), {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:" + std::to_string(port),
                             "--rdzv-id=" + id});
#if ELASTIC_WITH_ETCD
  } else {
    args.insert(args.end(), {"--nnodes=2", "--rdzv-backend=etcd", "--rdzv-endpoint=" + shared_etcd().endpoint(),
                             "--rdzv-id=" + id});
#endif
  }
  return args + more;
}

RunOptions with_error_file(const std::string& path) {
  RunOptions options = quiet_launch_options();
  options.unset_env.erase(std::remove(options.unset_env.begin(), options.unset_env.end(), "TORCHELASTIC_ERROR_FILE"),
                          options.unset_env.end());
  options.set_env["TORCHELASTIC_ERROR_FILE"] = path;
  return options;
}

// The summary's root-cause section, and its failures section.
std::string root_cause_of(const std::string& err) {
  auto at = err.find("Root Cause (first observed failure):");
  return at == std::string::npos ? std::string() : err.substr(at);
}
std::string failures_of(const std::string& err) {
  auto begin = err.find("Failures:");
  auto end = err.find("Root Cause (first observed failure):");
  return begin == std::string::npos || end == std::string::npos ? std::string() : err.substr(begin, end - begin);
}

elastic::launcher::FailureReport report_of(int rank, std::int64_t time_ns, bool final = true) {
  elastic::launcher::FailureReport report;
  report.global_rank = rank;
  report.failure = elastic::ProcessFailure(rank % 2, 1000 + rank, 1, "<N/A>");
  report.failure.message = "rank " + std::to_string(rank) + " failed";
  report.failure.time_ns = time_ns;
  report.failure.timestamp = time_ns / 1'000'000'000;
  report.failure.host = "node" + std::to_string(rank / 2);
  report.final = final;
  report.node = "node" + std::to_string(rank / 2);
  return report;
}

}  // namespace

TEST_CASE("job failures: a failure on one node stops every node, each naming it as the root cause") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  const int victims_ms = GENERATE(-1, 150);  // the other ranks sleep, or fail 150 ms after it
  INFO("backend " << backend << ", others fail " << victims_ms << " ms after");
  TempDir dir;
  const int port = free_port();
  const std::string id = "job-failures-" + std::to_string(::getpid()) + "-" + std::to_string(port);
  std::vector<std::string> work{worker, dir.path().string(), "--fail-rank", "3", "--wait-world",
                                "4",    "--sleep-ms",        "60000"};
  if (victims_ms >= 0) work.insert(work.end(), {"--peer-closed-ms", std::to_string(victims_ms)});
  Background node0(node_args(backend, 0, port, id, work), dir.file("out0"), dir.file("err0"),
                   with_error_file(dir.file("launcher0.json")));
  Background node1(node_args(backend, 1, port, id, work), dir.file("out1"), dir.file("err1"),
                   with_error_file(dir.file("launcher1.json")));
  // Before, the node without the failing rank ran on until its workers ended (60 s).
  const int code0 = node0.wait(30s), code1 = node1.wait(30s);
  INFO("node 0:\n" << node0.err() << "\nnode 1:\n" << node1.err());
  CHECK(code0 == 1);
  CHECK(code1 == 1);
  for (const std::string& err : {node0.err(), node1.err()}) {
    const std::string root = root_cause_of(err);
    CHECK_THAT(root, Catch::Contains("rank      : 3 (local_rank: 1)"));
    CHECK_THAT(root, Catch::Contains("traceback : std::runtime_error: launch_worker rank 3 failed on purpose"));
    CHECK_THAT(root, !Catch::Contains("collateral"));
    CHECK_THAT(root, !Catch::Contains("peer closed"));
  }
  // Every other rank is shown on its node, labelled collateral.
  const std::string failures0 = failures_of(node0.err());
  for (const char* rank : {"rank      : 0 (local_rank: 0)", "rank      : 1 (local_rank: 1)"}) {
    auto at = failures0.find(rank);
    REQUIRE(at != std::string::npos);
    CHECK(failures0.find("  collateral: ", at) != std::string::npos);
  }
  const std::string failures1 = failures_of(node1.err());
  CHECK_THAT(failures1, Catch::Contains("rank      : 2 (local_rank: 0)"));
  CHECK_THAT(failures1, Catch::Contains("collateral: "));
  // Each launcher's own error file holds the root cause's record.
  for (const char* file : {"launcher0.json", "launcher1.json"}) {
    INFO(file);
    REQUIRE(file_exists(dir.file(file)));
    auto data = nlohmann::json::parse(read_file(dir.file(file)));
    CHECK(data["message"]["message"] == "std::runtime_error: launch_worker rank 3 failed on purpose");
    CHECK(data["message"]["errorCode"] == 1);  // its exit code, as torchrun's copy sets it
    // Throw-site traces are off in sanitizer builds (their runtime interposes __cxa_throw).
    if (!elastic::testing::under_sanitizer)
      CHECK_THAT(data["message"]["extraInfo"]["py_callstack"].get<std::string>(), Catch::Contains("work()"));
  }
}

TEST_CASE("job failures: with a restart left, every node restarts after a failure on one of them") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  const int port = free_port();
  const std::string id = "job-restarts-" + std::to_string(::getpid()) + "-" + std::to_string(port);
  const std::vector<std::string> work{"--max-restarts=1", worker, dir.path().string(), "--fail-rank", "3",
                                      "--wait-world",     "4",    "--sleep-ms",        "60000"};
  Background node0(node_args(backend, 0, port, id, work), dir.file("out0"), dir.file("err0"), quiet_launch_options());
  Background node1(node_args(backend, 1, port, id, work), dir.file("out1"), dir.file("err1"), quiet_launch_options());
  const int code0 = node0.wait(30s), code1 = node1.wait(30s);
  INFO("node 0:\n" << node0.err() << "\nnode 1:\n" << node1.err());
  CHECK(code0 == 1);
  CHECK(code1 == 1);
  for (const std::string& err : {node0.err(), node1.err()}) {
    CHECK_THAT(err, Catch::Contains("restarting (1 of 1 restarts)"));
    CHECK_THAT(root_cause_of(err), Catch::Contains("rank      : 3 (local_rank: 1)"));
  }
  // The restarted rank 0 saw restart count 1.
  CHECK(read_env_file(dir.file("0"))["TORCHELASTIC_RESTART_COUNT"] == "1");
}

TEST_CASE("job failures: reports travel in the order of publication, and one's own are not read back") {
  auto store = std::make_shared<elastic::testing::InMemoryStore>();
  auto a_session = store->session(), b_session = store->session();
  elastic::launcher::FailureBoard a(*a_session, "round/0/failures/"), b(*b_session, "round/0/failures/");
  const std::int64_t now = elastic::errors::detail::now_nanoseconds();
  CHECK(a.others().empty());
  CHECK(a.publish(report_of(3, now)) == 1);
  CHECK(a.others().empty());
  auto seen = b.others();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].global_rank == 3);
  CHECK(seen[0].final);
  CHECK(seen[0].failure.host == "node1");
  CHECK(seen[0].failure.time_ns == now);
  CHECK(seen[0].failure.message == "rank 3 failed");
  CHECK(b.publish(report_of(0, now + 150'000'000)) == 2);
  CHECK(a.others().size() == 1);
  // A long traceback is cut, not carried whole.
  auto long_report = report_of(1, now);
  long_report.failure.message = std::string(100000, 'x');
  b.publish(long_report);
  auto all = a.others();
  REQUIRE(all.size() == 2);
  CHECK(all[1].failure.message.get<std::string>().size() < 40000);
}

TEST_CASE("job failures: a hostile value is ignored, a report never written is given up on, no hang") {
  auto store = std::make_shared<elastic::testing::InMemoryStore>();
  auto session = store->session();
  elastic::launcher::FailureBoard board(*session, "f/");
  session->add("f/count", 3);
  session->set("f/1", "not json");
  session->set("f/2", R"({"rank": "three"})");
  // f/3 announced, never written: its node died while publishing.
  CHECK(board.others().empty());
  CHECK(board.lost() == 2);
  std::this_thread::sleep_for(elastic::launcher::FailureBoard::lost_after + 100ms);
  CHECK(board.others().empty());
  CHECK(board.lost() == 3);
}

TEST_CASE("job failures: a host whose clock is seconds apart has its failure's time moved to this clock") {
  auto store = std::make_shared<elastic::testing::InMemoryStore>();
  auto session = store->session();
  const std::int64_t now = elastic::errors::detail::now_nanoseconds();
  auto report = report_of(3, now);
  report.failure.time_ns = now + 7'000'000'000;  // its clock is 7 s ahead
  report.published_ns = now + 7'000'000'000;
  session->add("f/count", 1);
  session->set("f/1", elastic::launcher::detail::encode_report(report));
  elastic::launcher::FailureBoard board(*session, "f/");
  auto seen = board.others();
  REQUIRE(seen.size() == 1);
  CHECK(std::abs(seen[0].failure.time_ns - now) < 1'000'000'000);
  CHECK(seen[0].failure.timestamp == seen[0].failure.time_ns / 1'000'000'000);
}

TEST_CASE("job failures: the earliest failure is the root cause, later ones and simultaneous ones are collateral") {
  const std::int64_t t = 1'700'000'000'500'000'000;
  elastic::ChildFailedError::Failures local;
  local.emplace(0, report_of(0, t + 150'000'000).failure);  // a victim on this node, 150 ms later
  auto failures = elastic::launcher::merge_job_failures(local, {report_of(3, t)}, true);
  elastic::ChildFailedError error("trainer", failures);
  CHECK(error.get_first_failure().first == 3);
  CHECK(failures.at(0).collateral == "failed 150 ms after rank 3, the job's first failure");
  const std::string summary = error.format_msg();
  CHECK_THAT(summary, Catch::Contains("  collateral: failed 150 ms after rank 3, the job's first failure"));
  CHECK_THAT(summary, Catch::Contains("  host      : node1"));

  // Two nodes failing within the same millisecond: the order is not known, and said.
  auto same = elastic::launcher::merge_job_failures({}, {report_of(3, t), report_of(1, t + 200'000)}, true);
  CHECK(same.at(1).collateral == "failed within 1 ms of rank 3 (which came first is not known)");
  CHECK(same.at(3).collateral.empty());

  // The same second (torchrun's whole-second timestamps tie): the time below it decides.
  auto tie = elastic::launcher::merge_job_failures({}, {report_of(2, t + 300'000'000), report_of(1, t + 1)}, true);
  CHECK(elastic::ChildFailedError("trainer", tie).get_first_failure().first == 1);

  // One node's job: no labels, torchrun's summary.
  auto alone = elastic::launcher::merge_job_failures(local, {}, false);
  CHECK(alone.at(0).collateral.empty());
  CHECK_THAT(elastic::ChildFailedError("trainer", alone).format_msg(), !Catch::Contains("collateral"));
}
