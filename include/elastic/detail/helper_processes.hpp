// Helper processes the library forks for itself and keeps for as long as their
// owner lives (the etcd store's lease sentinel): a launcher that kills the
// processes left over after a round leaves these alone. Their owners stop and
// reap them.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace elastic::detail {

class HelperProcesses {
 public:
  static HelperProcesses& instance() {
    static HelperProcesses registry;
    return registry;
  }
  void add(pid_t pid) {
    std::lock_guard<std::mutex> lock(mutex_);
    pids_.push_back(pid);
  }
  void remove(pid_t pid) {
    std::lock_guard<std::mutex> lock(mutex_);
    pids_.erase(std::remove(pids_.begin(), pids_.end(), pid), pids_.end());
  }
  bool contains(pid_t pid) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::find(pids_.begin(), pids_.end(), pid) != pids_.end();
  }

 private:
  mutable std::mutex mutex_;
  std::vector<pid_t> pids_;
};

}  // namespace elastic::detail
