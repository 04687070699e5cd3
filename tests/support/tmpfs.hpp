// Test support: a small tmpfs (a disk that fills up, or a read-only one) mounted for
// one scope, where this process may mount (root, or a user namespace).
#pragma once

#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

namespace elastic::testing {

class ScopedTmpfs {
 public:
  // `options`: tmpfs mount options, e.g. "size=16k" or "ro,size=64k".
  ScopedTmpfs(const std::string& at, const std::string& options) : at_(at) {
    std::error_code ignored;
    std::filesystem::create_directories(at, ignored);
    if (::mount("tmpfs", at.c_str(), "tmpfs", 0, options.c_str()) == 0)
      mounted_ = true;
    else
      error_ = std::strerror(errno);
  }
  ~ScopedTmpfs() {
    if (mounted_) ::umount2(at_.c_str(), MNT_DETACH);
  }
  ScopedTmpfs(const ScopedTmpfs&) = delete;
  ScopedTmpfs& operator=(const ScopedTmpfs&) = delete;
  bool mounted() const { return mounted_; }
  // Why it could not be mounted.
  const std::string& error() const { return error_; }

 private:
  std::string at_;
  bool mounted_ = false;
  std::string error_;
};

}  // namespace elastic::testing
