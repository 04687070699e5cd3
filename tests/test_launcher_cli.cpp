// elastic-run's command line: spellings, PET_* defaults, nproc values, usage
// errors (exit 2, nothing started), and how the entry is run.
#include <catch2/catch.hpp>
#include <elastic/launcher.hpp>
#include <elastic/multiprocessing/numa.hpp>
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

TEST_CASE("unambiguous prefixes of long options work as in argparse, in either spelling") {
  TempDir dir;
  auto r = elastic_run(concat({"--nproc=2", "--no_py", "--redirect=3", "--log-d", dir.file("logs")},
                              {"/bin/sh", "-c", "echo out-$RANK; touch \"" + dir.path().string() + "/$RANK\""}),
                       quiet());
  REQUIRE(r.exitcode == 0);
  CHECK(file_exists(dir.file("0")));
  CHECK(file_exists(dir.file("1")));
  // --redirect=3 sent stdout to the log files, not the console.
  CHECK(r.out.find("out-") == std::string::npos);
  std::size_t logs = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir.file("logs")))
    if (entry.path().filename() == "stdout.log") ++logs;
  CHECK(logs == 2);

  // A short option with its value attached or apart, and a prefix of the other spelling.
  TempDir dir2;
  auto s =
      elastic_run({"-r3", "--nproc_per=2", "--log_dir", dir2.file("logs"), "/bin/sh", "-c", "echo out-$RANK"}, quiet());
  REQUIRE(s.exitcode == 0);
  CHECK(s.out.find("out-") == std::string::npos);
}

TEST_CASE("an ambiguous prefix is a usage error listing the candidates") {
  TempDir dir;
  auto r = elastic_run(concat({"--n=2"}, touch_worker(dir)), quiet());
  CHECK(r.exitcode == 2);
  CHECK_THAT(r.err, Catch::Contains("ambiguous option: --n could match --nnodes, --nproc-per-node"));
  CHECK_THAT(r.err, Catch::Contains("--node-rank"));
  CHECK(files_in(dir) == 0);
  // Options after the entry belong to the workers, prefixes or not.
  auto w = elastic_run({"/bin/sh", "-c", "test \"$1\" = --n", "sh", "--n"}, quiet());
  CHECK(w.exitcode == 0);
}

TEST_CASE("a typo suggests the nearest option and --help") {
  TempDir dir;
  auto r = elastic_run(concat({"--nprc-per-node=2"}, touch_worker(dir)), quiet());
  CHECK(r.exitcode == 2);
  CHECK_THAT(r.err,
             Catch::Contains(
                 "unrecognized arguments: --nprc-per-node (did you mean --nproc-per-node?); see elastic-run --help"));
  CHECK(files_in(dir) == 0);
  auto far = elastic_run(concat({"--zzzzzzzz"}, touch_worker(dir)), quiet());
  CHECK(far.exitcode == 2);
  CHECK_THAT(far.err, Catch::Contains("unrecognized arguments: --zzzzzzzz; see elastic-run --help"));
}

TEST_CASE("out-of-range ports, an endpoint without a port and unforwardable signals are usage errors") {
  TempDir dir;
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  std::vector<Case> cases = {
      {{"--master-port=-1"}, "--master-port must be a port number from 1 to 65535, got -1"},
      {{"--master-port=999999999"}, "--master-port must be a port number from 1 to 65535, got 999999999"},
      {{"--master-port=0"}, "--master-port must be a port number from 1 to 65535, got 0"},
      {{"--rdzv-endpoint", "host:"}, "--rdzv-endpoint 'host:': the port must be a number from 0 to 65535"},
      {{"--rdzv-endpoint", "host:70000"}, "the port must be a number from 0 to 65535"},
      {{"--signals-to-handle", "SIGTERM,SIGCHLD"}, "SIGCHLD cannot be forwarded to the workers"},
      {{"--signals-to-handle", "SIGKILL"}, "SIGKILL cannot be forwarded"},
      {{"--signals-to-handle", "STOP"}, "SIGSTOP cannot be forwarded"},
      {{"--signals-to-handle", "SIGSEGV"}, "SIGSEGV cannot be forwarded"},
  };
  for (const auto& c : cases) {
    INFO(c.args.front());
    auto r = elastic_run(concat(c.args, touch_worker(dir)), quiet());
    CHECK(r.exitcode == 2);
    CHECK_THAT(r.err, Catch::Contains(c.message));
    CHECK(files_in(dir) == 0);
  }
}

TEST_CASE("a value with a newline does not split the one-line usage error") {
  TempDir dir;
  for (std::string option : {"--nnodes=1\nfake line", "--rdzv-conf=a\nb", "--bogus\nx=1"}) {
    INFO(option);
    auto r = elastic_run(concat({option}, touch_worker(dir)), quiet());
    CHECK(r.exitcode == 2);
    CHECK(r.err.rfind("elastic-run: error: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_THAT(r.err, Catch::Contains("\\n"));
    CHECK(files_in(dir) == 0);
  }
}

TEST_CASE("an entry that is not executable and not .py gets a hint") {
  TempDir dir;
  write_file(dir.file("train"), "print('hello')\n");
  auto r = elastic_run({dir.file("train")}, quiet());
  CHECK(r.exitcode == 1);
  CHECK_THAT(r.err, Catch::Contains("Permission denied"));
  CHECK_THAT(r.err, Catch::Contains("run a Python script with a .py name, --run-path or -m"));
}

TEST_CASE(
    "shutdown timeout: --shutdown-timeout and its sources: negative and non-numbers are usage errors, 0 allowed") {
  TempDir dir;
  for (std::string option : {"--shutdown-timeout=-1", "--term-timeout=-5", "--shutdown-timeout=x"}) {
    INFO(option);
    auto r = elastic_run(concat({option}, touch_worker(dir)), quiet());
    CHECK(r.exitcode == 2);
    CHECK_THAT(r.err, Catch::Contains("must be a number of seconds from 0 to 1e9"));
  }
  auto options = quiet();
  options.set_env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "-3";
  auto env = elastic_run(touch_worker(dir), options);
  CHECK(env.exitcode == 2);
  CHECK_THAT(env.err, Catch::Contains("TORCH_ELASTIC_SHUTDOWN_TIMEOUT must be a number of seconds"));
  CHECK(files_in(dir) == 0);
  auto zero = elastic_run(concat({"--shutdown-timeout=0"}, touch_worker(dir)), quiet());
  CHECK(zero.exitcode == 0);
  CHECK(files_in(dir) == 1);
}

TEST_CASE("GPU counting: CUDA_VISIBLE_DEVICES with indices, UUIDs and MIG ids") {
  using elastic::multiprocessing::gpu_count;
  using elastic::multiprocessing::GpuInventory;
  using elastic::multiprocessing::visible_devices;
  GpuInventory four;  // as NVML reports it
  four.count = 4;
  four.uuids = {"GPU-aaaa1111", "GPU-aaaa2222", "GPU-bbbb3333", "GPU-cccc4444"};
  CHECK(gpu_count(four, nullptr) == 4);
  CHECK(gpu_count(four, "") == 0);
  CHECK(visible_devices("2,0", four) == std::vector<int>{2, 0});
  CHECK(visible_devices(" 1 , 3 ", four) == std::vector<int>{1, 3});
  // Entries up to the first invalid one: an index out of range, -1, garbage. Indices as
  // strtoul reads them.
  CHECK(visible_devices("0,7,1", four) == std::vector<int>{0});
  CHECK(visible_devices("-1,0", four).empty());
  CHECK(visible_devices("0,x,1", four) == std::vector<int>{0});
  CHECK(visible_devices("1gpu2,2ampere", four) == std::vector<int>{1, 2});
  // A device named twice: no device at all (newest PyTorch's count, seen on an H200 machine).
  CHECK(visible_devices("1,1,2", four).empty());
  CHECK(visible_devices("0,0", four).empty());
  CHECK(visible_devices("GPU-bbbb3333,GPU-bbbb", four).empty());
  CHECK(gpu_count(four, "2,0,2") == 0);
  // UUIDs, whole or a unique prefix; an ambiguous or unknown one ends the list.
  CHECK(visible_devices("GPU-bbbb3333,GPU-cccc", four) == std::vector<int>{2, 3});
  CHECK(visible_devices("GPU-aaaa,1", four).empty());
  CHECK(visible_devices("0,GPU-dddd", four) == std::vector<int>{0});
  CHECK(visible_devices("GPU-aaaa2222,1", four) == std::vector<int>{1});
  // MIG instances count one each, beyond the number of whole GPUs.
  GpuInventory one;
  one.count = 1;
  one.uuids = {"GPU-aaaa1111"};
  CHECK(gpu_count(one, "MIG-11111111-2222-3333-4444-555555555555,MIG-66666666-7777-8888-9999-000000000000") == 2);
  CHECK(gpu_count(one, "MIG-GPU-aaaa1111/1/0") == 1);

  // Without NVML: the device nodes, any GPU-... entry counts, never more than there are nodes.
  GpuInventory nodes;
  nodes.count = 2;
  CHECK(gpu_count(nodes, "GPU-anything,GPU-other") == 2);
  CHECK(gpu_count(nodes, "GPU-anything,1") == 1);  // a list keeps the kind of its first entry
  CHECK(gpu_count(nodes, "GPU-anything,GPU-anything") == 0);
  CHECK(gpu_count(one, "MIG-a,MIG-a") == 0);
  CHECK(gpu_count(nodes, "0,1,GPU-x") == 2);
  CHECK(gpu_count(GpuInventory{}, "0,1") == 0);
}

TEST_CASE("GPU counting falls back to /dev/nvidiaN nodes without NVML") {
  TempDir dev;
  for (const char* name : {"nvidia0", "nvidia1", "nvidia12", "nvidiactl", "nvidia-uvm", "nvidia-modeset", "null"})
    write_file(dev.file(name), "");
  CHECK(elastic::multiprocessing::detail::nvidia_device_nodes(dev.path().string()) == 3);
  // A library that is not there is no inventory; this machine's answer is NVML's or the nodes'.
  CHECK_FALSE(elastic::multiprocessing::detail::nvml_inventory("libnvidia-ml-does-not-exist.so.1"));
  if (!elastic::multiprocessing::detail::nvml_inventory())
    CHECK(elastic::multiprocessing::gpu_inventory(dev.path().string()).count == 3);
}

namespace {

// A sysfs tree of a two-socket machine: node0 (CPUs 0-3 with hyperthreads 8-11, two L3
// caches) and node1 (4-7, 12-15, one L3) on socket 0; node2 (16-19, no hyperthreads) on
// socket 1. GPUs 0 and 1 sit on node0, GPU 2 on node1, GPU 3 on node2.
elastic::multiprocessing::numa::Topology fake_topology(const TempDir& root) {
  auto put = [&](const std::string& path, const std::string& text) {
    fs::create_directories(fs::path(root.file(path.substr(1))).parent_path());
    write_file(root.file(path.substr(1)), text + "\n");
  };
  put("/devices/system/node/possible", "0-2");
  put("/devices/system/node/node0/cpulist", "0-3,8-11");
  put("/devices/system/node/node1/cpulist", "4-7,12-15");
  put("/devices/system/node/node2/cpulist", "16-19");
  for (int cpu = 0; cpu < 20; ++cpu) {
    const std::string dir = "/devices/system/cpu/cpu" + std::to_string(cpu);
    const int core = cpu < 16 ? cpu % 8 : cpu;
    put(dir + "/topology/physical_package_id", cpu < 16 ? "0" : "1");
    put(dir + "/topology/thread_siblings_list",
        cpu < 16 ? std::to_string(core) + "," + std::to_string(core + 8) : std::to_string(cpu));
    std::string l3 = core < 2 ? "0-1,8-9" : core < 4 ? "2-3,10-11" : cpu < 16 ? "4-7,12-15" : "16-19";
    put(dir + "/cache/index0/type", "Instruction");
    put(dir + "/cache/index0/level", "1");
    put(dir + "/cache/index0/shared_cpu_list", std::to_string(cpu));
    put(dir + "/cache/index1/type", "Data");
    put(dir + "/cache/index1/level", "1");
    put(dir + "/cache/index1/shared_cpu_list", std::to_string(cpu));
    put(dir + "/cache/index3/type", "Unified");
    put(dir + "/cache/index3/level", "3");
    put(dir + "/cache/index3/shared_cpu_list", l3);
    put(dir + "/cache/index2/type", "Unified");
    put(dir + "/cache/index2/level", "2");
    put(dir + "/cache/index2/shared_cpu_list", std::to_string(cpu));
  }
  elastic::multiprocessing::numa::Topology topology;
  topology.sys_root = root.path().string();
  for (int cpu = 0; cpu < 20; ++cpu) topology.allowed_cpus.insert(cpu);
  topology.gpu_numa_nodes = {0, 0, 1, 2};
  return topology;
}

}  // namespace

TEST_CASE("NUMA binding modes choose newest PyTorch's CPUs from the sysfs topology") {
  namespace numa = elastic::multiprocessing::numa;
  using numa::format_ranges;
  TempDir root;
  auto topology = fake_topology(root);
  CHECK(numa::parse_ranges("0-2,4, 6-7\n") == std::set<int>{0, 1, 2, 4, 6, 7});
  CHECK(format_ranges({0, 1, 2, 4, 6, 7}) == "0-2,4,6-7");
  CHECK_FALSE(numa::parse_mode("numa"));

  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::node, 1)) == "0-3,8-11");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::node, 3)) == "16-19");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::socket, 0)) == "0-15");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::socket, 3)) == "16-19");
  // Two GPUs share node0's four physical cores (with their hyperthreads).
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::exclusive, 0)) == "0-1,8-9");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::exclusive, 1)) == "2-3,10-11");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::exclusive, 2)) == "4-7,12-15");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::core_complex, 0)) == "0-1,8-9");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::core_complex, 1)) == "2-3,10-11");

  // Only CPUs this process may use: with CPU 0 and its hyperthread 8 taken away, node0 has
  // three cores; the lower GPU gets the extra one, and the fuller cache comes first.
  topology.allowed_cpus.erase(0);
  topology.allowed_cpus.erase(8);
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::exclusive, 0)) == "1-2,9-10");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::exclusive, 1)) == "3,11");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::core_complex, 0)) == "2-3,10-11");
  CHECK(format_ranges(numa::cpus_for_gpu(topology, numa::Mode::core_complex, 1)) == "1,9");

  CHECK_THROWS_AS(numa::cpus_for_gpu(topology, numa::Mode::node, 4), numa::NumaError);
  topology.gpu_numa_nodes = {0, 0, 0, 0, 0};  // five GPUs for node0's three cores
  CHECK_THROWS_WITH(numa::cpus_for_gpu(topology, numa::Mode::exclusive, 0),
                    Catch::Contains("has 3 physical cores for 5 GPUs"));
}

TEST_CASE("numa binding without a GPU fails with a NUMA message and starts no worker") {
  TempDir dir;
  auto options = quiet();
  options.set_env["CUDA_VISIBLE_DEVICES"] = "";  // no GPU, whatever the machine has
  for (std::string mode : {"node", "socket", "exclusive", "core-complex"}) {
    INFO(mode);
    auto r = elastic_run(concat({"--numa-binding=" + mode, "--nproc-per-node=2"}, touch_worker(dir)), options);
    CHECK(r.exitcode == 1);
    CHECK_THAT(r.err, Catch::Contains("elastic-run: error: NUMA binding (--numa-binding " + mode +
                                      "): local rank 0 has no GPU of its own"));
    CHECK(files_in(dir) == 0);
  }
  auto bad = elastic_run(concat({"--numa-binding=numa"}, touch_worker(dir)), options);
  CHECK(bad.exitcode == 2);
  CHECK_THAT(bad.err, Catch::Contains("--numa-binding must be node, socket, exclusive or core-complex, got numa"));
  CHECK(files_in(dir) == 0);
}

TEST_CASE("binding a process sets the affinity of all its threads") {
  namespace numa = elastic::multiprocessing::numa;
  cpu_set_t mine;
  REQUIRE(::sched_getaffinity(0, sizeof(mine), &mine) == 0);
  int first = 0;
  while (!CPU_ISSET(first, &mine)) ++first;
  pid_t child = ::fork();
  if (child == 0) {
    ::pause();
    _exit(0);
  }
  numa::bind_process(child, {first});
  cpu_set_t got;
  REQUIRE(::sched_getaffinity(child, sizeof(got), &got) == 0);
  CHECK(CPU_COUNT(&got) == 1);
  CHECK(CPU_ISSET(first, &got));
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
}
