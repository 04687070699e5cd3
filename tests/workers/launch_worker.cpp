// A worker for the launcher tests: writes its whole environment to DIR/<RANK>
// (so a test sees exactly what the launcher gave), then behaves as told.
//
//   launch_worker DIR [--fail-rank N] [--sleep-ms MS] [--print-lines N]
//                     [--wait-world N] [--peer-closed-ms MS]
// The rank named by --fail-rank throws at once (after the N ranks of --wait-world
// have all written their files); the others then sleep. With --peer-closed-ms,
// they fail MS after it (as collectives of a group with a failed peer do).
#include <dirent.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elastic/errors.hpp>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

extern char** environ;

namespace {

// Descriptors this worker was started with: only 0, 1, 2 if nothing leaked.
// Listed before main, since record() may open files of its own (the symbolizer's).
std::string list_open_descriptors() {
  std::string fds;
  if (DIR* fd_dir = ::opendir("/proc/self/fd")) {
    while (dirent* entry = ::readdir(fd_dir)) {
      if (entry->d_name[0] == '.' || std::atoi(entry->d_name) == ::dirfd(fd_dir)) continue;
      fds += std::string(fds.empty() ? "" : ",") + entry->d_name;
    }
    ::closedir(fd_dir);
  }
  return fds;
}
const std::string inherited_fds = list_open_descriptors();

}  // namespace

int work(int argc, char** argv) {
  if (argc < 2) throw std::invalid_argument("usage: launch_worker DIR [options]");
  const std::string dir = argv[1];
  int fail_rank = -1, sleep_ms = 0, lines = 0, wait_world = 0, peer_closed_ms = -1;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--wait-world") == 0) wait_world = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--peer-closed-ms") == 0) peer_closed_ms = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--fail-rank") == 0) fail_rank = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--sleep-ms") == 0) sleep_ms = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--print-lines") == 0) lines = std::atoi(argv[i + 1]);
  }
  const char* rank_text = std::getenv("RANK");
  const std::string rank = rank_text ? rank_text : "unset";
  {
    std::ofstream out(dir + "/" + rank + ".tmp");
    for (char** e = environ; *e; ++e) out << *e << '\n';
    out << "open_fds=" << inherited_fds << '\n';
    out << "is_torchelastic_launched=" << (elastic::is_torchelastic_launched() ? "true" : "false") << '\n';
  }
  // Renamed into place so a test never reads a half-written file.
  std::rename((dir + "/" + rank + ".tmp").c_str(), (dir + "/" + rank).c_str());
  for (int i = 0; i < lines; ++i) std::printf("rank %s line %d\n", rank.c_str(), i);
  std::fflush(stdout);
  auto exists = [&](const std::string& name) { return std::ifstream(dir + "/" + name).good(); };
  for (int r = 0; r < wait_world; ++r)
    while (!exists(std::to_string(r))) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (rank == std::to_string(fail_rank)) {
    std::ofstream(dir + "/failed") << rank;
    throw std::runtime_error("launch_worker rank " + rank + " failed on purpose");
  }
  if (peer_closed_ms >= 0 && fail_rank >= 0) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(sleep_ms);
    while (!exists("failed") && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (exists("failed")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(peer_closed_ms));
      throw std::runtime_error("launch_worker rank " + rank + ": peer closed the connection");
    }
    return 0;
  }
  if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
  return 0;
}

ELASTIC_RECORD_MAIN(work)
