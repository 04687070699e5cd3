// elastic-run's command line: spellings, PET_* defaults, nproc values, usage
// errors (exit 2, nothing started), and how the entry is run.
#include <catch2/catch.hpp>
#include <elastic/launcher.hpp>
#include <filesystem>

#include "support/launcher.hpp"

using namespace elastic::testing;
namespace fs = std::filesystem;

namespace {

std::size_t files_in(const TempDir& dir) {
  std::size_t count = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir.path())) ++count;
  return count;
}

// A shell worker that touches a file named after its RANK.
std::vector<std::string> touch_worker(const TempDir& dir) {
  return {"/bin/sh", "-c", "touch \"" + dir.path().string() + "/$RANK\""};
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

RunOptions quiet() {
  RunOptions options;
  options.set_env["OMP_NUM_THREADS"] = "1";
  options.unset_env = {"PET_NPROC_PER_NODE", "PET_NNODES", "PET_NO_PYTHON", "PET_MODULE", "CUDA_VISIBLE_DEVICES"};
  return options;
}

}  // namespace

TEST_CASE("--help lists the options in both spellings and exits 0") {
  auto r = elastic_run({"--help"});
  CHECK(r.exitcode == 0);
  CHECK(r.out.find("--nproc-per-node,--nproc_per_node") != std::string::npos);
  CHECK(r.out.find("PET_NPROC_PER_NODE") != std::string::npos);
  CHECK(r.out.find("--max-restarts,--max_restarts") != std::string::npos);
}

TEST_CASE("usage errors exit 2 with a message and start nothing") {
  TempDir dir;
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  std::vector<Case> cases = {
      {{"--nproc-per-node=foo"}, "Unsupported nproc_per_node value: foo"},
      {{"--nproc_per_node=0"}, "Unsupported nproc_per_node value: 0"},
      {{"--nproc-per-node=999999999"}, "nproc_per_node=999999999 is over the limit of 4096"},
      {{"--no-python", "--module"}, "Don't use both the '--no-python' flag and the '--module' flag"},
      {{"--nnodes=2:20:30"}, "nnodes=2:20:30 is not in \"MIN:MAX\" format"},
      {{"--bogus-option"}, "bogus"},
      {{"--max-restarts=x"}, "max"},
      {{"--redirects=7"}, "redirect"},
      {{"--tee=0:9"}, "redirect/tee"},
      {{"--nnodes=2", "--node-rank=2"}, "node_rank 2"},
      {{"--local-ranks-filter=a"}, "local-ranks-filter"},
  };
  for (const auto& c : cases) {
    INFO(c.args.front());
    auto r = elastic_run(concat(c.args, touch_worker(dir)), quiet());
    CHECK(r.exitcode == 2);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK(files_in(dir) == 0);
  }
  auto missing = elastic_run({"--nproc-per-node=2"}, quiet());
  CHECK(missing.exitcode == 2);
  CHECK(missing.err.find("training_script") != std::string::npos);
}

TEST_CASE("min:max nnodes parse, and elastic node counts need a dynamic rendezvous backend") {
  using elastic::launcher::parse_min_max_nnodes;
  CHECK(parse_min_max_nnodes("1") == std::pair<int, int>(1, 1));
  CHECK(parse_min_max_nnodes("2:20") == std::pair<int, int>(2, 20));
  CHECK_THROWS_AS(parse_min_max_nnodes("2:20:30"), elastic::launcher::UsageError);
  CHECK_THROWS_AS(parse_min_max_nnodes("3:2"), elastic::launcher::UsageError);
  CHECK_THROWS_AS(parse_min_max_nnodes(""), elastic::launcher::UsageError);

  TempDir dir;
  auto r = elastic_run(concat({"--nnodes=1:2"}, touch_worker(dir)), quiet());
  CHECK(r.exitcode == 2);
  CHECK(r.err.find("needs a dynamic rendezvous backend") != std::string::npos);
  auto unknown = elastic_run(concat({"--rdzv-backend=zookeeper"}, touch_worker(dir)), quiet());
  CHECK(unknown.exitcode == 2);
  CHECK(unknown.err.find("unknown rendezvous backend 'zookeeper'") != std::string::npos);
  // Timeouts must be positive integers (PyTorch: ValueError), before anything starts.
  for (const char* conf : {"join_timeout=0", "last_call_timeout=-1", "read_timeout=1.5", "is_host=maybe"}) {
    auto bad = elastic_run(concat({"--nnodes=1:2", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:1",
                                   std::string("--rdzv-conf=") + conf},
                                  touch_worker(dir)),
                           quiet());
    INFO(conf << ": " << bad.err);
    CHECK(bad.exitcode == 2);
    CHECK(bad.err.find("--rdzv-conf") != std::string::npos);
  }
  auto port = elastic_run(
      concat({"--nnodes=1:2", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:99999"}, touch_worker(dir)), quiet());
  CHECK(port.exitcode == 2);
  CHECK(files_in(dir) == 0);
}

TEST_CASE("default nproc is one worker") {
  TempDir dir;
  auto r = elastic_run(touch_worker(dir), quiet());
  REQUIRE(r.exitcode == 0);
  CHECK(files_in(dir) == 1);
  CHECK(file_exists(dir.file("0")));
}

TEST_CASE("nproc as a number, auto and cpu") {
  SECTION("number") {
    TempDir dir;
    auto r = elastic_run(concat({"--nproc-per-node=3"}, touch_worker(dir)), quiet());
    REQUIRE(r.exitcode == 0);
    CHECK(files_in(dir) == 3);
  }
  SECTION("auto: GPUs if any, else CPUs") {
    TempDir dir;
    auto options = quiet();
    auto r = elastic_run(concat({"--nproc_per_node=auto"}, touch_worker(dir)), options);
    REQUIRE(r.exitcode == 0);
    int gpus = elastic::launcher::gpu_count();
    CHECK(files_in(dir) == static_cast<std::size_t>(gpus > 0 ? gpus : elastic::launcher::cpu_count()));
  }
  SECTION("cpu") {
    TempDir dir;
    auto r = elastic_run(concat({"--nproc-per-node=cpu"}, touch_worker(dir)), quiet());
    REQUIRE(r.exitcode == 0);
    CHECK(files_in(dir) == static_cast<std::size_t>(elastic::launcher::cpu_count()));
  }
}

TEST_CASE("nproc gpu without a visible GPU is a usage error") {
  TempDir dir;
  auto options = quiet();
  options.set_env["CUDA_VISIBLE_DEVICES"] = "";  // hides any GPU this machine has
  auto r = elastic_run(concat({"--nproc-per-node=gpu"}, touch_worker(dir)), options);
  CHECK(r.exitcode == 2);
  CHECK(r.err.find("Cuda is not available") != std::string::npos);
  CHECK(files_in(dir) == 0);
}

TEST_CASE("PET_* variables are defaults, the command line wins") {
  TempDir dir;
  auto options = quiet();
  options.set_env["PET_NPROC_PER_NODE"] = "2";
  options.set_env["PET_RDZV_ID"] = "from_env";
  auto r = elastic_run(concat({"--log-dir", dir.file("logs")}, touch_worker(dir)), options);
  REQUIRE(r.exitcode == 0);
  CHECK(file_exists(dir.file("0")));
  CHECK(file_exists(dir.file("1")));
  CHECK(!file_exists(dir.file("2")));
  bool run_dir_named = false;
  for (const auto& entry : fs::directory_iterator(dir.file("logs")))
    run_dir_named = run_dir_named || entry.path().filename().string().rfind("from_env_", 0) == 0;
  CHECK(run_dir_named);

  TempDir dir2;
  auto r2 = elastic_run(concat({"--nproc-per-node=3"}, touch_worker(dir2)), options);
  REQUIRE(r2.exitcode == 0);
  CHECK(file_exists(dir2.file("2")));

  // A flag from the environment: PET_NO_PYTHON=1 with --module is the usual usage error.
  auto flag = options;
  flag.set_env["PET_NO_PYTHON"] = "1";
  auto r3 = elastic_run({"--module", "some.module"}, flag);
  CHECK(r3.exitcode == 2);
}

TEST_CASE("a .py entry runs under python3, PYTHON_EXEC overrides, -m runs a module") {
  TempDir dir;
  write_file(dir.file("script.py"),
             "import os, sys\nopen(sys.argv[1] + '/py_' + os.environ['RANK'], 'w').write(' '.join(sys.argv[2:]))\n");
  auto r = elastic_run({"--nproc-per-node=2", dir.file("script.py"), dir.path().string(), "a", "b"}, quiet());
  REQUIRE(r.exitcode == 0);
  CHECK(read_file(dir.file("py_0")) == "a b");
  CHECK(file_exists(dir.file("py_1")));

  SECTION("--run-path") {
    auto rp = elastic_run({"--run-path", dir.file("script.py"), dir.path().string(), "rp"}, quiet());
    REQUIRE(rp.exitcode == 0);
    CHECK(read_file(dir.file("py_0")) == "rp");
  }
  SECTION("PYTHON_EXEC") {
    // A .py file holding shell code, run by "sh -u file.py": only PYTHON_EXEC can make that work.
    write_file(dir.file("shell.py"), "touch \"$1/sh_$RANK\"\n");
    auto options = quiet();
    options.set_env["PYTHON_EXEC"] = "/bin/sh";
    auto sh = elastic_run({dir.file("shell.py"), dir.path().string()}, options);
    REQUIRE(sh.exitcode == 0);
    CHECK(file_exists(dir.file("sh_0")));
  }
  SECTION("-m") {
    write_file(dir.file("pkg_mod.py"),
               "import os, sys\nopen(sys.argv[1] + '/mod_' + os.environ['RANK'], 'w').write('m')\n");
    auto options = quiet();
    options.set_env["PYTHONPATH"] = dir.path().string();
    auto m = elastic_run({"-m", "pkg_mod", dir.path().string()}, options);
    REQUIRE(m.exitcode == 0);
    CHECK(file_exists(dir.file("mod_0")));
  }
  SECTION("--no-python runs a .py file itself") {
    write_file(dir.file("direct.py"), "#!/bin/sh\ntouch \"$1/direct_$RANK\"\n");
    fs::permissions(dir.file("direct.py"), fs::perms::owner_all);
    auto d = elastic_run({"--no-python", dir.file("direct.py"), dir.path().string()}, quiet());
    REQUIRE(d.exitcode == 0);
    CHECK(file_exists(dir.file("direct_0")));
  }
}

TEST_CASE("an entry that cannot be started fails with a message") {
  auto r = elastic_run({"--no-python", "/nonexistent/worker"}, quiet());
  CHECK(r.exitcode == 1);
  CHECK(r.err.find("/nonexistent/worker") != std::string::npos);
}
