// Real runs of elastic-run: worker environment, logs and tee, failures and their
// summary, restarts, many workers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "support/backends.hpp"
#include "support/launcher.hpp"
#include "support/other_user.hpp"
#include "support/skip.hpp"

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

const std::regex uuid_pattern("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}");

// A TCP socket listening on a free port of the loopback address.
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(fd, 8) == 0);
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
  }
  ~Listener() { ::close(fd); }
  // A client connects and is accepted: the listener still works.
  bool serves() const {
    int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bool ok = ::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    int accepted = ok ? ::accept(fd, nullptr, nullptr) : -1;
    ok = ok && accepted >= 0;
    if (accepted >= 0) ::close(accepted);
    ::close(client);
    return ok;
  }
};

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
    // A single node given no port: a free one and a run id of its own (as newest torchrun).
    CHECK(env["MASTER_PORT"] != "29500");
    CHECK(std::stoi(env["MASTER_PORT"]) > 0);
    CHECK(env["TORCHELASTIC_RESTART_COUNT"] == "0");
    CHECK(env["TORCHELASTIC_MAX_RESTARTS"] == "0");
    CHECK(std::regex_match(env["TORCHELASTIC_RUN_ID"], uuid_pattern));
    CHECK(env["TORCHELASTIC_USE_AGENT_STORE"] == "True");
    CHECK(env["TORCHELASTIC_SIGNALS_TO_HANDLE"] == "SIGTERM,SIGINT,SIGHUP,SIGQUIT");
    // A native worker gets only PyTorch 2.2's name (the old one makes 2.2+ warn).
    CHECK(env.count("NCCL_ASYNC_ERROR_HANDLING") == 0);
    CHECK(env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1");
    CHECK(env["OMP_NUM_THREADS"] == "1");
    CHECK(env["MY_INHERITED"] == "kept");
    CHECK(env["open_fds"] == "0,1,2");
    CHECK(env["is_torchelastic_launched"] == "true");
    const std::string error_file = env["TORCHELASTIC_ERROR_FILE"];
    CHECK(error_file.rfind(dir.file("logs") + "/" + env["TORCHELASTIC_RUN_ID"] + "_", 0) == 0);
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
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  const std::string script = "echo out-$RANK; echo err-$RANK >&2; printf 'last-%s' $RANK";
  SECTION("default prefix, tee both streams, log files hold the raw bytes") {
    auto r = elastic_run(
        on_backend(backend, {"--nproc-per-node=2", "--tee=3", "--log-dir", dir.file("logs"), "/bin/sh", "-c", script}),
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
    auto r = elastic_run(on_backend(backend, {"--nproc-per-node=2", "--tee=1",
                                              "--log-line-prefix-template=<${role_name}|${rank}|${local_rank}> ",
                                              "--log-dir", dir.file("logs"), "/bin/sh", "-c", script}),
                         base_options());
    REQUIRE(r.exitcode == 0);
    CHECK(r.out.find("<default|1|1> out-1\n") != std::string::npos);
    CHECK(r.err.find("[default") == std::string::npos);  // stderr not teed
    auto options = base_options();
    options.set_env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] = "R${rank}: ";
    auto e =
        elastic_run(on_backend(backend, {"--tee=1", "--log-dir", dir.file("logs2"), "/bin/sh", "-c", script}), options);
    CHECK(e.out.find("R0: out-0\n") != std::string::npos);
  }
  SECTION("redirects only: nothing on the console") {
    auto r = elastic_run(on_backend(backend, {"--nproc-per-node=2", "--redirects=3", "--log-dir", dir.file("logs"),
                                              "/bin/sh", "-c", script}),
                         base_options());
    REQUIRE(r.exitcode == 0);
    CHECK(r.out.find("out-") == std::string::npos);
    fs::path attempt = only_subdir(dir.file("logs")) / "attempt_0";
    CHECK(read_file((attempt / "1" / "stdout.log").string()) == "out-1\nlast-1");
  }
  SECTION("per-rank map and --local-ranks-filter") {
    auto r = elastic_run(on_backend(backend, {"--nproc-per-node=3", "--tee=0:1,1:1", "--log-dir", dir.file("logs"),
                                              "/bin/sh", "-c", script}),
                         base_options());
    REQUIRE(r.exitcode == 0);
    CHECK(r.out.find("[default0]:out-0") != std::string::npos);
    CHECK(r.out.find("[default1]:out-1") != std::string::npos);
    CHECK(r.out.find("[default2]:") == std::string::npos);
    auto f = elastic_run(on_backend(backend, {"--nproc-per-node=3", "--tee=3", "--local-ranks-filter=1", "--log-dir",
                                              dir.file("logs2"), "/bin/sh", "-c", script}),
                         base_options());
    REQUIRE(f.exitcode == 0);
    CHECK(f.out.find("[default1]:out-1") != std::string::npos);
    CHECK(f.out.find("[default0]") == std::string::npos);
    CHECK(f.out.find("[default2]") == std::string::npos);
    // A stream that is not teed is not shown for a rank the filter leaves out either
    // (torchrun sends it to /dev/null); the ranks it names keep their console.
    auto g = elastic_run(on_backend(backend, {"--nproc-per-node=3", "--tee=1", "--local-ranks-filter=1", "--log-dir",
                                              dir.file("logs3"), "/bin/sh", "-c", script}),
                         base_options());
    REQUIRE(g.exitcode == 0);
    CHECK(g.out.find("[default1]:out-1") != std::string::npos);
    CHECK(g.out.find("out-0") == std::string::npos);
    CHECK(g.err.find("err-1\n") != std::string::npos);
    CHECK(g.err.find("err-0") == std::string::npos);
    CHECK(g.err.find("err-2") == std::string::npos);
    fs::path attempt = only_subdir(dir.file("logs3")) / "attempt_0";
    CHECK(read_file((attempt / "0" / "stdout.log").string()) == "out-0\nlast-0");  // teed: still in its file
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
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  auto options = base_options();
  options.set_env["TORCHELASTIC_ERROR_FILE"] = dir.file("launcher_error.json");
  auto r = elastic_run(on_backend(backend, {"--nproc-per-node=3", "--log-dir", dir.file("logs"), worker,
                                            dir.path().string(), "--fail-rank", "1", "--sleep-ms", "0"}),
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
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  auto r = elastic_run(on_backend(backend, {"--nproc-per-node=3", worker, dir.path().string(), "--fail-rank", "2",
                                            "--sleep-ms", "30000"}),
                       base_options());
  CHECK(r.exitcode == 1);
  CHECK(r.err.find("<NO_OTHER_FAILURES>") != std::string::npos);
  CHECK(r.err.find("closing signal SIGTERM") != std::string::npos);
  CHECK(r.err.find("rank      : 2 (local_rank: 2)") != std::string::npos);
  CHECK(r.err.find("rank      : 0") == std::string::npos);
}

TEST_CASE("restarts: new attempt directories and TORCHELASTIC_RESTART_COUNT") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  SECTION("succeeds on the second attempt") {
    auto r = elastic_run(
        on_backend(backend, {"--nproc-per-node=2", "--max-restarts=3", "--log-dir", dir.file("logs"), "/bin/sh", "-c",
                             "echo $TORCHELASTIC_RESTART_COUNT >> \"$0/count_$RANK\"; "
                             "[ \"$TORCHELASTIC_RESTART_COUNT\" -ge 1 ] || [ $RANK = 0 ] || exit 3",
                             dir.path().string()}),
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
    auto r = elastic_run(
        on_backend(backend, {"--max-restarts=2", "--log-dir", dir.file("logs"), "/bin/sh", "-c",
                             "echo $TORCHELASTIC_RESTART_COUNT >> \"$0/count\"; exit 5", dir.path().string()}),
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
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  // At INFO, as torchrun: the default threshold (WARNING) keeps a healthy run quiet.
  auto quiet_run = elastic_run(on_backend(backend, {"/bin/true"}), base_options());
  REQUIRE(quiet_run.exitcode == 0);
  CHECK(quiet_run.err.find("logs go to") == std::string::npos);
  auto options = base_options();
  options.set_env["ELASTIC_LOG_LEVEL"] = "INFO";
  auto r = elastic_run(on_backend(backend, {"/bin/true"}), options);
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

TEST_CASE("a given master port and run id are kept, from the command line or PET_*") {
  TempDir dir;
  const std::string port = std::to_string(free_port());
  auto options = base_options();
  options.set_env["PET_MASTER_PORT"] = port;
  auto r = elastic_run({"--nproc-per-node=2", worker, dir.path().string()}, options);
  REQUIRE(r.exitcode == 0);
  auto env = read_env_file(dir.file("1"));
  CHECK(env["MASTER_PORT"] == port);
  CHECK(env["TORCHELASTIC_RUN_ID"] == "none");

  auto e = elastic_run({"--rdzv-endpoint=localhost:" + port, worker, dir.path().string()}, base_options());
  REQUIRE(e.exitcode == 0);
  CHECK(read_env_file(dir.file("0"))["MASTER_PORT"] == port);
  CHECK(read_env_file(dir.file("0"))["TORCHELASTIC_RUN_ID"] == "none");
}

TEST_CASE("concurrent single-node jobs without a port each get their own") {
  TempDir dir;
  // Each job's workers wait for a file, so all four jobs run at once.
  std::vector<std::unique_ptr<Background>> jobs;
  for (int job = 0; job < 4; ++job) {
    const std::string sub = dir.file("job" + std::to_string(job));
    fs::create_directory(sub);
    jobs.push_back(
        std::make_unique<Background>(std::vector<std::string>{"--nproc-per-node=2", "/bin/sh", "-c",
                                                              "echo $MASTER_PORT $TORCHELASTIC_RUN_ID > \"$0/$RANK\"; "
                                                              "while [ ! -e \"$0/../go\" ]; do sleep 0.05; done",
                                                              sub},
                                     sub + ".out", sub + ".err", base_options()));
  }
  for (int job = 0; job < 4; ++job)
    REQUIRE(wait_until([&] { return file_exists(dir.file("job" + std::to_string(job) + "/1")); }));
  write_file(dir.file("go"), "");
  std::set<std::string> ports, run_ids;
  for (int job = 0; job < 4; ++job) {
    CHECK(jobs[static_cast<std::size_t>(job)]->wait() == 0);
    const std::string sub = dir.file("job" + std::to_string(job));
    std::istringstream rank0(read_file(sub + "/0")), rank1(read_file(sub + "/1"));
    std::string port0, id0, port1, id1;
    rank0 >> port0 >> id0;
    rank1 >> port1 >> id1;
    CHECK(port0 == port1);
    CHECK(id0 == id1);
    ports.insert(port0);
    run_ids.insert(id0);
  }
  CHECK(ports.size() == 4);
  CHECK(run_ids.size() == 4);
}

TEST_CASE("a master port another process listens on fails clearly and leaves the listener alone") {
  TempDir dir;
  Listener listener;
  const std::string port = std::to_string(listener.port);
  auto r = elastic_run(
      {"--nproc-per-node=2", "--master-port=" + port, "/bin/sh", "-c", "touch \"$0/$RANK\"", dir.path().string()},
      base_options());
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("elastic-run: error: master port " + port +
                                    " is busy on this host (a process listens on it)"));
  CHECK(fs::is_empty(dir.path()));
  CHECK(listener.serves());
}

TEST_CASE("a master port another elastic-run job holds fails clearly and the job runs on") {
  TempDir dir;
  const std::string port = std::to_string(free_port());
  fs::create_directory(dir.file("a"));
  fs::create_directory(dir.file("b"));
  Background first({"--nproc-per-node=2", "--master-port=" + port, "/bin/sh", "-c",
                    "touch \"$0/a/$RANK\"; while [ ! -e \"$0/go\" ]; do sleep 0.05; done", dir.path().string()},
                   dir.file("a.out"), dir.file("a.err"), base_options());
  REQUIRE(wait_until([&] { return file_exists(dir.file("a/1")); }));
  auto second = elastic_run(
      {"--nproc-per-node=2", "--master-port=" + port, "/bin/sh", "-c", "touch \"$0/b/$RANK\"", dir.path().string()},
      base_options());
  CHECK(second.exitcode == 1);
  CHECK_THAT(second.err,
             Catch::Contains("master port " + port + " is busy on this host (another elastic-run job holds it)"));
  CHECK(fs::is_empty(dir.file("b")));
  write_file(dir.file("go"), "");
  CHECK(first.wait() == 0);
}

namespace {

// How a squatter holds a port's mark: bound only (a connection is refused), listening
// (its credentials show another uid), or listening with its queue full (a connection
// would block).
enum class Squat { bound, listening, full };

// A process of `nobody` holding the abstract name that marks `port`, until it goes
// out of scope.
class MarkSquatter {
 public:
  MarkSquatter(int port, Squat how) {
    const std::string name = elastic::launcher::PortReservation::mark_name(port);
    int ready[2];
    if (::pipe(ready) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(ready[0]);
      if (!become_user(nobody)) ::_exit(126);
      const int fd = elastic::launcher::detail::bind_abstract_socket(name);
      if (fd < 0) ::_exit(125);
      if (how != Squat::bound && ::listen(fd, 0) != 0) ::_exit(124);
      if (how == Squat::full) {
        // A queue of 0 takes one connection; the next would block.
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::memcpy(address.sun_path + 1, name.data(), name.size());
        const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
        for (int i = 0; i < 2; ++i) {
          const int client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
          if (::connect(client, reinterpret_cast<sockaddr*>(&address), length) != 0 && i == 0) ::_exit(123);
        }
      }
      const char byte = 1;
      if (::write(ready[1], &byte, 1) != 1) ::_exit(122);
      for (;;) ::pause();
    }
    ::close(ready[1]);
    char byte = 0;
    ready_ = ::read(ready[0], &byte, 1) == 1;
    ::close(ready[0]);
  }
  MarkSquatter(const MarkSquatter&) = delete;
  MarkSquatter& operator=(const MarkSquatter&) = delete;
  ~MarkSquatter() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  bool ready() const { return ready_; }

 private:
  pid_t pid_ = -1;
  bool ready_ = false;
};

}  // namespace

TEST_CASE("another user squatting a master port's mark does not stop a single-node launch") {
  // A local user's attack: anyone can bind an abstract name, so another uid takes the
  // name that marks the port before the launcher does. The launcher passes over a mark
  // not shown to be its own uid's and judges the port by binding it.
  if (!can_be_another_user()) ELASTIC_SKIP("starting processes of another uid needs root");
  const Squat how = GENERATE(Squat::bound, Squat::listening, Squat::full);
  INFO("squat " << static_cast<int>(how));
  TempDir dir;
  const int port = free_port();
  MarkSquatter squatter(port, how);
  REQUIRE(squatter.ready());
  auto r = elastic_run({"--nproc-per-node=2", "--master-port=" + std::to_string(port), "/bin/sh", "-c",
                        "touch \"$0/$RANK\"", dir.path().string()},
                       base_options());
  INFO(r.err);
  CHECK(r.exitcode == 0);
  CHECK(file_exists(dir.file("0")));
  CHECK(file_exists(dir.file("1")));
  CHECK_THAT(r.err, Catch::Contains("port " + std::to_string(port) + ": its elastic-run mark is held by"));
  CHECK_THAT(r.err, Catch::Contains(how == Squat::listening ? "uid 65534" : "a socket that does not answer"));
}

TEST_CASE("no free port to be had says why") {
  // No descriptor left for a socket: picking a port fails, and the message says what failed.
  int out[2];
  REQUIRE(::pipe(out) == 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(out[0]);
    std::string what = "no error";
    const rlimit none{3, 3};  // stdin, stdout and stderr only
    if (::dup2(out[1], 2) < 0 || ::setrlimit(RLIMIT_NOFILE, &none) != 0) ::_exit(1);
    try {
      elastic::launcher::PortReservation::any();
    } catch (const elastic::launcher::PortBusyError& e) {
      what = e.what();
    }
    const ssize_t ignored = ::write(2, what.data(), what.size());
    (void)ignored;
    ::_exit(0);
  }
  ::close(out[1]);
  std::string what;
  char buffer[512];
  for (ssize_t got; (got = ::read(out[0], buffer, sizeof(buffer))) > 0;) what.append(buffer, static_cast<size_t>(got));
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(what == "no free port could be held on this host (binding a port the kernel picks failed: " +
                    std::string(std::strerror(EMFILE)) + ")");
}

TEST_CASE("shutdown timeout after a worker failure: TORCH_ELASTIC_SHUTDOWN_TIMEOUT, --shutdown-timeout wins") {
  // Rank 1 fails once rank 0 ignores SIGTERM; rank 0 would sleep 100 s: only SIGKILL, after
  // the shutdown timeout, ends it. Generous bounds tell 1 s from 100 s.
  TempDir dir;
  const std::vector<std::string> job = {
      "--nproc-per-node=2", "/bin/sh", "-c",
      "if [ $RANK = 1 ]; then while [ ! -e \"$0/trapped\" ]; do sleep 0.02; done; rm \"$0/trapped\"; exit 3; fi; "
      "trap '' TERM; touch \"$0/trapped\"; sleep 100",
      dir.path().string()};
  auto options = base_options();
  options.set_env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "1";
  auto start = std::chrono::steady_clock::now();
  auto r = elastic_run(job, options);
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("forcefully exiting via SIGKILL"));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(60));

  options.set_env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "1000";
  std::vector<std::string> zero = {"--shutdown-timeout=0"};
  zero.insert(zero.end(), job.begin(), job.end());
  start = std::chrono::steady_clock::now();
  auto z = elastic_run(zero, options);
  CHECK(z.exitcode == 1);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(60));
}

TEST_CASE("shutdown timeout on the signal path: PET_SHUTDOWN_TIMEOUT") {
  TempDir dir;
  auto options = base_options();
  options.set_env["PET_SHUTDOWN_TIMEOUT"] = "1";
  Background launcher(
      {"--nproc-per-node=2", "/bin/sh", "-c", "trap '' TERM; touch \"$0/$RANK\"; sleep 100", dir.path().string()},
      dir.file("out"), dir.file("err"), options);
  REQUIRE(wait_until([&] { return file_exists(dir.file("0")) && file_exists(dir.file("1")); }));
  launcher.signal(SIGTERM);
  CHECK(launcher.wait(std::chrono::seconds(60)) == 128 + SIGTERM);
}

TEST_CASE("the OMP_NUM_THREADS warning obeys ELASTIC_LOG_LEVEL") {
  auto options = base_options();
  options.set_env["ELASTIC_LOG_LEVEL"] = "ERROR";
  auto r = elastic_run({"--nproc-per-node=2", "/bin/sh", "-c", "test \"$OMP_NUM_THREADS\" = 1"}, options);
  CHECK(r.exitcode == 0);
  CHECK(r.err.find("OMP_NUM_THREADS") == std::string::npos);
}

namespace {
// The JSON objects on whole lines of `err`.
std::vector<nlohmann::json> events_in(const std::string& err) {
  std::vector<nlohmann::json> events;
  for (const auto& line : lines_of(err))
    if (!line.empty() && line.front() == '{') events.push_back(nlohmann::json::parse(line));
  return events;
}
}  // namespace

TEST_CASE("event log handler console: one JSON object per worker status on stderr, and null discards") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  auto r = elastic_run(on_backend(backend, {"--event-log-handler=console", "--nproc-per-node=2", "--rdzv-id=job9",
                                            "/bin/sh", "-c", "if [ $RANK = 1 ]; then exit 3; fi; sleep 30"}),
                       base_options());
  CHECK(r.exitcode == 1);
  auto events = events_in(r.err);
  REQUIRE(events.size() == 2);
  std::map<int, nlohmann::json> by_rank;
  for (const auto& event : events) {
    CHECK(event["source"] == "WORKER");
    by_rank[event["metadata"]["global_rank"].get<int>()] = event;
  }
  CHECK(by_rank[1]["name"] == "torchelastic.worker.status.FAILED");
  CHECK(by_rank[1]["metadata"]["state"] == "FAILED");
  CHECK(by_rank[1]["metadata"]["raw_error"].is_string());
  CHECK(by_rank[0]["name"] == "torchelastic.worker.status.TERMINATED");
  CHECK(by_rank[0]["metadata"]["raw_error"].is_null());
  for (auto& [rank, event] : by_rank) {
    const auto& md = event["metadata"];
    CHECK(md["run_id"] == "job9");
    CHECK(md["group_rank"] == 0);
    CHECK(md["role"] == "default");
    CHECK(md["rdzv_backend"] == backend);
    CHECK(md["agent_restarts"] == 0);
    CHECK(std::stoi(md["worker_id"].get<std::string>()) > 0);
    auto inner = nlohmann::json::parse(md["metadata"].get<std::string>());
    CHECK(inner["group_world_size"] == 1);
    CHECK(inner["entry_point"] == "/bin/sh");
    CHECK(inner["local_rank"] == nlohmann::json::array({rank}));
  }

  auto options = base_options();
  options.set_env["PET_EVENT_LOG_HANDLER"] = "console";
  auto ok = elastic_run(on_backend(backend, {"--nproc-per-node=2", "--max-restarts=1", "/bin/true"}), options);
  CHECK(ok.exitcode == 0);
  auto succeeded = events_in(ok.err);
  REQUIRE(succeeded.size() == 2);
  for (const auto& event : succeeded) CHECK(event["name"] == "torchelastic.worker.status.SUCCEEDED");

  auto quiet_run = elastic_run(on_backend(backend, {"--nproc-per-node=2", "/bin/true"}), base_options());
  CHECK(quiet_run.exitcode == 0);
  CHECK(events_in(quiet_run.err).empty());
  auto bad = elastic_run(on_backend(backend, {"--event-log-handler=file", "/bin/true"}), base_options());
  CHECK(bad.exitcode == 2);
  CHECK_THAT(bad.err, Catch::Contains("--event-log-handler must be null or console, got file"));
}

TEST_CASE("NCCL_ASYNC_ERROR_HANDLING only for a Python whose torch is older than 2.2") {
  // Two interpreter prefixes, each with a torch/version.py where a venv keeps it; the
  // interpreter itself is the system's Python, which only reports the environment.
  TempDir dir;
  auto make_prefix = [&](const std::string& name, const std::string& version) {
    const std::string prefix = dir.file(name);
    fs::create_directories(prefix + "/bin");
    fs::create_directories(prefix + "/lib/python3.11/site-packages/torch");
    fs::create_symlink("/usr/bin/python3", prefix + "/bin/python3");
    write_file(prefix + "/lib/python3.11/site-packages/torch/version.py", "__version__ = '" + version + "'\n");
    return prefix + "/bin/python3";
  };
  write_file(dir.file("report.py"),
             "import os, sys\n"
             "print('legacy=' + os.environ.get('NCCL_ASYNC_ERROR_HANDLING', 'unset'))\n"
             "print('new=' + os.environ.get('TORCH_NCCL_ASYNC_ERROR_HANDLING', 'unset'))\n");
  struct Case {
    std::string version, legacy;
  };
  for (const Case& c :
       {Case{"1.13.1", "1"}, Case{"2.1.2+cu121", "1"}, Case{"2.2.0", "unset"}, Case{"2.11.0", "unset"}}) {
    INFO(c.version);
    auto options = base_options();
    options.set_env["PYTHON_EXEC"] = make_prefix("v" + c.version, c.version);
    options.set_env["HOME"] = dir.path().string();
    auto r = elastic_run({dir.file("report.py")}, options);
    REQUIRE(r.exitcode == 0);
    CHECK_THAT(r.out, Catch::Contains("legacy=" + c.legacy));
    CHECK_THAT(r.out, Catch::Contains("new=1"));
  }
}

TEST_CASE("duplicate filters: matching teed lines also go, prefixed, to attempt_<n>/filtered_*.log") {
  const std::string backend = GENERATE(EVERY_BACKEND);
  INFO("backend " << backend);
  TempDir dir;
  auto r = elastic_run(on_backend(backend, {"--nproc-per-node=2", "--tee=3", "--log-dir", dir.file("logs"),
                                            "--duplicate-stdout-filters=apple,a,,b", "--duplicate_stderr_filters",
                                            "warn", "/bin/sh", "-c",
                                            "echo apple $RANK; echo pear $RANK; echo \"a,b $RANK\"; echo a $RANK; "
                                            "echo warn$RANK >&2; echo quiet >&2; printf apple-end"}),
                       base_options());
  REQUIRE(r.exitcode == 0);
  const fs::path attempt = only_subdir(dir.file("logs")) / "attempt_0";
  auto sorted_lines = [](const std::string& text) {
    auto lines = lines_of(text);
    std::sort(lines.begin(), lines.end());
    return lines;
  };
  // ",," is a literal comma: "a,b" matches, a bare "a" does not.
  CHECK(sorted_lines(read_file((attempt / "filtered_stdout.log").string())) ==
        std::vector<std::string>{"[default0]:a,b 0", "[default0]:apple 0", "[default0]:apple-end", "[default1]:a,b 1",
                                 "[default1]:apple 1", "[default1]:apple-end"});
  CHECK(sorted_lines(read_file((attempt / "filtered_stderr.log").string())) ==
        std::vector<std::string>{"[default0]:warn0", "[default1]:warn1"});
  // The console and the per-rank logs are unchanged.
  CHECK_THAT(r.out, Catch::Contains("[default1]:pear 1"));
  CHECK(read_file((attempt / "0" / "stdout.log").string()) == "apple 0\npear 0\na,b 0\na 0\napple-end");

  TempDir none;
  auto plain = elastic_run(
      on_backend(backend, {"--tee=3", "--log-dir", none.file("logs"), "/bin/sh", "-c", "echo apple"}), base_options());
  REQUIRE(plain.exitcode == 0);
  CHECK_FALSE(fs::exists(only_subdir(none.file("logs")) / "attempt_0" / "filtered_stdout.log"));
}

TEST_CASE("newest torchrun's surface: quoted --rdzv-conf, HOST:0, --local-addr, signals, --no-agent-store") {
  TempDir dir;
  // The seed's elastic cases: quotes inside the value, no shell between. c10d and etcd-v2
  // read none of the quoted keys' spellings, nor `timeout`.
  auto seed = elastic_run(
      {"--nnodes=1:2", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", "--rdzv-id=seed",
       "--rdzv-conf='join_timeout=5,last_call_timeout=1,timeout=5'", worker, dir.path().string()},
      base_options());
  INFO(seed.err);
  REQUIRE(seed.exitcode == 0);
  for (int rank : {0, 1}) {
    auto env = read_env_file(dir.file(std::to_string(rank)));
    CHECK(env["WORLD_SIZE"] == "2");
    CHECK(std::stoi(env["MASTER_PORT"]) > 0);
    CHECK(env["TORCHELASTIC_USE_AGENT_STORE"] == "True");
  }
  // The static backend reads `timeout`: a bad value there is still a usage error.
  auto bad = elastic_run({"--rdzv-conf=timeout=5'", "/bin/true"}, base_options());
  CHECK(bad.exitcode == 2);
  CHECK(bad.err.find("timeout '5''") != std::string::npos);
  for (const char* conf : {"=1", "key", "key=", " , "}) {
    auto r = elastic_run({std::string("--rdzv-conf=") + conf, "/bin/true"}, base_options());
    INFO(conf << ": " << r.err);
    CHECK(r.exitcode == 2);
    CHECK(r.err.find("--rdzv-conf") != std::string::npos);
  }
  // Static HOST:0 is a free port on that host; --local-addr is node 0's MASTER_ADDR.
  auto local = elastic_run({"--rdzv-endpoint=localhost:0", "--local-addr=127.0.0.2", "--signals-to-handle=term,SIGUSR1",
                            "--no-agent-store", worker, dir.path().string()},
                           base_options());
  INFO(local.err);
  REQUIRE(local.exitcode == 0);
  auto env = read_env_file(dir.file("0"));
  CHECK(env["MASTER_ADDR"] == "127.0.0.2");
  CHECK(std::stoi(env["MASTER_PORT"]) > 0);
  CHECK(env["TORCHELASTIC_SIGNALS_TO_HANDLE"] == "SIGTERM,SIGUSR1");
  CHECK(env["TORCHELASTIC_USE_AGENT_STORE"] == "False");
  auto several = elastic_run({"--nnodes=2", "--rdzv-endpoint=localhost:0", "/bin/true"}, base_options());
  CHECK(several.exitcode == 2);
  CHECK(several.err.find("port 0 (a free port) is for a single node") != std::string::npos);
}

TEST_CASE("a log dir of /dev/null: logs discarded, nothing left behind, the failure still summarized") {
  TempDir dir;
  fs::create_directories(dir.file("tmp"));
  auto options = base_options();
  options.set_env["TMPDIR"] = dir.file("tmp");
  auto ok = elastic_run(
      {"--log-dir=/dev/null", "--redirects=3", "--nproc-per-node=2", "/bin/sh", "-c", "echo out; echo err >&2"},
      options);
  INFO(ok.err);
  CHECK(ok.exitcode == 0);
  CHECK(ok.out.find("out") == std::string::npos);
  auto failed = elastic_run({"--log-dir=/dev/null", "--tee=3", "--nproc-per-node=2", worker, dir.path().string(),
                             "--fail-rank", "1", "--sleep-ms", "0"},
                            options);
  INFO(failed.err);
  CHECK(failed.exitcode == 1);
  CHECK(failed.err.find("launch_worker rank 1 failed on purpose") != std::string::npos);
  CHECK(failed.err.find("torchelastic_errors_") != std::string::npos);
  struct stat st {};
  REQUIRE(::stat("/dev/null", &st) == 0);
  CHECK(S_ISCHR(st.st_mode));
  CHECK(fs::is_empty(dir.file("tmp")));
}

TEST_CASE("virtual local rank narrows the launcher's device list and refuses one too short") {
  TempDir dir;
  auto options = base_options();
  options.set_env["CUDA_VISIBLE_DEVICES"] = "3,5";
  auto r = elastic_run({"--virtual-local-rank", "--nproc-per-node=2", worker, dir.path().string()}, options);
  REQUIRE(r.exitcode == 0);
  CHECK(read_env_file(dir.file("0"))["CUDA_VISIBLE_DEVICES"] == "3");
  CHECK(read_env_file(dir.file("1"))["CUDA_VISIBLE_DEVICES"] == "5");
  options.set_env["CUDA_VISIBLE_DEVICES"] = "3";
  TempDir none;
  auto short_list = elastic_run({"--virtual-local-rank", "--nproc-per-node=2", worker, none.path().string()}, options);
  CHECK(short_list.exitcode == 2);
  CHECK(short_list.err.find("has no device of its own in CUDA_VISIBLE_DEVICES='3'") != std::string::npos);
  CHECK(fs::is_empty(none.path()));
}
