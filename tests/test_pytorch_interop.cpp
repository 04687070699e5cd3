// Files cross between our code and Debian's PyTorch in both directions, read by
// the other side's own ProcessFailure; summaries come out the same.
#include <catch2/catch.hpp>
#include <elastic/errors.hpp>

#include "support/subprocess.hpp"

using elastic::ChildFailedError;
using elastic::ProcessFailure;
using elastic::testing::read_file;
using elastic::testing::run;
using elastic::testing::RunOptions;
using elastic::testing::system_python;
using elastic::testing::TempDir;

namespace {

const std::string python_dir = ELASTIC_TEST_PYTHON_DIR;

nlohmann::json pytorch_read(const std::string& name, const std::vector<std::string>& specs) {
  std::vector<std::string> argv = {system_python(), python_dir + "/read_failure.py", name};
  argv.insert(argv.end(), specs.begin(), specs.end());
  auto result = run(argv, RunOptions{{{"TZ", "UTC"}}});
  INFO(result.err);
  REQUIRE(result.exitcode == 0);
  return nlohmann::json::parse(result.out);
}

}  // namespace

TEST_CASE("PyTorch's ProcessFailure reads the file of a C++ worker", "[interop]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  auto child = run({ELASTIC_TEST_RECORD_WORKER, "nested"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}}});
  REQUIRE(child.exitcode == 1);
  auto seen = pytorch_read("worker", {"0:0:" + std::to_string(child.pid) + ":1:" + path});
  ProcessFailure ours(0, child.pid, 1, path);
  CHECK(seen["failures"]["0"]["message"] == ours.message);
  CHECK(seen["failures"]["0"]["message"]["message"] == "std::runtime_error: optimizer setup failed");
  CHECK(seen["failures"]["0"]["timestamp"] == ours.timestamp);
}

TEST_CASE("our ProcessFailure reads the file of a Python @record worker", "[interop]") {
  TempDir dir;
  const auto path = dir.file("error.json");
  auto child =
      run({system_python(), python_dir + "/record_worker.py"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", path}}});
  REQUIRE(child.exitcode == 1);
  ProcessFailure failure(0, child.pid, 1, path);
  CHECK(failure.message["message"] == "RuntimeError: trainer failed");
  const std::string stack = failure.message["extraInfo"]["py_callstack"];
  CHECK_THAT(stack, Catch::Contains("ValueError: bad shard \xc3\xa9"));
  CHECK_THAT(stack, Catch::Contains("in load"));
  auto seen = pytorch_read("worker", {"0:0:" + std::to_string(child.pid) + ":1:" + path});
  CHECK(seen["failures"]["0"]["timestamp"] == failure.timestamp);
  CHECK(seen["failures"]["0"]["message"] == failure.message);
}

TEST_CASE("files copied up by either side are read by the other", "[interop]") {
  TempDir dir;
  auto child =
      run({ELASTIC_TEST_RECORD_WORKER, "throw"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("c.json")}}});
  REQUIRE(child.exitcode == 1);
  // PyTorch copies our file up, ours reads the copy.
  auto copied = run({system_python(), python_dir + "/dump_error_file.py", dir.file("c.json"), "-11"},
                    RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("py_parent.json")}}});
  REQUIRE(copied.exitcode == 0);
  ProcessFailure from_python(0, 1, -11, dir.file("py_parent.json"));
  CHECK(from_python.message["errorCode"] == -11);
  // Ours copies a Python worker's file up, PyTorch reads the copy.
  auto py_child = run({system_python(), python_dir + "/record_worker.py"},
                      RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("py_child.json")}}});
  REQUIRE(py_child.exitcode == 1);
  auto parent = run({ELASTIC_TEST_RECORD_WORKER, "child_failure", dir.file("py_child.json"), "0"},
                    RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("cpp_parent.json")}}});
  REQUIRE(parent.exitcode == 1);
  // Code 0: byte-identical, as PyTorch's own copy would be.
  CHECK(read_file(dir.file("cpp_parent.json")) == read_file(dir.file("py_child.json")));
  auto seen = pytorch_read("parent", {"0:0:1:1:" + dir.file("cpp_parent.json")});
  CHECK(seen["failures"]["0"]["message"]["message"] == "RuntimeError: trainer failed");
}

TEST_CASE("our file's bytes have the shape of PyTorch's json.dump", "[interop]") {
  TempDir dir;
  auto child =
      run({ELASTIC_TEST_RECORD_WORKER, "throw"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("e.json")}}});
  REQUIRE(child.exitcode == 1);
  const std::string ours = read_file(dir.file("e.json"));
  // Python re-serializing our parsed file must give back exactly our bytes.
  auto redumped =
      run({system_python(), "-c", "import json,sys; sys.stdout.write(json.dumps(json.load(open(sys.argv[1]))))",
           dir.file("e.json")});
  REQUIRE(redumped.exitcode == 0);
  CHECK(redumped.out == ours);
}

TEST_CASE("host name and summary agree with PyTorch's", "[interop]") {
  auto fqdn = run({system_python(), "-c", "import socket; print(socket.getfqdn(), end='')"});
  REQUIRE(fqdn.exitcode == 0);
  CHECK(elastic::fqdn() == fqdn.out);

  TempDir dir;
  auto a = run({ELASTIC_TEST_RECORD_WORKER, "nested"}, RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("a.json")}}});
  auto b = run({system_python(), python_dir + "/record_worker.py"},
               RunOptions{{{"TORCHELASTIC_ERROR_FILE", dir.file("b.json")}}});
  REQUIRE(a.exitcode == 1);
  REQUIRE(b.exitcode == 1);
  auto seen = pytorch_read("mixed", {"0:0:11:1:" + dir.file("a.json"), "1:1:12:1:" + dir.file("b.json"),
                                     "2:0:13:-9:" + dir.file("none.json")});
  elastic::testing::ScopedEnv tz("TZ", "UTC");
  ::tzset();
  std::map<int, ProcessFailure> failures;
  failures.emplace(0, ProcessFailure(0, 11, 1, dir.file("a.json")));
  failures.emplace(1, ProcessFailure(1, 12, 1, dir.file("b.json")));
  failures.emplace(2, ProcessFailure(0, 13, -9, dir.file("none.json")));
  // The missing file's timestamp is "now" on each side; align ours with PyTorch's.
  failures.at(2).timestamp = seen["failures"]["2"]["timestamp"].get<std::int64_t>();
  ChildFailedError error("mixed", failures);
  CHECK(error.get_first_failure().first == seen["root_rank"].get<int>());
  CHECK(error.format_msg() == seen["summary"].get<std::string>());
}
