// The registry of named logs specs behind --logs-specs: "default" is there, a
// program adds its own, and a launch writes where the chosen one says.
#include <algorithm>
#include <catch2/catch.hpp>
#include <elastic/launcher.hpp>
#include <elastic/multiprocessing/logs_specs_registry.hpp>

#include "support/subprocess.hpp"

using namespace elastic::multiprocessing;
using elastic::testing::read_file;
using elastic::testing::TempDir;

namespace {

// Every rank's stdout in one flat directory: <log_dir>/rank<N>.out.
class FlatLogsSpecs : public LogsSpecs {
 public:
  using LogsSpecs::LogsSpecs;
  std::string root_log_dir() override { return log_dir_.value_or("/nonexistent"); }
  LogsDest reify(const std::map<int, Env>& envs) override {
    LogsDest dest;
    for (const auto& [local_rank, env] : envs) {
      const std::string prefix = root_log_dir() + "/rank" + env.at("RANK");
      dest.stdouts[local_rank] = prefix + ".out";
      dest.stderrs[local_rank] = "";
      dest.tee_stdouts[local_rank] = "";
      dest.tee_stderrs[local_rank] = "";
      dest.error_files[local_rank] = prefix + ".json";
    }
    return dest;
  }
};

}  // namespace

TEST_CASE("the registry knows 'default' and makes a DefaultLogsSpecs", "[logs_specs]") {
  auto names = logs_specs_names();
  CHECK(std::find(names.begin(), names.end(), "default") != names.end());
  auto specs = make_logs_specs("default", std::string("/tmp/x"), Std::ALL, Std::OUT, std::set<int>{0});
  REQUIRE(dynamic_cast<DefaultLogsSpecs*>(specs.get()) != nullptr);
  CHECK(std::get<Std>(specs->redirects()) == Std::ALL);
  CHECK(std::get<Std>(specs->tee()) == Std::OUT);
  CHECK(specs->local_ranks_filter() == std::set<int>{0});
}

TEST_CASE("an unknown name is an error that names it and the known ones", "[logs_specs]") {
  try {
    make_logs_specs("DOESNOT_EXIST");
    FAIL("no error");
  } catch (const UnknownLogsSpecsError& e) {
    CHECK(e.name() == "DOESNOT_EXIST");
    CHECK_THAT(e.what(), Catch::Contains("'DOESNOT_EXIST'") && Catch::Contains("default"));
  }
  CHECK_THROWS_AS(register_logs_specs("", [](auto, auto, auto, auto) { return nullptr; }), std::invalid_argument);
  CHECK_THROWS_AS(register_logs_specs("empty", LogsSpecsFactory{}), std::invalid_argument);
}

TEST_CASE("a registered logs specs decides where a launch's logs go", "[logs_specs]") {
  register_logs_specs("flat", [](std::optional<std::string> log_dir, StdSpec redirects, StdSpec tee,
                                 std::optional<std::set<int>> filter) {
    return std::make_shared<FlatLogsSpecs>(std::move(log_dir), std::move(redirects), std::move(tee), std::move(filter));
  });
  TempDir logs;
  elastic::launcher::LaunchConfig config;
  config.nproc_per_node = 2;
  // Shell workers need no store; the default port (29500) may be another job's here.
  config.agent_store = false;
  config.logs_specs = make_logs_specs("flat", logs.path().string(), Std::OUT);
  REQUIRE(dynamic_cast<FlatLogsSpecs*>(config.logs_specs.get()) != nullptr);
  auto codes = elastic::launcher::launch(config, "/bin/sh", {"-c", "echo out-$RANK"});
  CHECK(codes == std::map<int, int>{{0, 0}, {1, 0}});
  CHECK(read_file(logs.file("rank0.out")) == "out-0\n");
  CHECK(read_file(logs.file("rank1.out")) == "out-1\n");
}
