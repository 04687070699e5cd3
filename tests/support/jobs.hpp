// Test support shared by the job tests: free ports (support/ports.hpp), argument lists, and
// shell workers that report which world they ran in.
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "support/ports.hpp"
#include "support/subprocess.hpp"

namespace elastic::testing {

inline std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

inline std::set<std::string> files_in(const std::filesystem::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) names.insert(entry.path().filename().string());
  return names;
}

// A shell worker that writes its pid to DIR/pid_w<WORLD_SIZE>_r<RANK> and its
// environment to DIR/w<WORLD_SIZE>_r<RANK>, then runs until DIR/stop exists.
inline std::vector<std::string> waiting_worker(const TempDir& dir) {
  return {"--no-python", "/bin/sh", "-c",
          "d=" + dir.path().string() +
              "; echo $$ > $d/pid_w${WORLD_SIZE}_r$RANK;"
              " env > $d/.w${WORLD_SIZE}_r$RANK; mv $d/.w${WORLD_SIZE}_r$RANK $d/w${WORLD_SIZE}_r$RANK;"
              " while [ ! -e $d/stop ]; do sleep 0.1; done"};
}

// Whether every rank of a world of `world` workers has reported to `dir`.
inline bool has_world(const TempDir& dir, int world) {
  for (int rank = 0; rank < world; ++rank)
    if (!std::filesystem::exists(dir.file("w" + std::to_string(world) + "_r" + std::to_string(rank)))) return false;
  return true;
}

}  // namespace elastic::testing
