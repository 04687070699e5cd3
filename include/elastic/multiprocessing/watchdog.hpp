// Watchdog: a small forked process that outlives its parent for one purpose.
// The parent tells it, through a pipe, which process groups it started; when
// the parent's end of the pipe closes without a goodbye (the parent was
// SIGKILLed or died of a signal it does not handle), the watchdog SIGKILLs every
// group still registered, then the job's cgroup where there is one; without a
// cgroup, every process of its own uid whose environment carries the job's marker
// as a variable of its own (`marker_value()`, given to each worker and inherited
// by everything it starts): descendants that left their group (setsid, setpgid)
// go too. PR_SET_PDEATHSIG alone only reaches the workers themselves, not their
// children.
#pragma once

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <elastic/helper_processes.hpp>
#include <elastic/multiprocessing/job_cgroup.hpp>
#include <elastic/multiprocessing/spawn.hpp>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace elastic::multiprocessing {

class Watchdog {
 public:
  static constexpr int max_groups = 8192;
  // The environment variable that marks every process of the job.
  static constexpr const char* marker_name = "ELASTIC_JOB_MARKER";

  Watchdog() = default;
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() { stop(); }

  // Forks the watchdog. Only async-signal-safe calls happen in the child, so
  // this is safe from a multi-threaded parent too.
  // `cgroup_dir`: the job's cgroup (JobCgroup), killed first; "" when none.
  void start(const std::string& cgroup_dir = "") {
    if (pid_ > 0) return;
    cgroup_dir_ = cgroup_dir;
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "watchdog pipe");
    std::vector<int> groups(max_groups, 0);  // allocated before fork: the child must not allocate
    int* table = groups.data();
    marker_value_ = new_marker_value();
    const std::string needle = std::string(marker_name) + "=" + marker_value_;
    pid_t pid = ::fork();
    if (pid < 0) {
      int error = errno;
      ::close(fds[0]);
      ::close(fds[1]);
      throw std::system_error(error, std::generic_category(), "watchdog fork");
    }
    if (pid == 0)
      run_child(fds[0], fds[1], table, needle.c_str(), needle.size(),
                cgroup_dir_.empty() ? nullptr : cgroup_dir_.c_str());
    ::close(fds[0]);
    write_fd_ = fds[1];
    pid_ = pid;
  }

  pid_t pid() const { return pid_; }

  // The marker's value for this job (after start()): set it as `marker_name` in
  // each worker's environment.
  const std::string& marker_value() const { return marker_value_; }

  // Groups told to the watchdog in one write (below PIPE_BUF).
  static constexpr std::size_t batch = 64;

  // Registers a group. Groups are sent `batch` at a time (one write, one wake-up of
  // the watchdog); flush() sends the rest. A group not yet sent when the parent dies
  // is missed by the group kill, not by the death signal, the job's marker or cgroup.
  void add_group(pid_t pgid) {
    pending_[pending_count_++] = static_cast<std::int32_t>(pgid);
    if (pending_count_ == batch) flush();
  }
  void flush() {
    send(pending_, pending_count_);
    pending_count_ = 0;
  }
  // A worker that could not join the job's cgroup: the cgroup's kill misses it and
  // what it starts, so the marker scan runs too.
  void worker_outside_cgroup() {
    flush();
    send(outside_cgroup);
  }
  void remove_group(pid_t pgid) {
    flush();  // added before removed
    send(-static_cast<std::int32_t>(pgid));
  }

  // A clean goodbye: the watchdog exits without killing anything, and is reaped.
  void stop() {
    if (pid_ <= 0) return;
    flush();
    send(0);
    ::close(write_fd_);
    write_fd_ = -1;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

 private:
  // Never a (negated) process group id: pids stay below 2^22.
  static constexpr std::int32_t outside_cgroup = INT32_MIN;

  void send(std::int32_t value) { send(&value, 1); }
  void send(const std::int32_t* values, std::size_t n) {
    if (write_fd_ < 0 || n == 0) return;
    // At most `batch` values, below PIPE_BUF: written whole or not at all, so the
    // watchdog never reads part of a value.
    static_assert(batch * sizeof(std::int32_t) <= PIPE_BUF);
    while (::write(write_fd_, values, n * sizeof(std::int32_t)) < 0 && errno == EINTR) {
    }
  }

  static std::string new_marker_value() {
    unsigned char bytes[16] = {};
    if (::getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) {
      // Unique enough among this machine's live jobs: our pid and the time.
      const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
      std::memcpy(bytes, &now, sizeof(now));
      const pid_t self = ::getpid();
      std::memcpy(bytes + sizeof(now), &self, sizeof(self));
    }
    static const char hex[] = "0123456789abcdef";
    std::string value;
    for (unsigned char b : bytes) {
      value += hex[b >> 4];
      value += hex[b & 15];
    }
    return value;
  }

  // True when /proc/<pid>/environ holds `needle` ("NAME=value") as a whole entry: from
  // the entry's first byte to its end, so the text quoted inside another variable's
  // value (NOTE=copied:ELASTIC_JOB_MARKER=...) does not count. Async-signal-safe: the
  // watchdog may be forked from a multi-threaded parent, so it must not allocate.
  static bool environ_has(int proc, const char* pid_name, const char* needle, std::size_t needle_size) {
    char path[64];
    std::size_t at = 0;
    for (const char* p = pid_name; *p != '\0' && at < 40; ++p) path[at++] = *p;
    const char tail[] = "/environ";
    for (std::size_t i = 0; i < sizeof(tail); ++i) path[at++] = tail[i];
    int fd = ::openat(proc, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    // The current entry's bytes so far, while they match the needle's start.
    std::size_t matched = 0;
    bool matching = true;
    bool found = false;
    char buffer[8192];
    while (!found) {
      ssize_t got = ::read(fd, buffer, sizeof(buffer));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      for (ssize_t i = 0; i < got && !found; ++i) {
        const char c = buffer[i];
        if (c == '\0') {
          found = matching && matched == needle_size;
          matched = 0;
          matching = true;
        } else if (matching) {
          matching = matched < needle_size && c == needle[matched];
          if (matching) ++matched;
        }
      }
    }
    // The last entry may end at the end of the data, without its NUL.
    found = found || (matching && matched == needle_size);
    ::close(fd);
    return found;
  }

  // SIGKILLs every process of this watchdog's uid whose environment holds `needle`
  // as a whole entry; returns how many. Async-signal-safe (raw syscalls only).
  //
  // The process is pinned by a pidfd before it is looked at, and signalled through
  // it: should it exit meanwhile and its pid go to another process, the checks may
  // read the newcomer, but the signal fails (ESRCH) instead of reaching it. What
  // remains: /proc/<pid>'s owner is the effective uid, or root for a process that
  // is not dumpable (so a root launcher also looks at other users' non-dumpable
  // processes, which only their own users can have given the marker), and a process
  // of ours that changed its uid after it was started is no longer ours (without a
  // job cgroup it survives). Only where the kernel has no pidfd_open (before 5.3)
  // does a plain kill(pid) remain, with its reuse race.
  static int kill_marked(const char* needle, std::size_t needle_size) {
    int proc = ::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (proc < 0) return 0;
    const pid_t self = ::getpid();
    const uid_t uid = ::geteuid();
    int killed = 0;
    alignas(8) char entries[16384];
    for (;;) {
      long got = ::syscall(SYS_getdents64, proc, entries, sizeof(entries));
      if (got <= 0) break;
      for (long offset = 0; offset < got;) {
        // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
        unsigned short record = 0;
        std::memcpy(&record, entries + offset + 16, sizeof(record));
        const char* name = entries + offset + 19;
        offset += record;
        pid_t pid = 0;
        bool digits = *name != '\0';
        for (const char* p = name; *p != '\0'; ++p) {
          if (*p < '0' || *p > '9') {
            digits = false;
            break;
          }
          pid = pid * 10 + (*p - '0');
        }
        if (!digits || pid == self || pid <= 1) continue;
        const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
        if (pidfd < 0 && errno != ENOSYS) continue;  // gone already
        struct stat owner {};
        const bool ours = ::fstatat(proc, name, &owner, 0) == 0 && owner.st_uid == uid;
        if (ours && environ_has(proc, name, needle, needle_size)) {
          const long sent =
              pidfd >= 0 ? ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0) : ::kill(pid, SIGKILL);
          if (sent == 0) ++killed;
        }
        if (pidfd >= 0) ::close(pidfd);
      }
    }
    ::close(proc);
    return killed;
  }

  [[noreturn]] static void run_child(int read_fd, int write_fd, int* groups, const char* needle,
                                     std::size_t needle_size, const char* cgroup_dir) {
    ::close(write_fd);
    ::setpgid(0, 0);
    const int keep = elastic::become_helper_child("elastic-watchdog", read_fd);
    int count = 0;
    bool scan_markers = false;
    for (;;) {
      // Every write holds whole values and is atomic, so reads end on a value's end.
      std::int32_t values[batch];
      ssize_t got = ::read(keep, values, sizeof(values));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0 || got % static_cast<ssize_t>(sizeof(std::int32_t)) != 0) break;  // the parent is gone
      for (ssize_t i = 0; i < got / static_cast<ssize_t>(sizeof(std::int32_t)); ++i) {
        const std::int32_t value = values[i];
        if (value == 0) ::_exit(0);  // goodbye
        if (value == outside_cgroup) {
          scan_markers = true;
          continue;
        }
        if (value > 0) {
          if (count < max_groups) groups[count++] = value;
        } else {
          for (int g = 0; g < count; ++g)
            if (groups[g] == -value) {
              groups[g] = groups[--count];
              break;
            }
        }
      }
    }
    for (int i = 0; i < count; ++i) ::kill(-groups[i], SIGKILL);
    // The job's cgroup holds everything the workers started, wherever it went: its
    // kill is the whole answer, and no other process is looked at. Without one (or
    // when a worker could not join it), whatever carries the job's marker, until a
    // pass finds none still running (a process may fork while a pass runs; a
    // killed one no longer can). Zombies show an empty environment, so dead
    // processes are not counted.
    const bool whole_job_in_cgroup = cgroup_dir != nullptr && !scan_markers;
    if (cgroup_dir != nullptr) JobCgroup::kill_all(cgroup_dir);
    for (int pass = 0; pass < 1000 && !whole_job_in_cgroup; ++pass) {
      if (kill_marked(needle, needle_size) == 0) break;
      const timespec pause{0, 1000000};
      ::nanosleep(&pause, nullptr);
    }
    if (cgroup_dir != nullptr) JobCgroup::remove_when_empty(cgroup_dir);
    ::_exit(0);
  }

  pid_t pid_ = -1;
  int write_fd_ = -1;
  std::int32_t pending_[batch] = {};
  std::size_t pending_count_ = 0;
  std::string marker_value_;
  std::string cgroup_dir_;
};

}  // namespace elastic::multiprocessing
