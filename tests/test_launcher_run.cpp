// Real runs of elastic-run: worker environment, logs and tee, failures and their
// summary, restarts, many workers.
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "support/launcher.hpp"

using namespace elastic::testing;
namespace fs = std::filesystem;

namespace {

const std::string worker = ELASTIC_TEST_LAUNCH_WORKER;

RunOptions base_options() {
  RunOptions options;
  options.unset_env = {"PET_NPROC_PER_NODE",
                       "PET_NNODES",
                       "PET_NO_PYTHON",
                       "PET_MODULE",
                       "OMP_NUM_THREADS",
                       "TORCHELASTIC_RUN_ID",
                       "TORCHELASTIC_ERROR_FILE",
                       "CUDA_VISIBLE_DEVICES",
                       "NCCL_ASYNC_ERROR_HANDLING",
                       "TORCH_NCCL_ASYNC_ERROR_HANDLING",
                       "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"};
  return options;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

fs::path only_subdir(const fs::path& dir) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_directory()) found.push_back(entry.path());
  REQUIRE(found.size() == 1);
  return found.front();
}

}  // namespace

TEST_CASE("user script: a shell worker per rank") {
  TempDir dir;
  auto r =
      elastic_run({"--nproc-per-node=4", "/bin/sh", "-c", "touch \"$0/$RANK\"", dir.path().string()}, base_options());
  REQUIRE(r.exitcode == 0);
  for (int rank = 0; rank < 4; ++rank) CHECK(file_exists(dir.file(std::to_string(rank))));
}

TEST_CASE("worker environment is torchrun's, with the inherited environment kept") {
  TempDir dir;
  auto options = base_options();
  options.set_env["MY_INHERITED"] = "kept";
  auto r = elastic_run({"--nproc-per-node=2", "--log-dir", dir.file("logs"), worker, dir.path().string()}, options);
  REQUIRE(r.exitcode == 0);
  CHECK(r.err.find("Setting OMP_NUM_THREADS environment variable for each process to be 1") != std::string::npos);
  for (int local_rank = 0; local_rank < 2; ++local_rank) {
    auto env = read_env_file(dir.file(std::to_string(local_rank)));
    const std::string lr = std::to_string(local_rank);
    CHECK(env["LOCAL_RANK"] == lr);
    CHECK(env["RANK"] == lr);
    CHECK(env["GROUP_RANK"] == "0");
    CHECK(env["ROLE_RANK"] == lr);
    CHECK(env["ROLE_NAME"] == "default");
    CHECK(env["LOCAL_WORLD_SIZE"] == "2");
    CHECK(env["WORLD_SIZE"] == "2");
    CHECK(env["GROUP_WORLD_SIZE"] == "1");
    CHECK(env["ROLE_WORLD_SIZE"] == "2");
    CHECK(env["MASTER_ADDR"] == "127.0.0.1");
    CHECK(env["MASTER_PORT"] == "29500");
    CHECK(env["TORCHELASTIC_RESTART_COUNT"] == "0");
    CHECK(env["TORCHELASTIC_MAX_RESTARTS"] == "0");
    CHECK(env["TORCHELASTIC_RUN_ID"] == "none");
    CHECK(env["TORCHELASTIC_USE_AGENT_STORE"] == "False");
    CHECK(env["NCCL_ASYNC_ERROR_HANDLING"] == "1");
    CHECK(env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1");
    CHECK(env["OMP_NUM_THREADS"] == "1");
    CHECK(env["MY_INHERITED"] == "kept");
    CHECK(env["open_fds"] == "0,1,2");
    CHECK(env["is_torchelastic_launched"] == "true");
    const std::string error_file = env["TORCHELASTIC_ERROR_FILE"];
    CHECK(error_file.rfind(dir.file("logs") + "/none_", 0) == 0);
    const std::string tail = "/attempt_0/" + lr + "/error.json";
    REQUIRE(error_file.size() > tail.size());
    CHECK(error_file.substr(error_file.size() - tail.size()) == tail);
  }
}

TEST_CASE("env vars: the user's OMP_NUM_THREADS and NCCL setting are kept, no warning") {
  TempDir dir;
  auto options = base_options();
  options.set_env["OMP_NUM_THREADS"] = "4";
  options.set_env["NCCL_ASYNC_ERROR_HANDLING"] = "0";
  auto r = elastic_run({"--nproc_per_node=2", "--role", "trainer", "--rdzv_id", "job7", "--max_restarts", "3", worker,
                        dir.path().string()},
                       options);
  REQUIRE(r.exitcode == 0);
  CHECK(r.err.find("OMP_NUM_THREADS") == std::string::npos);
  auto env = read_env_file(dir.file("1"));
  CHECK(env["OMP_NUM_THREADS"] == "4");
  CHECK(env["NCCL_ASYNC_ERROR_HANDLING"] == "0");
  CHECK(env["ROLE_NAME"] == "trainer");
  CHECK(env["TORCHELASTIC_RUN_ID"] == "job7");
  CHECK(env["TORCHELASTIC_MAX_RESTARTS"] == "3");
}

TEST_CASE("static multi-node: ranks of node K") {
  TempDir dir;
  auto r = elastic_run({"--nnodes=2", "--node-rank=1", "--nproc-per-node=2", "--master-addr=10.1.2.3",
                        "--master-port=1234", worker, dir.path().string()},
                       base_options());
  REQUIRE(r.exitcode == 0);
  CHECK(!file_exists(dir.file("0")));
  for (int rank : {2, 3}) {
    auto env = read_env_file(dir.file(std::to_string(rank)));
    CHECK(env["LOCAL_RANK"] == std::to_string(rank - 2));
    CHECK(env["GROUP_RANK"] == "1");
    CHECK(env["ROLE_RANK"] == std::to_string(rank));
    CHECK(env["WORLD_SIZE"] == "4");
    CHECK(env["GROUP_WORLD_SIZE"] == "2");
    CHECK(env["ROLE_WORLD_SIZE"] == "4");
    CHECK(env["MASTER_ADDR"] == "10.1.2.3");
    CHECK(env["MASTER_PORT"] == "1234");
  }
}

TEST_CASE("standalone: localhost, a free port, a new run id") {
  TempDir dir;
  auto r = elastic_run({"--standalone", "--nproc-per-node=2", worker, dir.path().string()}, base_options());
  REQUIRE(r.exitcode == 0);
  auto env0 = read_env_file(dir.file("0"));
  auto env1 = read_env_file(dir.file("1"));
  CHECK(env0["MASTER_ADDR"] == "localhost");
  CHECK(env0["MASTER_PORT"] != "29500");
  CHECK(std::stoi(env0["MASTER_PORT"]) > 0);
  CHECK(std::regex_match(env0["TORCHELASTIC_RUN_ID"],
                         std::regex("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")));
  CHECK(env0["TORCHELASTIC_RUN_ID"] == env1["TORCHELASTIC_RUN_ID"]);
  CHECK(env0["MASTER_PORT"] == env1["MASTER_PORT"]);
}

TEST_CASE("is_torchelastic_launched: true under the launcher, false without") {
  TempDir dir;
  auto r = elastic_run({worker, dir.path().string()}, base_options());
  REQUIRE(r.exitcode == 0);
  CHECK(read_env_file(dir.file("0"))["is_torchelastic_launched"] == "true");

  auto options = base_options();
  options.set_env["RANK"] = "direct";
  auto direct = run({worker, dir.path().string()}, options);
  REQUIRE(direct.exitcode == 0);
  CHECK(read_env_file(dir.file("direct"))["is_torchelastic_launched"] == "false");
}

TEST_CASE("virtual local rank: LOCAL_RANK 0 and one device per worker") {
  TempDir dir;
  auto r = elastic_run({"--virtual-local-rank", "--nproc-per-node=2", worker, dir.path().string()}, base_options());
  REQUIRE(r.exitcode == 0);
  for (int rank : {0, 1}) {
    auto env = read_env_file(dir.file(std::to_string(rank)));
    CHECK(env["LOCAL_RANK"] == "0");
    CHECK(env["RANK"] == std::to_string(rank));
    CHECK(env["CUDA_VISIBLE_DEVICES"] == std::to_string(rank));
  }
}

TEST_CASE("capture logs: tee with the prefix template, redirects to files only") {
  TempDir dir;
  const std::string script = "echo out-$RANK; echo err-$RANK >&2; printf 'last-%s' $RANK";
  SECTION("default prefix, tee both streams, log files hold the raw bytes") {
    auto r = elastic_run({"--nproc-per-node=2", "--tee=3", "--log-dir", dir.file("logs"), "/bin/sh", "-c", script},
                         base_options());
    REQUIRE(r.exitcode == 0);
    CHECK(r.out.find("[default0]:out-0\n") != std::string::npos);
    CHECK(r.out.find("[default1]:out-1\n") != std::string::npos);
    CHECK(r.out.find("[default1]:last-1\n") != std::string::npos);  // flushed without its newline
    CHECK(r.err.find("[default0]:err-0\n") != std::string::npos);
    fs::path attempt = only_subdir(dir.file("logs")) / "attempt_0";
    CHECK(read_file((attempt / "0" / "stdout.log").string()) == "out-0\nlast-0");
    CHECK(read_file((attempt / "1" / "stderr.log").string()) == "err-1\n");
    struct stat st {};
    REQUIRE(::stat((attempt / "0").c_str(), &st) == 0);
    CHECK((st.st_mode & 077) == 0);
  }
  SECTION("prefix template from the flag and from the environment") {
    auto r = elastic_run(
        {"--nproc-per-node=2", "--tee=1", "--log-line-prefix-template=<${role_name}|${rank}|${local_rank}> ",
         "--log-dir", dir.file("logs"), "/bin/sh", "-c", script},
        base_options());
    REQUIRE(r.exitcode == 0);
    CHECK(r.out.find("<default|1|1> out-1\n") != std::string::npos);
    CHECK(r.err.find("[default") == std::string::npos);  // stderr not teed
    auto options = base_options();
    options.set_env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] = "R${rank}: ";
    auto e = elastic_run({"--tee=1", "--log-dir", dir.file("logs2"), "/bin/sh", "-c", script}, options);
    CHECK(e.out.find("R0: out-0\n") != std::string::npos);
  }
  SECTION("redirects only: nothing on the console") {
    auto r =
        elastic_run({"--nproc-per-node=2", "--redirects=3", "--log-dir", dir.file("logs"), "/bin/sh", "-c", script},
                    base_options());
    REQUIRE(r.exitcode == 0);
    CHECK(r.out.find("out-") == std::string::npos);
    fs::path attempt = only_subdir(dir.file("logs")) / "attempt_0";
    CHECK(read_file((attempt / "1" / "stdout.log").string()) == "out-1\nlast-1");
  }
  SECTION("per-rank map and --local-ranks-filter") {
    auto r =
        elastic_run({"--nproc-per-node=3", "--tee=0:1,1:1", "--log-dir", dir.file("logs"), "/bin/sh", "-c", script},
                    base_options());
    REQUIRE(r.exitcode == 0);
    CHECK(r.out.find("[default0]:out-0") != std::string::npos);
    CHECK(r.out.find("[default1]:out-1") != std::string::npos);
    CHECK(r.out.find("[default2]:") == std::string::npos);
    auto f = elastic_run({"--nproc-per-node=3", "--tee=3", "--local-ranks-filter=1", "--log-dir", dir.file("logs2"),
                          "/bin/sh", "-c", script},
                         base_options());
    REQUIRE(f.exitcode == 0);
    CHECK(f.out.find("[default1]:out-1") != std::string::npos);
    CHECK(f.out.find("[default0]") == std::string::npos);
    CHECK(f.out.find("[default2]") == std::string::npos);
  }
}

TEST_CASE("tee keeps every line whole and of one rank, binary bytes included") {
  TempDir dir;
  const int lines = 20000;
  auto r = elastic_run({"--nproc-per-node=4", "--tee=1", "--log-dir", dir.file("logs"), worker, dir.path().string(),
                        "--print-lines", std::to_string(lines)},
                       base_options());
  REQUIRE(r.exitcode == 0);
  std::map<int, int> next;
  std::regex pattern(R"(\[default(\d)\]:rank (\d) line (\d+))");
  int checked = 0;
  for (const auto& line : lines_of(r.out)) {
    std::smatch m;
    REQUIRE(std::regex_match(line, m, pattern));
    CHECK(m[1] == m[2]);
    int rank = std::stoi(m[1]);
    CHECK(std::stoi(m[3]) == next[rank]);  // in order, none lost
    ++next[rank];
    ++checked;
  }
  CHECK(checked == 4 * lines);

  auto binary = elastic_run({"--tee=1", "--log-dir", dir.file("logs2"), "/bin/sh", "-c", "printf 'a\\000b\\377c\\n'"},
                            base_options());
  REQUIRE(binary.exitcode == 0);
  CHECK(binary.out == std::string("[default0]:a\0b\377c\n", 17));
}

TEST_CASE("worker raising: summary with its message, exit code 1, error file copied") {
  TempDir dir;
  auto options = base_options();
  options.set_env["TORCHELASTIC_ERROR_FILE"] = dir.file("launcher_error.json");
  auto r = elastic_run({"--nproc-per-node=3", "--log-dir", dir.file("logs"), worker, dir.path().string(), "--fail-rank",
                        "1", "--sleep-ms", "0"},
                       options);
  CHECK(r.exitcode == 1);
  INFO(r.err);
  CHECK(r.err.find(worker + " FAILED") != std::string::npos);
  CHECK(r.err.find("Root Cause (first observed failure):") != std::string::npos);
  CHECK(r.err.find("rank      : 1 (local_rank: 1)") != std::string::npos);
  CHECK(r.err.find("exitcode  : 1 (pid: ") != std::string::npos);
  CHECK(r.err.find("launch_worker rank 1 failed on purpose") != std::string::npos);
  CHECK(r.err.find("/attempt_0/1/error.json") != std::string::npos);
  auto copied = nlohmann::json::parse(read_file(dir.file("launcher_error.json")));
  CHECK(copied["message"]["errorCode"] == 1);
  CHECK(copied.dump().find("failed on purpose") != std::string::npos);
}

TEST_CASE("workers the launcher stopped are not failures") {
  TempDir dir;
  auto r = elastic_run({"--nproc-per-node=3", worker, dir.path().string(), "--fail-rank", "2", "--sleep-ms", "30000"},
                       base_options());
  CHECK(r.exitcode == 1);
  CHECK(r.err.find("<NO_OTHER_FAILURES>") != std::string::npos);
  CHECK(r.err.find("closing signal SIGTERM") != std::string::npos);
  CHECK(r.err.find("rank      : 2 (local_rank: 2)") != std::string::npos);
  CHECK(r.err.find("rank      : 0") == std::string::npos);
}

TEST_CASE("restarts: new attempt directories and TORCHELASTIC_RESTART_COUNT") {
  TempDir dir;
  SECTION("succeeds on the second attempt") {
    auto r = elastic_run({"--nproc-per-node=2", "--max-restarts=3", "--log-dir", dir.file("logs"), "/bin/sh", "-c",
                          "echo $TORCHELASTIC_RESTART_COUNT >> \"$0/count_$RANK\"; "
                          "[ \"$TORCHELASTIC_RESTART_COUNT\" -ge 1 ] || [ $RANK = 0 ] || exit 3",
                          dir.path().string()},
                         base_options());
    CHECK(r.exitcode == 0);
    // Rank 0 may be stopped by the failure of rank 1 before it writes on attempt 0.
    CHECK(read_file(dir.file("count_1")) == "0\n1\n");
    fs::path run_dir = only_subdir(dir.file("logs"));
    CHECK(fs::is_directory(run_dir / "attempt_0" / "1"));
    CHECK(fs::is_directory(run_dir / "attempt_1" / "1"));
    CHECK(!fs::exists(run_dir / "attempt_2"));
  }
  SECTION("fails every attempt") {
    auto r = elastic_run({"--max-restarts=2", "--log-dir", dir.file("logs"), "/bin/sh", "-c",
                          "echo $TORCHELASTIC_RESTART_COUNT >> \"$0/count\"; exit 5", dir.path().string()},
                         base_options());
    CHECK(r.exitcode == 1);
    CHECK(read_file(dir.file("count")) == "0\n1\n2\n");
    CHECK(r.err.find("exitcode  : 5") != std::string::npos);
    fs::path run_dir = only_subdir(dir.file("logs"));
    CHECK(fs::is_directory(run_dir / "attempt_2"));
  }
}

TEST_CASE("64 workers at once") {
  TempDir dir;
  auto r = elastic_run({"--nproc-per-node=64", worker, dir.path().string()}, base_options());
  REQUIRE(r.exitcode == 0);
  for (int rank = 0; rank < 64; ++rank) CHECK(file_exists(dir.file(std::to_string(rank))));
  CHECK(read_env_file(dir.file("63"))["WORLD_SIZE"] == "64");
}

TEST_CASE("without --log-dir a private temporary directory is used and printed") {
  auto r = elastic_run({"/bin/true"}, base_options());
  REQUIRE(r.exitcode == 0);
  std::smatch m;
  REQUIRE(std::regex_search(r.err, m, std::regex("logs go to (\\S+)")));
  const std::string root = m[1];
  struct stat st {};
  REQUIRE(::stat(root.c_str(), &st) == 0);
  CHECK((st.st_mode & 077) == 0);
  std::error_code ec;
  fs::remove_all(root, ec);
}

namespace {
// The summary block, with what differs between runs masked: times, pids, paths, widths.
std::vector<std::string> summary_shape(const std::string& err) {
  std::vector<std::string> shape;
  bool inside = false;
  for (const auto& line : lines_of(err)) {
    const bool rule = !line.empty() && line.find_first_not_of('=') == std::string::npos;
    if (rule) inside = !inside || shape.empty();
    if (!inside && !rule) continue;
    std::string masked = line;
    if (rule)
      masked = "=";
    else if (!masked.empty() && masked.find_first_not_of('-') == std::string::npos)
      masked = "-";
    masked = std::regex_replace(masked, std::regex(R"(/\S+)"), "PATH");
    masked = std::regex_replace(masked, std::regex(R"(0x[0-9a-f]+)"), "ADDR");
    masked = std::regex_replace(masked, std::regex(R"(\d+)"), "N");
    shape.push_back(masked);
    if (rule && !inside) break;
  }
  return shape;
}
}  // namespace

TEST_CASE("the summary has torchrun's layout for the same command line") {
  // Debian's torchrun through the repository's runner (its Python 3.11 start-up fix).
  const std::string python = "/usr/bin/python3";
  const std::string torchrun = std::string(ELASTIC_SOURCE_DIR) + "/tests/conformance/torchrun.py";
  TempDir dir;
  auto options = base_options();
  options.set_env["OMP_NUM_THREADS"] = "1";
  const std::vector<std::string> job = {worker, dir.path().string(), "--fail-rank", "1", "--sleep-ms", "30000"};
  std::vector<std::string> ours = {"--nproc-per-node=2"};
  ours.insert(ours.end(), job.begin(), job.end());
  std::vector<std::string> theirs = {python,
                                     torchrun,
                                     "--nproc_per_node=2",
                                     "--no_python",
                                     "--monitor_interval=0.1",
                                     "--master_port=" + std::to_string(20000 + ::getpid() % 20000)};
  theirs.insert(theirs.end(), job.begin(), job.end());
  auto a = elastic_run(ours, options);
  auto b = run(theirs, with_scratch_tmpdir(options));
  REQUIRE(a.exitcode == 1);
  REQUIRE(b.exitcode == 1);
  auto shape_a = summary_shape(a.err);
  auto shape_b = summary_shape(b.err);
  INFO(a.err);
  INFO(b.err);
  REQUIRE(shape_a.size() > 8);
  CHECK(shape_a == shape_b);
  CHECK(std::find(shape_a.begin(), shape_a.end(), "PATH FAILED") != shape_a.end());
}
