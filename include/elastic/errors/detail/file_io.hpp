// File access for error files: bounded reads that never block on special files,
// and atomic writes (a temporary in the same directory, then rename(2)) so a reader
// sees the whole file or none of it.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <elastic/errors/detail/signal_safe.hpp>
#include <elastic/suppress_signal.hpp>
#include <elastic/write_all.hpp>
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

// An open regular file of at most `max_bytes` (from fstat), or why there is none.
// O_NONBLOCK keeps a FIFO from blocking the open; anything but a regular file
// counts as absent, as os.path.isfile() makes it for PyTorch. Without
// `follow_symlinks`, a symlink at `path` counts as absent (O_NOFOLLOW).
struct OpenedFile {
  ReadResult::Status status = ReadResult::Status::error;
  int fd = -1;  // owned: closed by the destructor
  std::uint64_t size = 0;
  std::string reason;

  OpenedFile() = default;
  OpenedFile(const OpenedFile&) = delete;
  OpenedFile& operator=(const OpenedFile&) = delete;
  ~OpenedFile() {
    if (fd >= 0) ::close(fd);
  }
};

inline void open_regular_file(OpenedFile& file, const std::string& path, std::size_t max_bytes,
                              bool follow_symlinks = true) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | (follow_symlinks ? 0 : O_NOFOLLOW));
  if (fd < 0) {
    int err = errno;
    file.reason = std::strerror(err);
    file.status = (err == ENOENT || err == ENOTDIR || err == ELOOP || err == ENAMETOOLONG || err == ENXIO)
                      ? ReadResult::Status::not_a_file
                      : ReadResult::Status::error;
    return;
  }
  file.fd = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    file.reason = std::strerror(errno);
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    file.status = ReadResult::Status::not_a_file;
    file.reason = file_kind(st.st_mode);
    return;
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    file.reason = fmt::format("file is {} bytes, over the limit of {} bytes", st.st_size, max_bytes);
    return;
  }
  file.size = static_cast<std::uint64_t>(st.st_size);
  file.status = ReadResult::Status::ok;
}

// Reads a regular file of at most `max_bytes` whole (see open_regular_file).
inline ReadResult read_regular_file(const std::string& path, std::size_t max_bytes, bool follow_symlinks = true) {
  ReadResult result;
  OpenedFile file;
  open_regular_file(file, path, max_bytes, follow_symlinks);
  if (file.status != ReadResult::Status::ok) {
    result.status = file.status;
    result.reason = file.reason;
    return result;
  }
  const int fd = file.fd;
  // The file may still grow while we read: never take more than max_bytes + 1.
  result.data.resize(static_cast<std::size_t>(file.size) + 1);
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

using ::elastic::write_all;

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
// The file gets mode 0600. The temporary has a random name and is opened with
// O_EXCL|O_NOFOLLOW (a name already taken is skipped, see safe_open_temporary); the
// final step is rename(2), which replaces a symlink at `path` instead of following it.
inline std::string write_file_atomically(const std::string& path, std::string_view data) {
  namespace fs = std::filesystem;
  if (path.empty()) return "empty error file path";
  const fs::path target(path);
  if (!target.has_filename()) return fmt::format("{} names a directory, not a file", path);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (std::string problem = make_directories(parent.string()); !problem.empty()) return problem;

  // Past RLIMIT_FSIZE the write fails with EFBIG rather than SIGXFSZ killing the worker.
  elastic::SuppressSignal no_sigxfsz(SIGXFSZ);
  std::string temp(path.size() + 64, '\0');
  StaticText<256> unused_scratch;  // the directories exist already
  const int fd = safe_open_temporary(path.c_str(), temp.data(), temp.size(), unused_scratch);
  temp.resize(safe_strlen(temp.c_str()));
  if (fd < 0) return fmt::format("cannot create {}: {}", temp, std::strerror(-fd));
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
