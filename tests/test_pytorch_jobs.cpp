// Real PyTorch jobs under elastic-run: Debian's python3-torch workers join a gloo
// process group, all_reduce, fail, restart and span two launchers, exactly as
// they would under torchrun. Nothing is mocked: the launcher and PyTorch run.
//
// Every worker bounds its waits (--timeout, passed to init_process_group), and
// every launcher run has a deadline, so a job that cannot form fails the test
// instead of hanging it. Ports are picked free at test time so tests can run
// in parallel.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "support/jobs.hpp"
#include "support/subprocess.hpp"

using elastic::testing::files_in;
using elastic::testing::free_port;
using elastic::testing::read_file;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::RunResult;
using elastic::testing::system_python;
using elastic::testing::TempDir;
using elastic::testing::write_file;
namespace fs = std::filesystem;

namespace {

const std::string elastic_run = ELASTIC_PYTORCH_JOBS_LAUNCHER;
const std::string jobs_dir = std::string(ELASTIC_TEST_PYTHON_DIR) + "/jobs";
const std::string job_worker = jobs_dir + "/job_worker.py";

// The environment of a launch: Debian's interpreter (python3 on PATH may be
// another Python without torch), and nothing from the caller that would
// change the launcher's options.
RunOptions job_options(std::map<std::string, std::string> extra = {}, std::vector<std::string> unset = {}) {
  std::map<std::string, std::string> env = {{"PYTHON_EXEC", system_python()}, {"OMP_NUM_THREADS", "1"}};
  for (auto& [name, value] : extra) env[name] = value;
  for (const auto& name : unset) env.erase(name);
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    if (entry.rfind("PET_", 0) == 0 || entry.rfind("TORCHELASTIC_", 0) == 0)
      unset.push_back(entry.substr(0, entry.find('=')));
  }
  // Log directories made without --log-dir are never removed (as with torchrun):
  // keep them in a scratch TMPDIR that goes away with the test program.
  static TempDir scratch;
  if (!env.count("TMPDIR")) env["TMPDIR"] = scratch.path().string();
  RunOptions options(env, unset);
  // Below the test's own CTest limit, far above a healthy run.
  options.with_timeout(std::chrono::seconds(100));
  return options;
}

// Runs elastic-run; safe on any thread (Catch2's macros are not).
RunResult run_launcher(const std::vector<std::string>& args, const RunOptions& options = job_options()) {
  std::vector<std::string> argv = {elastic_run};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, options);
}

// run_launcher() on the test's thread, its output kept for a failure's report.
RunResult launch(const std::vector<std::string>& args, const RunOptions& options = job_options()) {
  RunResult result = run_launcher(args, options);
  UNSCOPED_INFO("elastic-run exit code " << result.exitcode << (result.timed_out ? " (timed out)" : "")
                                         << "\n--- stdout\n"
                                         << result.out << "\n--- stderr\n"
                                         << result.err);
  return result;
}

// What rank `rank` wrote to --out-dir.
nlohmann::json seen_by(const TempDir& dir, int rank) {
  const std::string path = dir.file(std::to_string(rank));
  INFO("no report from rank " << rank);
  REQUIRE(fs::exists(path));
  return nlohmann::json::parse(read_file(path));
}

std::set<std::string> rank_names(int world_size) {
  std::set<std::string> names;
  for (int rank = 0; rank < world_size; ++rank) names.insert(std::to_string(rank));
  return names;
}

// Every rank joined one group of `world_size` and its all_reduce summed to all ones.
void check_group_formed(const TempDir& out, const RunResult& result, int world_size,
                        const std::string& agent_store = "True") {
  REQUIRE_FALSE(result.timed_out);
  REQUIRE(result.exitcode == 0);
  REQUIRE(files_in(out.path()) == rank_names(world_size));
  const std::vector<int> ones(static_cast<std::size_t>(world_size), 1);
  for (int rank = 0; rank < world_size; ++rank) {
    auto seen = seen_by(out, rank);
    CHECK(seen["RANK"] == std::to_string(rank));
    CHECK(seen["WORLD_SIZE"] == std::to_string(world_size));
    CHECK(seen["all_reduce"].get<std::vector<int>>() == ones);
    CHECK(seen["TORCHELASTIC_USE_AGENT_STORE"] == agent_store);
    CHECK(seen["is_torchelastic_launched"] == true);
  }
}

void check_init_method(const std::string& init_method_of_port) {
  TempDir out;
  const int port = free_port();
  // tcp:// names MASTER_PORT, as in PyTorch's test: with the agent store its workers
  // connect there as clients too.
  const std::string init_method = std::regex_replace(init_method_of_port, std::regex("PORT"), std::to_string(port));
  auto result = launch({"--run-path", "--nnodes=1", "--nproc-per-node=4", "--master-addr=localhost",
                        "--master-port=" + std::to_string(port), "--monitor-interval=1", job_worker,
                        "--init-method=" + init_method, "--out-dir", out.path().string()});
  check_group_formed(out, result, 4);
  for (int rank = 0; rank < 4; ++rank) {
    CHECK(seen_by(out, rank)["MASTER_PORT"] == std::to_string(port));
    CHECK_THAT(result.out, Catch::Contains("rank " + std::to_string(rank) + "/4 attempt 0: all_reduce ok"));
  }
}

}  // namespace

TEST_CASE("test_init_method_env_with_torchelastic", "[pytorch][jobs]") { check_init_method("env://"); }

TEST_CASE("test_init_method_tcp_with_torchelastic", "[pytorch][jobs]") { check_init_method("tcp://localhost:PORT"); }

TEST_CASE("test_launch_user_script_python", "[pytorch][jobs]") {
  TempDir out;
  const int port = free_port();
  const std::string run_id = "job-" + std::to_string(::getpid());
  auto result = launch({"--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=static",
                        "--rdzv-endpoint=localhost:" + std::to_string(port), "--rdzv-id=" + run_id,
                        "--monitor-interval=1", "--start-method=spawn", job_worker, "--out-dir", out.path().string()});
  check_group_formed(out, result, 2);
  for (int rank = 0; rank < 2; ++rank) {
    auto seen = seen_by(out, rank);
    CHECK(seen["TORCHELASTIC_RUN_ID"] == run_id);
    CHECK(seen["MASTER_ADDR"] == "localhost");
    CHECK(seen["MASTER_PORT"] == std::to_string(port));
    CHECK(seen["executable"] == system_python());
  }
}

TEST_CASE("test_launch_user_script_python_caffe2_bc", "[pytorch][jobs]") {
  // The static master-address options of the older launch utilities, in the
  // underscore spellings torchrun 1.13 knows.
  TempDir out;
  const int port = free_port();
  auto result = launch({"--nnodes=1", "--nproc_per_node=2", "--monitor_interval=1", "--start_method=spawn",
                        "--master_addr=localhost", "--master_port=" + std::to_string(port), "--node_rank=0", job_worker,
                        "--out-dir", out.path().string()});
  check_group_formed(out, result, 2);
  for (int rank = 0; rank < 2; ++rank) {
    CHECK(seen_by(out, rank)["LOCAL_RANK"] == std::to_string(rank));
    CHECK(seen_by(out, rank)["TORCHELASTIC_RUN_ID"] == "none");
  }
}

TEST_CASE("test_launch_run_path", "[pytorch][jobs]") {
  // A script without the .py suffix: only --run-path makes it run under the
  // interpreter instead of being executed as a program.
  TempDir out, scripts;
  const std::string script = scripts.file("train");
  fs::copy_file(job_worker, script);
  fs::permissions(script, fs::perms::owner_read | fs::perms::owner_write);
  const std::string master_port = "--master-port=" + std::to_string(free_port());
  auto result = launch({"--run-path", "--nnodes=1", "--nproc-per-node=2", master_port, "--monitor-interval=1", script,
                        "--out-dir", out.path().string()});
  check_group_formed(out, result, 2);

  // torchrun's rule: --run-path wins over --no-python.
  TempDir with_no_python;
  auto both = launch({"--run-path", "--no-python", "--nproc-per-node=1", master_port, script, "--out-dir",
                      with_no_python.path().string()});
  check_group_formed(with_no_python, both, 1);

  TempDir not_run;
  auto without =
      launch({"--nnodes=1", "--nproc-per-node=1", master_port, script, "--out-dir", not_run.path().string()});
  CHECK(without.exitcode != 0);
  CHECK(files_in(not_run.path()).empty());
}

TEST_CASE("test_launch_standalone", "[pytorch][jobs]") {
  TempDir out;
  auto result = launch({"--nproc-per-node=2", "--standalone", "--monitor-interval=1", "--start-method=spawn",
                        job_worker, "--out-dir", out.path().string()});
  check_group_formed(out, result, 2);
  auto seen0 = seen_by(out, 0), seen1 = seen_by(out, 1);
  CHECK(seen0["MASTER_ADDR"] == "localhost");
  CHECK(seen0["MASTER_PORT"] == seen1["MASTER_PORT"]);
  // A fresh UUID per job, the same for all its workers.
  const std::string run_id = seen0["TORCHELASTIC_RUN_ID"];
  CHECK(std::regex_match(run_id, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")));
  CHECK(seen1["TORCHELASTIC_RUN_ID"] == run_id);
}

namespace {

std::string launched_by_elastic_run(const std::vector<std::string>& extra_options, RunResult* result_out = nullptr) {
  TempDir out;
  const std::string file = out.file("launched");
  std::vector<std::string> args = {"--nnodes=1", "--nproc-per-node=1", "--monitor-interval=1",
                                   "--master-port=" + std::to_string(free_port())};
  args.insert(args.end(), extra_options.begin(), extra_options.end());
  args.insert(args.end(), {job_worker, "--launched-file", file});
  auto result = launch(args);
  if (result_out != nullptr) *result_out = result;
  return fs::exists(file) ? read_file(file) : "<not written>";
}

}  // namespace

TEST_CASE("test_is_torchelastic_launched", "[pytorch][jobs]") { CHECK(launched_by_elastic_run({}) == "True"); }

TEST_CASE("test_is_not_torchelastic_launched", "[pytorch][jobs]") {
  TempDir out;
  auto result = run({system_python(), job_worker, "--launched-file", out.file("launched")},
                    RunOptions({}, {"TORCHELASTIC_RUN_ID"}));
  REQUIRE(result.exitcode == 0);
  CHECK(read_file(out.file("launched")) == "False");
}

TEST_CASE("test_is_torchelastic_launched_with_logs_spec_defined", "[pytorch][jobs]") {
  CHECK(launched_by_elastic_run({"--logs-specs=default"}) == "True");
}

TEST_CASE("test_logs_logs_spec_entrypoint_must_be_defined", "[pytorch][jobs]") {
  RunResult result;
  CHECK(launched_by_elastic_run({"--logs-specs=DOESNOT_EXIST"}, &result) == "<not written>");
  CHECK(result.exitcode == 2);
  CHECK_THAT(result.err, Catch::Contains("DOESNOT_EXIST"));
}

TEST_CASE("test_capture_logs_using_default_logs_specs", "[pytorch][jobs]") {
  TempDir out, logs;
  const std::string run_id = "capture-" + std::to_string(::getpid());
  auto result = launch(
      {"--nnodes=1", "--nproc-per-node=2", "--rdzv-id=" + run_id, "--redirects=3", "--tee=3", "--monitor-interval=1",
       "--start-method=spawn", "--log-dir", logs.path().string(), "--master-port=" + std::to_string(free_port()),
       "--no-python", jobs_dir + "/create_files.sh", out.path().string()},
      job_options({{"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "[rank${rank}]: "}}));
  REQUIRE(result.exitcode == 0);
  CHECK(files_in(out.path()) == rank_names(2));
  for (int rank = 0; rank < 2; ++rank) {
    const std::string r = std::to_string(rank);
    CHECK_THAT(result.out, Catch::Contains("[rank" + r + "]: creating " + out.file(r) + "\n"));
    CHECK_THAT(result.err, Catch::Contains("[rank" + r + "]: rank " + r + " done\n"));
  }
  // The files under the default layout hold the raw lines, without the prefix.
  std::vector<fs::path> run_dirs;
  for (const auto& entry : fs::directory_iterator(logs.path())) run_dirs.push_back(entry.path());
  REQUIRE(run_dirs.size() == 1);
  CHECK(run_dirs[0].filename().string().rfind(run_id + "_", 0) == 0);
  CHECK(read_file((run_dirs[0] / "attempt_0" / "1" / "stdout.log").string()) == "creating " + out.file("1") + "\n");
}

TEST_CASE("two launchers on one host form one job of 4 ranks", "[pytorch][jobs]") {
  TempDir out;
  const std::string port = std::to_string(free_port());
  auto node = [&](int node_rank) {
    return std::async(std::launch::async, [&, node_rank] {
      return run({elastic_run, "--nnodes=2", "--node-rank=" + std::to_string(node_rank), "--nproc-per-node=2",
                  "--master-addr=127.0.0.1", "--master-port=" + port, job_worker, "--timeout=60", "--out-dir",
                  out.path().string()},
                 job_options());
    });
  };
  auto node0 = node(0), node1 = node(1);
  RunResult first = node0.get(), second = node1.get();
  INFO("node 0:\n" << first.out << first.err << "\nnode 1:\n" << second.out << second.err);
  REQUIRE(second.exitcode == 0);
  check_group_formed(out, first, 4);
  for (int rank = 0; rank < 4; ++rank) {
    auto seen = seen_by(out, rank);
    CHECK(seen["GROUP_RANK"] == std::to_string(rank / 2));
    CHECK(seen["LOCAL_RANK"] == std::to_string(rank % 2));
    CHECK(seen["LOCAL_WORLD_SIZE"] == "2");
  }
  CHECK_THAT(first.out, Catch::Contains("rank 1/4 attempt 0: all_reduce ok"));
  CHECK_THAT(second.out, Catch::Contains("rank 2/4 attempt 0: all_reduce ok"));
}

TEST_CASE("two elastic launchers over the c10d rendezvous with --nnodes=1:2 form one gloo job of 4 ranks",
          "[pytorch][jobs]") {
  TempDir out;
  const std::string endpoint = "localhost:" + std::to_string(free_port());
  auto node = [&] {
    return std::async(std::launch::async, [&] {
      return run(
          {elastic_run, "--nnodes=1:2", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=" + endpoint,
           "--rdzv-id=gloo-elastic", "--rdzv-conf=last_call_timeout=60,join_timeout=90", job_worker, "--timeout=60",
           "--out-dir", out.path().string()},
          job_options());
    });
  };
  auto node0 = node(), node1 = node();
  RunResult first = node0.get(), second = node1.get();
  INFO("node 0:\n" << first.out << first.err << "\nnode 1:\n" << second.out << second.err);
  REQUIRE(second.exitcode == 0);
  check_group_formed(out, first, 4);
  for (int rank = 0; rank < 4; ++rank) {
    auto seen = seen_by(out, rank);
    CHECK(seen["GROUP_RANK"] == std::to_string(rank / 2));
    CHECK(seen["LOCAL_RANK"] == std::to_string(rank % 2));
  }
}

TEST_CASE("a restarted group forms again on the same port, without stale state", "[pytorch][jobs]") {
  // Rank 1 fails after joining the group on attempt 0. On attempt 1 the new
  // rank 0 hosts a new store on MASTER_PORT (its listener reuses the address
  // while attempt 0's connections are in TIME_WAIT); each worker checks that the
  // store counts exactly this attempt's joins.
  TempDir out;
  const std::string port = std::to_string(free_port());
  auto result = launch({"--nproc-per-node=2", "--max-restarts=1", "--master-addr=127.0.0.1", "--master-port=" + port,
                        job_worker, "--fail-rank=1", "--out-dir", out.path().string()});
  check_group_formed(out, result, 2);
  CHECK_THAT(result.out, Catch::Contains("rank 1/2 attempt 0: all_reduce ok"));
  CHECK_THAT(result.err, Catch::Contains("rank 1 fails on attempt 0 after joining the group"));
  for (int rank = 0; rank < 2; ++rank) {
    auto seen = seen_by(out, rank);
    CHECK(seen["TORCHELASTIC_RESTART_COUNT"] == "1");
    CHECK(seen["MASTER_PORT"] == port);
  }
}

TEST_CASE("a new rank 0 hosts its store on a port the old one's connections linger on", "[pytorch][jobs]") {
  // What a restart on MASTER_PORT relies on: PyTorch's store listener binds a
  // port that a plain listener is refused while the killed host's connections
  // are in FIN_WAIT/TIME_WAIT (it sets SO_REUSEADDR).
  auto result = run({system_python(), jobs_dir + "/store_port_reuse.py", std::to_string(free_port())},
                    RunOptions().with_timeout(std::chrono::seconds(100)));
  INFO(result.out << result.err);
  REQUIRE(result.exitcode == 0);
  auto seen = nlohmann::json::parse(result.out);
  CHECK(seen["lingering"].get<int>() > 0);
  CHECK(seen["plain_bind_refused"] == true);
  CHECK(seen["second_store_ok"] == true);
}

TEST_CASE("without restarts left, the failed PyTorch rank is the root cause", "[pytorch][jobs]") {
  TempDir out, logs;
  auto result = launch({"--nproc-per-node=2", "--master-port=" + std::to_string(free_port()), "--log-dir",
                        logs.path().string(), job_worker, "--fail-rank=1", "--out-dir", out.path().string()});
  CHECK(result.exitcode == 1);
  CHECK(files_in(out.path()).empty());
  CHECK_THAT(result.err, Catch::Contains("Root Cause (first observed failure):"));
  CHECK_THAT(result.err, Catch::Contains("rank      : 1 (local_rank: 1)"));
  // The traceback comes from PyTorch's own @record, through the error file.
  CHECK_THAT(result.err, Catch::Contains("RuntimeError: rank 1 fails on attempt 0 after joining the group"));
  CHECK_THAT(result.err, Catch::Contains("/attempt_0/1/error.json"));
}

TEST_CASE("a missing peer is a launcher-level timeout: no worker waits on PyTorch's own", "[pytorch][jobs]") {
  // Node 1 of 2 never starts; then node 0 never starts. Either way the launcher that
  // runs waits join_timeout for its peer, starts no worker, and says why.
  const std::string port = std::to_string(free_port());
  for (int node_rank : {0, 1}) {
    INFO("only node " << node_rank << " runs");
    TempDir out;
    auto result = launch({"--nnodes=2", "--node-rank=" + std::to_string(node_rank), "--nproc-per-node=2",
                          "--master-addr=127.0.0.1", "--master-port=" + port, "--rdzv-conf=join_timeout=3", job_worker,
                          "--out-dir", out.path().string()});
    REQUIRE_FALSE(result.timed_out);
    CHECK(result.exitcode == 1);
    CHECK_THAT(result.err, Catch::Contains("RendezvousTimeoutError: the static rendezvous of 2 nodes"));
    CHECK(files_in(out.path()).empty());
  }
}

namespace {

// Interpreters that say which one ran (the worker records ELASTIC_TEST_INTERPRETER):
// <dir>/exec-python and <dir>/python3; returns a PATH with <dir> first.
std::string fake_interpreters(const TempDir& bin) {
  for (const std::string name : {"exec-python", "python3"}) {
    write_file(bin.file(name),
               "#!/bin/sh\nELASTIC_TEST_INTERPRETER=" + name + " exec " + system_python() + " \"$@\"\n");
    fs::permissions(bin.file(name), fs::perms::owner_all);
  }
  return bin.path().string() + ":" + (std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin");
}

}  // namespace

TEST_CASE("a module run with -m uses PYTHON_EXEC and --start-method changes nothing", "[pytorch][jobs]") {
  TempDir bin, out;
  const std::string path = fake_interpreters(bin);
  auto result =
      launch({"--nproc-per-node=2", "--master-port=" + std::to_string(free_port()), "--start-method=fork", "-m",
              "job_worker", "--out-dir", out.path().string()},
             job_options({{"PYTHON_EXEC", bin.file("exec-python")}, {"PYTHONPATH", jobs_dir}, {"PATH", path}}));
  check_group_formed(out, result, 2);
  CHECK(seen_by(out, 0)["ELASTIC_TEST_INTERPRETER"] == "exec-python");
  CHECK(seen_by(out, 1)["ELASTIC_TEST_INTERPRETER"] == "exec-python");

  auto unknown = launch({"--start-method=thread", job_worker});
  CHECK(unknown.exitcode == 2);
}

TEST_CASE("a .py entry without PYTHON_EXEC runs under python3 from PATH", "[pytorch][jobs]") {
  TempDir bin, out;
  const std::string path = fake_interpreters(bin);
  auto result = launch({"--nproc-per-node=1", "--master-port=" + std::to_string(free_port()),
                        "--start-method=forkserver", job_worker, "--out-dir", out.path().string()},
                       job_options({{"PATH", path}}, {"PYTHON_EXEC"}));
  check_group_formed(out, result, 1);
  CHECK(seen_by(out, 0)["ELASTIC_TEST_INTERPRETER"] == "python3");
}

TEST_CASE("the README's DDP example trains under elastic-run", "[pytorch][jobs][example]") {
  // The command of docs/pytorch-jobs.md, with the interpreter rule applied.
  auto result = launch(
      {"--standalone", "--nproc-per-node=2", std::string(ELASTIC_SOURCE_DIR) + "/examples/pytorch/train_ddp.py"});
  REQUIRE(result.exitcode == 0);
  CHECK_THAT(result.out, Catch::Contains("step 4 loss "));
  CHECK_THAT(result.out, Catch::Contains("rank 0/2 (attempt 0): done, replicas in sync"));
  CHECK_THAT(result.out, Catch::Contains("rank 1/2 (attempt 0): done, replicas in sync"));
}

TEST_CASE("six concurrent single-node jobs on one host all form their own group", "[pytorch][jobs]") {
  // No --master-port, no PET_MASTER_PORT: each launcher holds a free port of its own,
  // so no job's ranks join another's group or find its port taken.
  // Twelve workers importing torch at once: on a loaded 2-core host this takes minutes,
  // so the deadline is longer than other cases' (still far below a hang's).
  std::vector<TempDir> outs(6);
  std::vector<std::future<RunResult>> jobs;
  auto options = job_options({}, {"PET_MASTER_PORT", "MASTER_PORT"});
  options.with_timeout(std::chrono::seconds(280));
  for (auto& out : outs)
    jobs.push_back(std::async(std::launch::async, [&out, &options] {
      return run_launcher({"--nproc-per-node=2", job_worker, "--out-dir", out.path().string(), "--timeout", "240"},
                          options);
    }));
  std::set<std::string> ports, run_ids;
  for (std::size_t job = 0; job < jobs.size(); ++job) {
    INFO("job " << job);
    auto result = jobs[job].get();
    check_group_formed(outs[job], result, 2);
    ports.insert(seen_by(outs[job], 0)["MASTER_PORT"].get<std::string>());
    run_ids.insert(seen_by(outs[job], 0)["TORCHELASTIC_RUN_ID"].get<std::string>());
    CHECK(seen_by(outs[job], 1)["MASTER_PORT"] == seen_by(outs[job], 0)["MASTER_PORT"]);
  }
  CHECK(ports.size() == 6);
  CHECK(run_ids.size() == 6);
}

TEST_CASE("a busy explicit master port fails clearly and never disturbs the job holding it", "[pytorch][jobs]") {
  TempDir out, other, hold;
  const std::string port = std::to_string(free_port());
  const std::string release = hold.file("release");
  auto holder = std::async(std::launch::async, [&] {
    return run_launcher({"--nproc-per-node=2", "--master-port=" + port, job_worker, "--out-dir", out.path().string(),
                         "--hold-until", release});
  });
  // The holder's group has formed once its rank 0 store answers on the port and its ranks
  // reported the all_reduce; they then wait for `release`.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  auto connects = [&] {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    return ok;
  };
  while (!connects() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto second = launch({"--nproc-per-node=2", "--master-port=" + port, job_worker, "--out-dir", other.path().string(),
                        "--timeout", "10"});
  CHECK(second.exitcode == 1);
  CHECK_THAT(second.err, Catch::Contains("master port " + port + " is busy on this host"));
  CHECK(files_in(other.path()).empty());
  write_file(release, "");
  check_group_formed(out, holder.get(), 2);
}

TEST_CASE("PyTorch's FileTimerClient against elastic-run's timer server", "[pytorch][jobs][timer]") {
  const std::string timer_worker = jobs_dir + "/timer_worker.py";
  // Every rank's step ends inside its timer, which is then released: the job succeeds.
  TempDir ok;
  auto fine = launch({"--nproc-per-node=2", timer_worker, ok.path().string(), "-1"},
                     job_options({{"TORCHELASTIC_ENABLE_FILE_TIMER", "1"}}));
  CHECK(fine.exitcode == 0);
  CHECK(files_in(ok.path()) == std::set<std::string>{"0", "0.timer", "1", "1.timer"});

  // Rank 1 hangs inside a 1 s timer: the launcher kills it and reports why.
  TempDir hung;
  auto r = launch({"--nproc-per-node=2", timer_worker, hung.path().string(), "1"},
                  job_options({{"TORCHELASTIC_ENABLE_FILE_TIMER", "1"}}));
  CHECK(r.exitcode == 1);
  CHECK(files_in(hung.path()) == std::set<std::string>{"0", "0.timer", "1.timer"});
  CHECK_THAT(r.err, Catch::Contains("rank      : 1 (local_rank: 1)"));
  CHECK_THAT(r.err, Catch::Contains("exitcode  : -9"));
  CHECK_THAT(r.err, Catch::Contains("timer expired (scope 'train_step')"));
}

TEST_CASE("Debian's torch 1.13 workers get NCCL_ASYNC_ERROR_HANDLING, the name it reads", "[pytorch][jobs]") {
  TempDir out;
  auto result = launch({"--nproc-per-node=1", job_worker, "--no-group", "--out-dir", out.path().string()},
                       job_options({}, {"NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_ASYNC_ERROR_HANDLING"}));
  REQUIRE(result.exitcode == 0);
  auto seen = seen_by(out, 0);
  CHECK(seen["NCCL_ASYNC_ERROR_HANDLING"] == "1");
  CHECK(seen["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1");
}

TEST_CASE("torch 1.13's TCPStore client gets every answer of its API from the launcher's store",
          "[pytorch][jobs][agent_store]") {
  auto result = launch({"--nproc-per-node=1", "--tee=3", system_python(), jobs_dir + "/agent_store_client.py"});
  REQUIRE(result.exitcode == 0);
  const auto start = result.out.find('{');
  REQUIRE(start != std::string::npos);
  auto seen = nlohmann::json::parse(result.out.substr(start, result.out.find('\n', start) - start));
  CHECK(seen["get"] == "v1");
  CHECK(seen["add_new"] == 5);
  CHECK(seen["add_again"] == 3);
  CHECK(seen["get_counter"] == "3");
  CHECK(seen["cas_swapped"] == "v2");
  CHECK(seen["cas_not_swapped"] == "v2");
  CHECK(seen["cas_missing_expected_empty"] == "new");
  CHECK(seen["cas_missing_expected_given"] == "x");
  CHECK(seen["wait_timed_out"] == true);
  CHECK(seen["waited_value"] == "x");
  // init/ (each client's join count), /k, /counter, /fresh, /later.
  CHECK(seen["num_keys"] == 5);
  CHECK(seen["delete_present"] == true);
  CHECK(seen["delete_absent"] == false);
  CHECK(seen["prefixed"] == std::vector<int>{0, 1, 'b', 'i', 'n', 'a', 'r', 'y'});
}

TEST_CASE("with --no-agent-store, worker rank 0 hosts the store, as before", "[pytorch][jobs][agent_store]") {
  TempDir out;
  auto result = launch({"--nproc-per-node=2", "--no-agent-store", "--master-addr=127.0.0.1",
                        "--master-port=" + std::to_string(free_port()), job_worker, "--out-dir", out.path().string()});
  check_group_formed(out, result, 2, "False");
}

TEST_CASE("the launcher's store serves its workers and closes a stranger's connection",
          "[pytorch][jobs][agent_store]") {
  TempDir out;
  auto job = std::async(std::launch::async, [&] {
    return run_launcher(
        {"--nproc-per-node=1", system_python(), jobs_dir + "/agent_store_client.py", "serve", out.path().string()});
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(out.file("port")) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::string port = fs::exists(out.file("port")) ? read_file(out.file("port")) : "0";
  // This test is no descendant of the launcher: its connection is closed unanswered.
  auto stranger = run({system_python(), jobs_dir + "/agent_store_client.py", port, "raw"},
                      RunOptions().with_timeout(std::chrono::seconds(30)));
  write_file(out.file("done"), "");
  RunResult result = job.get();
  INFO("elastic-run: " << result.exitcode << "\n"
                       << result.out << result.err << "\nstranger: " << stranger.out << stranger.err);
  REQUIRE(result.exitcode == 0);
  auto inside = nlohmann::json::parse(read_file(out.file("inside")));
  CHECK(inside["answered"] == true);
  CHECK(inside["value"] == 5);
  // torch 2.x's dialect, spoken by hand (no torch 2.x here): PING echoes its nonce,
  // APPEND extends, MULTI_GET answers each value.
  CHECK(inside["v2"]["pong"] == 12345);
  CHECK(inside["v2"]["multi_get"] ==
        "0400000000000000"
        "61626364"
        "0100000000000000"
        "78");
  CHECK(inside["oversized_closed"] == true);
  CHECK(inside["unknown_closed"] == true);
  REQUIRE(stranger.exitcode == 0);
  auto outside = nlohmann::json::parse(stranger.out);
  CHECK(outside["answered"] == false);
  CHECK_THAT(result.err, Catch::Contains("workers' store on port " + port + ": refused 127.0.0.1:"));
  CHECK_THAT(result.err, Catch::Contains("not a process of this job"));
  CHECK_THAT(result.err, Catch::Contains("a key of 1099511627776 bytes is over the limit"));
  CHECK_THAT(result.err, Catch::Contains("an unknown request type 200"));
}
