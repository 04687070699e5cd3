// Test support shared by the job tests: free loopback ports, argument lists, and
// shell workers that report which world they ran in.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "support/subprocess.hpp"

namespace elastic::testing {

// A port nobody listens on now: bind port 0, read it, close.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

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
