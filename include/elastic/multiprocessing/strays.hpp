// Descendants that come back to a subreaper (PR_SET_CHILD_SUBREAPER) when their
// parents die: found through /proc, killed and reaped so that nothing a job started
// survives it.
#pragma once

#include <dirent.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <elastic/helper_processes.hpp>
#include <fstream>
#include <string>
#include <vector>

namespace elastic::multiprocessing {

namespace detail {

// Children of this process (any thread: an orphan comes back to one of them), from /proc.
inline std::vector<pid_t> children_of_self() {
  std::vector<pid_t> result;
  if (DIR* tasks = ::opendir("/proc/self/task")) {
    while (dirent* entry = ::readdir(tasks)) {
      if (entry->d_name[0] == '.') continue;
      std::ifstream in(std::string("/proc/self/task/") + entry->d_name + "/children");
      pid_t pid;
      while (in >> pid) result.push_back(pid);
    }
    ::closedir(tasks);
  }
  return result;
}

}  // namespace detail

// Kills and reaps every child of this process but the library's own helpers
// (watchdog, lease sentinel), repeating while killing them hands back more.
inline void kill_strays() {
  for (int round = 0; round < 100; ++round) {
    auto children = detail::children_of_self();
    children.erase(std::remove_if(children.begin(), children.end(),
                                  [](pid_t pid) { return elastic::HelperProcesses::instance().contains(pid); }),
                   children.end());
    if (children.empty()) return;
    for (pid_t pid : children) {
      ::kill(pid, SIGKILL);
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
}

}  // namespace elastic::multiprocessing
