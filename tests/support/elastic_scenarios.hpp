// Scenarios the elastic launcher tests run on every rendezvous backend.
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>

#include "support/jobs.hpp"
#include "support/launcher.hpp"

namespace elastic::testing {

// a and b: launchers of one 1:2 job, 2 workers each (waiting_worker(out)), whose
// sessions lapse after a short silence. Once they run a round of 4, b is SIGSTOPped:
// a must go on alone (a round of 2); b, continued, must find the round moved on and
// join again (a round of 4). Then the job is stopped and both must exit 0.
inline void check_stopped_peer_rejoins(Background& a, Background& b, const TempDir& out) {
  REQUIRE(wait_until([&] { return has_world(out, 4); }));
  for (int rank = 0; rank < 4; ++rank) std::filesystem::remove(out.file("w4_r" + std::to_string(rank)));
  b.signal(SIGSTOP);
  // The silent node's session lapses on the store's clock: the survivor goes on alone.
  REQUIRE(wait_until([&] { return has_world(out, 2); }));
  CHECK_FALSE(has_world(out, 4));
  b.signal(SIGCONT);
  REQUIRE(wait_until([&] { return has_world(out, 4); }));
  write_file(out.file("stop"), "");
  CHECK(a.wait(std::chrono::seconds(60)) == 0);
  CHECK(b.wait(std::chrono::seconds(60)) == 0);
  CHECK_THAT(a.err(), Catch::Contains("a participant was lost"));
  // Continued, it finds its session lapsed (or, when a renewal got through first,
  // the round moved on): either way its old workers are stopped before it rejoins.
  CHECK_THAT(b.err(),
             Catch::Contains("this node's session lapsed") || Catch::Contains("the round moved on without this node"));
  // Membership changes are not restarts.
  for (int rank = 0; rank < 4; ++rank)
    CHECK(read_env_file(out.file("w4_r" + std::to_string(rank)))["TORCHELASTIC_RESTART_COUNT"] == "0");
}

}  // namespace elastic::testing
