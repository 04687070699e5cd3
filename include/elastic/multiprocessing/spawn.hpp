// Starting one worker process: clone(CLONE_VM|CLONE_VFORK) then, in the child,
// its own process group, PR_SET_PDEATHSIG(SIGKILL) with the parent-already-gone
// check, the chosen stdout/stderr, a clean signal mask, and execve. As cheap as
// posix_spawn (no page-table copy), which cannot set a death signal.
#pragma once

#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace elastic::multiprocessing {

namespace detail {

// A file descriptor closed at the end of its scope.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

inline int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }
inline int pidfd_send_signal(int pidfd, int sig) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// PATH lookup done in the parent, before the child exists, so the child only execs.
inline std::string resolve_executable(const std::string& name, const std::string& path_env) {
  if (name.find('/') != std::string::npos) return name;
  std::string path = path_env.empty() ? "/usr/local/bin:/usr/bin:/bin" : path_env;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t colon = path.find(':', start);
    std::string dir = path.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return name;  // execve reports ENOENT
}

// Everything the child needs, prepared by the parent: the child shares the
// parent's memory and must neither allocate nor touch anything else.
struct ChildPlan {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  int stdout_fd = -1;  // -1: keep the parent's
  int stderr_fd = -1;
  int stdin_fd = -1;
  pid_t parent = 0;
  int error = 0;  // errno of the step that failed, written by the child
  int failed_step = 0;
  int report_fd = -1;        // without shared memory (the fork path): where the child reports a failed step
  int cgroup_procs_fd = -1;  // a cgroup's cgroup.procs the child joins before exec
  int outside_cgroup = 0;    // set when the cgroup refused the child (shared memory or report_fd: step 0)
};

// Records which step failed (errno as it is) and ends the child.
[[noreturn]] inline void child_fail(ChildPlan* plan, int step) {
  plan->error = errno;
  plan->failed_step = step;
  if (plan->report_fd >= 0) {
    const int report[2] = {plan->error, plan->failed_step};
    ssize_t ignored = ::write(plan->report_fd, report, sizeof(report));
    (void)ignored;
  }
  ::_exit(127);
}

inline int child_main(void* arg) {
  auto* plan = static_cast<ChildPlan*>(arg);
  // Own process group: a signal to the group reaches the worker's children too.
  if (::setpgid(0, 0) != 0) {
    child_fail(plan, 1);
  }
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    child_fail(plan, 2);
  }
  // Joins the job's cgroup, so all it starts is in it. A refusal (a cgroup
  // hierarchy that does not allow it) is not fatal: the parent is told, and the
  // watchdog falls back on the job's marker.
  if (plan->cgroup_procs_fd >= 0 && ::write(plan->cgroup_procs_fd, "0", 1) != 1) {
    plan->outside_cgroup = 1;
    if (plan->report_fd >= 0) {
      const int report[2] = {errno, 0};
      ssize_t ignored = ::write(plan->report_fd, report, sizeof(report));
      (void)ignored;
    }
  }
  // The parent may have died before the death signal was armed.
  if (::getppid() != plan->parent) ::_exit(127);
  if (plan->stdin_fd >= 0 && ::dup2(plan->stdin_fd, STDIN_FILENO) < 0) {
    child_fail(plan, 3);
  }
  if (plan->stdout_fd >= 0 && ::dup2(plan->stdout_fd, STDOUT_FILENO) < 0) {
    child_fail(plan, 3);
  }
  if (plan->stderr_fd >= 0 && ::dup2(plan->stderr_fd, STDERR_FILENO) < 0) {
    child_fail(plan, 3);
  }
  // Only 0, 1 and 2 reach the worker, whatever the parent inherited without
  // close-on-exec (as Python's subprocess does with close_fds).
  ::syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);
  // The parent blocks the signals it reads through signalfd and ignores SIGPIPE;
  // the worker starts with an empty mask and default SIGPIPE/SIGXFSZ, as
  // Python's subprocess gives. Caught signals are reset by execve itself.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, nullptr);
  ::sigaction(SIGXFSZ, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::execve(plan->path, plan->argv, plan->envp);
  child_fail(plan, 4);
}

inline std::vector<std::string> env_strings(const std::map<std::string, std::string>& env) {
  std::vector<std::string> result;
  result.reserve(env.size());
  for (const auto& [name, value] : env) result.push_back(name + "=" + value);
  return result;
}

// The stack a child runs on until execve, one per thread and reused: CLONE_VFORK
// keeps the thread suspended until its child has exec'd or exited, so the stack is
// free again when clone returns. (A fresh stack per worker cost an mmap, page
// faults and an munmap with its TLB shootdown, each time.)
class SpawnStack {
 public:
  static constexpr std::size_t size = 64 * 1024;
  SpawnStack() = default;
  SpawnStack(const SpawnStack&) = delete;
  SpawnStack& operator=(const SpawnStack&) = delete;
  ~SpawnStack() {
    if (base_ != nullptr) ::munmap(base_, size);
  }
  // The top of the stack (it grows down); nullptr when it cannot be mapped.
  char* top() {
    if (base_ == nullptr) {
      void* mapped = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      if (mapped == MAP_FAILED) return nullptr;
      base_ = mapped;
    }
    return static_cast<char*>(base_) + size;
  }

 private:
  void* base_ = nullptr;
};

// ThreadSanitizer's runtime, linked into a program built with -fsanitize=thread.
extern "C" void __tsan_init() __attribute__((weak));  // NOLINT(bugprone-reserved-identifier): the runtime's name

// Workers start with clone(CLONE_VM | CLONE_VFORK) on a reused stack, or with a
// plain fork() where a child sharing the parent's memory cannot be followed: under
// ThreadSanitizer, or when ELASTIC_SPAWN_WITH_FORK=1 is in the environment. The
// choice is made at run time, not by a macro, so that every translation unit of a
// program starts workers the same way (one definition of every inline function).
inline bool spawn_with_fork() {
  static const bool with_fork = [] {
    const char* forced = std::getenv("ELASTIC_SPAWN_WITH_FORK");
    return (forced != nullptr && std::string(forced) == "1") || &__tsan_init != nullptr;
  }();
  return with_fork;
}

// fork(): the failed step comes back through a close-on-exec pipe. Reading it waits,
// as CLONE_VFORK does, until the child has exec'd (EOF) or failed.
inline pid_t start_child_with_fork(ChildPlan& plan, int& start_errno) {
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe for spawn");
  plan.report_fd = report[1];
  pid_t pid = ::fork();
  start_errno = errno;
  if (pid == 0) {
    ::close(report[0]);
    child_main(&plan);
  }
  ::close(report[1]);
  if (pid > 0) {
    // Each report is one write of two ints (step 0: the cgroup refused the child, not a failure).
    for (;;) {
      int failure[2] = {0, 0};
      ssize_t got;
      while ((got = ::read(report[0], failure, sizeof(failure))) < 0 && errno == EINTR) {
      }
      if (got != static_cast<ssize_t>(sizeof(failure))) break;
      if (failure[1] == 0) {
        plan.outside_cgroup = 1;
        continue;
      }
      plan.error = failure[0];
      plan.failed_step = failure[1];
      break;
    }
  }
  ::close(report[0]);
  return pid;
}

// The child runs on its own small stack until execve; with CLONE_VFORK the parent
// resumes only once the child has exec'd or exited.
inline pid_t start_child_with_clone(ChildPlan& plan, int& start_errno) {
  thread_local SpawnStack stack;
  char* top = stack.top();
  if (top == nullptr) throw std::system_error(errno, std::generic_category(), "mmap for spawn");
  pid_t pid = ::clone(child_main, top, CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
  start_errno = errno;
  return pid;
}

}  // namespace detail

// A started process: pid, its pidfd (close-on-exec), its process group (= pid).
struct SpawnedProcess {
  pid_t pid = -1;
  int pidfd = -1;
  bool outside_cgroup = false;  // SpawnOptions::cgroup_procs_fd was given and the cgroup refused it
};

struct SpawnOptions {
  int stdout_fd = -1;
  int stderr_fd = -1;
  int stdin_fd = -1;
  int cgroup_procs_fd = -1;  // when set, the child joins that cgroup before exec
};

// Starts argv[0] (looked up in the PATH of `env`) with exactly `env`, given as
// NAME=value entries. Throws std::system_error when the program cannot be started.
inline SpawnedProcess spawn_process(const std::vector<std::string>& argv, std::vector<std::string> env,
                                    const SpawnOptions& options = {}) {
  if (argv.empty()) throw std::invalid_argument("spawn_process: empty argv");
  std::string path_env;
  for (const auto& entry : env)
    if (entry.compare(0, 5, "PATH=") == 0) path_env = entry.substr(5);
  std::string path = detail::resolve_executable(argv[0], path_env);
  std::vector<std::string> args = argv;
  std::vector<char*> arg_ptrs;
  arg_ptrs.reserve(args.size() + 1);
  for (auto& a : args) arg_ptrs.push_back(a.data());
  arg_ptrs.push_back(nullptr);
  std::vector<char*> env_ptrs;
  env_ptrs.reserve(env.size() + 1);
  for (auto& e : env) env_ptrs.push_back(e.data());
  env_ptrs.push_back(nullptr);

  detail::ChildPlan plan;
  plan.path = path.c_str();
  plan.argv = arg_ptrs.data();
  plan.envp = env_ptrs.data();
  plan.stdout_fd = options.stdout_fd;
  plan.stderr_fd = options.stderr_fd;
  plan.stdin_fd = options.stdin_fd;
  plan.cgroup_procs_fd = options.cgroup_procs_fd;
  plan.parent = ::getpid();

  int clone_errno = 0;
  const pid_t pid = detail::spawn_with_fork() ? detail::start_child_with_fork(plan, clone_errno)
                                              : detail::start_child_with_clone(plan, clone_errno);
  if (pid < 0) throw std::system_error(clone_errno, std::generic_category(), "cannot start " + argv[0]);
  if (plan.failed_step != 0) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    static const char* steps[] = {"", "setpgid", "prctl", "dup2", "execve"};
    throw std::system_error(plan.error, std::generic_category(),
                            "cannot start " + argv[0] + " (" + steps[plan.failed_step] + ")");
  }
  // The child made its own group before execve, and this thread resumed only after
  // that: a signal to the group reaches it from now on.
  SpawnedProcess process;
  process.pid = pid;
  process.outside_cgroup = plan.outside_cgroup != 0;
  process.pidfd = detail::pidfd_open(pid);
  if (process.pidfd < 0) {
    int error = errno;
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    throw std::system_error(error, std::generic_category(), "pidfd_open");
  }
  ::fcntl(process.pidfd, F_SETFD, FD_CLOEXEC);
  return process;
}

// The same, with the environment as a map.
inline SpawnedProcess spawn_process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                                    const SpawnOptions& options = {}) {
  return spawn_process(argv, detail::env_strings(env), options);
}

}  // namespace elastic::multiprocessing
