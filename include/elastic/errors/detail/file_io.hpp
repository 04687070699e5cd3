// File access for error files: bounded reads that never block on special files,
// and atomic writes (a temporary in the same directory, then rename(2)) so a reader
// sees the whole file or none of it.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <elastic/detail/suppress_signal.hpp>
#include <elastic/detail/write_all.hpp>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace elastic::errors::detail {

struct ReadResult {
  enum class Status {
    ok,          // `data` holds the whole file
    not_a_file,  // missing, or not a regular file (directory, FIFO, device, symlink loop)
    error,       // exists but cannot be used; `reason` says why
  };
  Status status = Status::error;
  std::string data;
  std::string reason;
};

inline const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Reads a regular file of at most `max_bytes`. O_NONBLOCK keeps a FIFO from
// blocking the open; anything but a regular file counts as absent, as
// os.path.isfile() makes it for PyTorch.
inline ReadResult read_regular_file(const std::string& path, std::size_t max_bytes) {
  ReadResult result;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    result.reason = std::strerror(err);
    result.status = (err == ENOENT || err == ENOTDIR || err == ELOOP || err == ENAMETOOLONG || err == ENXIO)
                        ? ReadResult::Status::not_a_file
                        : ReadResult::Status::error;
    return result;
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    result.reason = std::strerror(errno);
    return result;
  }
  if (!S_ISREG(st.st_mode)) {
    result.status = ReadResult::Status::not_a_file;
    result.reason = file_kind(st.st_mode);
    return result;
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    result.reason = fmt::format("file is {} bytes, over the limit of {} bytes", st.st_size, max_bytes);
    return result;
  }
  // The file may still grow while we read: never take more than max_bytes + 1.
  result.data.resize(static_cast<std::size_t>(st.st_size) + 1);
  std::size_t used = 0;
  for (;;) {
    if (used == result.data.size()) {
      if (result.data.size() > max_bytes) {
        result.data.clear();
        result.reason = fmt::format("file grew over the limit of {} bytes while being read", max_bytes);
        return result;
      }
      result.data.resize(std::min<std::size_t>(max_bytes + 1, result.data.size() * 2 + 4096));
    }
    ssize_t n = ::read(fd, result.data.data() + used, result.data.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      result.data.clear();
      result.reason = std::strerror(errno);
      return result;
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  result.data.resize(used);
  result.status = ReadResult::Status::ok;
  return result;
}

using ::elastic::detail::write_all;

// Creates `dir` and its missing parents, each new one with mode 0700 (an error
// file may hold data its owner alone should read). Existing ones are kept as they are.
inline std::string make_directories(const std::string& dir) {
  struct stat st {};
  if (dir.empty() || ::stat(dir.c_str(), &st) == 0) {
    if (dir.empty() || S_ISDIR(st.st_mode)) return {};
    return fmt::format("cannot create directory {}: {}", dir, std::strerror(ENOTDIR));
  }
  // Every prefix ending before a '/', then the whole path.
  for (std::size_t end = dir.find('/', 1);; end = dir.find('/', end + 1)) {
    const std::string prefix = dir.substr(0, end);
    if (!prefix.empty() && prefix.back() != '/' && ::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      return fmt::format("cannot create directory {}: {}", prefix, std::strerror(errno));
    }
    if (end == std::string::npos) break;
  }
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return fmt::format("cannot create directory {}: {}", dir, std::strerror(errno != 0 ? errno : ENOTDIR));
  return {};
}

// Writes `data` to `path` atomically, creating missing parent directories.
// Returns an empty string on success, else why it failed (the path is named).
// The file gets mode 0600. The temporary is opened with O_EXCL|O_NOFOLLOW and the
// final step is rename(2), which replaces a symlink at `path` instead of following it.
inline std::string write_file_atomically(const std::string& path, std::string_view data) {
  namespace fs = std::filesystem;
  if (path.empty()) return "empty error file path";
  const fs::path target(path);
  if (!target.has_filename()) return fmt::format("{} names a directory, not a file", path);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (std::string problem = make_directories(parent.string()); !problem.empty()) return problem;

  // The temporary's name must fit NAME_MAX even when the target's name nearly fills it.
  static std::atomic<unsigned> counter{0};
  const std::string name = target.filename().string().substr(0, 200);
  const std::string temp = (parent / fmt::format(".{}.tmp.{}.{}", name, ::getpid(), counter.fetch_add(1))).string();
  // Past RLIMIT_FSIZE the write fails with EFBIG rather than SIGXFSZ killing the worker.
  elastic::detail::SuppressSignal no_sigxfsz(SIGXFSZ);
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return fmt::format("cannot create {}: {}", temp, std::strerror(errno));
  bool written = write_all(fd, data.data(), data.size());
  int write_errno = errno;
  if (::close(fd) != 0 && written) {
    written = false;
    write_errno = errno;
  }
  if (!written) {
    ::unlink(temp.c_str());
    return fmt::format("cannot write {}: {}", temp, std::strerror(write_errno));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(temp.c_str());
    return fmt::format("cannot rename {} to {}: {}", temp, path, std::strerror(err));
  }
  return {};
}

}  // namespace elastic::errors::detail
