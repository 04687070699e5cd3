// start_processes: N copies of a command, each with its own environment, error
// file and log destinations, watched through pidfds in one epoll set. A failure
// is seen the moment it happens (no polling); the other workers are then stopped
// (SIGTERM to their process groups, SIGKILL after a grace period, or at once
// when the watched fd, the launcher's signals, becomes readable meanwhile).
// Console output is queued (tee.hpp's Console): the loop never blocks on it.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <elastic/errors/process_failure.hpp>
#include <elastic/errors/signals.hpp>
#include <elastic/log.hpp>
#include <elastic/multiprocessing/logs_specs.hpp>
#include <elastic/multiprocessing/spawn.hpp>
#include <elastic/multiprocessing/strays.hpp>
#include <elastic/multiprocessing/tee.hpp>
#include <elastic/multiprocessing/watchdog.hpp>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace elastic::multiprocessing {

struct RunProcsResult {
  std::map<int, int> return_values;        // local rank -> exit code (0), when all succeeded
  std::map<int, ProcessFailure> failures;  // local rank -> failure
  std::map<int, std::string> stdouts;      // local rank -> stdout.log path ("" if none)
  std::map<int, std::string> stderrs;
  bool is_failed() const { return !failures.empty(); }
};

struct PContextOptions {
  // Start a watchdog that kills the workers' process groups if this process dies.
  bool watchdog = true;
  // Console fds for teed output (written through Console::of(fd)).
  int console_stdout = STDOUT_FILENO;
  int console_stderr = STDERR_FILENO;
  // Teed lines containing any of these are also written to the logs specs'
  // filtered_stdout / filtered_stderr file.
  std::vector<std::string> duplicate_stdout_filters;
  std::vector<std::string> duplicate_stderr_filters;
  // When the workers are done, queued console output gets this long without the
  // console taking a single byte before it is left behind.
  std::chrono::milliseconds console_stall_limit{std::chrono::seconds(30)};
  // For a child subreaper: reap, as they exit, the descendants that come back to
  // this process when their parents die (SIGCHLD is read through a signalfd while
  // the context lives, blocked in the calling thread).
  bool reap_orphans = false;
};

class PContext {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds forever{-1};

  // `args[r]`: the arguments after `entrypoint` for local rank r; `envs[r]`: its
  // complete environment (TORCHELASTIC_ERROR_FILE is added from the logs spec).
  PContext(std::string name, std::string entrypoint, std::map<int, std::vector<std::string>> args,
           std::map<int, Env> envs, LogsSpecs& logs_specs, std::map<int, std::string> log_line_prefixes = {},
           PContextOptions options = {})
      : name_(std::move(name)),
        entrypoint_(std::move(entrypoint)),
        args_(std::move(args)),
        envs_(std::move(envs)),
        logs_specs_(logs_specs),
        prefixes_(std::move(log_line_prefixes)),
        options_(options) {
    epoll_ = detail::Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) throw std::system_error(errno, std::generic_category(), "epoll_create1");
  }
  PContext(const PContext&) = delete;
  PContext& operator=(const PContext&) = delete;
  ~PContext() {
    try {
      close(SIGKILL, std::chrono::milliseconds(0));
    } catch (...) {
    }
    if (child_signals_) ::pthread_sigmask(SIG_SETMASK, &mask_before_, nullptr);
  }

  const std::string& name() const { return name_; }
  const LogsDest& logs_dest() const { return dest_; }

  void start() {
    dest_ = logs_specs_.reify(envs_);
    if (options_.watchdog) {
      cgroup_.create();
      watchdog_.start(cgroup_.path());
    }
    if (options_.reap_orphans) watch_children();
    try {
      start_workers();
    } catch (...) {
      watchdog_.flush();  // those started are stopped by close(); until then the watchdog knows them
      throw;
    }
    watchdog_.flush();
  }

  std::map<int, pid_t> pids() const {
    std::map<int, pid_t> result;
    for (const auto& w : workers_) result[w->local_rank] = w->pid;
    return result;
  }

  // An extra fd (e.g. a signalfd) that makes wait() return early when readable.
  void watch_fd(int fd) {
    watched_fd_ = fd;
    add_to_epoll(fd, kind_watched, 0);
  }
  // True when the last wait() returned because the watched fd became readable.
  bool watched_fd_ready() const { return watched_ready_; }
  // True when the watched fd became readable while workers were being stopped
  // (after a failure, or in close()): the grace period was cut short and the
  // workers SIGKILLed at once. What made it readable is left to the caller.
  bool stop_interrupted() const { return stop_interrupted_; }

  // Waits up to `timeout` (forever by default). Returns the result once every
  // worker succeeded or one failed (the others are then stopped with SIGTERM and
  // `grace`), std::nullopt on timeout or when the watched fd is readable. A
  // failure seen together with the watched fd wins: the result comes back.
  std::optional<RunProcsResult> wait(std::chrono::milliseconds timeout = forever,
                                     std::chrono::milliseconds grace = std::chrono::seconds(30)) {
    watched_ready_ = false;
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      if (result_) return result_;
      if (!failed_.empty()) {
        stop_survivors(SIGTERM, grace);
        return finish();
      }
      if (running_ == 0) return finish();
      int wait_ms = -1;
      if (timeout.count() >= 0) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return std::nullopt;
        wait_ms = static_cast<int>(left);
      }
      if (poll_events(wait_ms) && failed_.empty()) {
        watched_ready_ = true;
        return std::nullopt;
      }
    }
  }

  // Stops every running worker: `sig` to its process group, SIGKILL after `grace`.
  void close(int sig = SIGTERM, std::chrono::milliseconds grace = std::chrono::seconds(30)) {
    if (closed_) return;
    stop_survivors(sig, grace);
    if (!result_) finish();
    closed_ = true;
  }

 private:
  // Starts every worker, in local rank order, each one's group registered with the
  // watchdog (sent in batches: start() flushes the last one).
  void start_workers() {
    for (const auto& [local_rank, env_in] : envs_) {
      std::vector<std::string> env;
      env.reserve(env_in.size() + 2);
      for (const auto& [name, value] : env_in)
        if (name != "TORCHELASTIC_ERROR_FILE" && name != Watchdog::marker_name) env.push_back(name + "=" + value);
      env.push_back("TORCHELASTIC_ERROR_FILE=" + dest_.error_files[local_rank]);
      if (options_.watchdog) env.push_back(std::string(Watchdog::marker_name) + "=" + watchdog_.marker_value());
      auto worker = std::make_unique<Worker>();
      worker->local_rank = local_rank;
      worker->error_file = dest_.error_files[local_rank];
      std::vector<std::string> argv{entrypoint_};
      auto a = args_.find(local_rank);
      if (a != args_.end()) argv.insert(argv.end(), a->second.begin(), a->second.end());

      SpawnOptions spawn;
      detail::Fd out_child, err_child;
      open_stream(*worker, worker->out, dest_.stdouts[local_rank], dest_.tee_stdouts[local_rank],
                  options_.console_stdout, out_child);
      open_stream(*worker, worker->err, dest_.stderrs[local_rank], dest_.tee_stderrs[local_rank],
                  options_.console_stderr, err_child);
      spawn.stdout_fd = out_child.get();
      spawn.stderr_fd = err_child.get();
      spawn.cgroup_procs_fd = cgroup_.procs_fd();
      SpawnedProcess process = spawn_process(argv, std::move(env), spawn);
      worker->pid = process.pid;
      worker->pidfd = detail::Fd(process.pidfd);
      worker->running = true;
      if (options_.watchdog) watchdog_.add_group(process.pid);
      if (process.outside_cgroup) {
        log::warning("local_rank {} (pid {}) could not join the job's cgroup {}: its environment marker stands in",
                     local_rank, process.pid, cgroup_.path());
        if (options_.watchdog) watchdog_.worker_outside_cgroup();
      }
      // Owned before anything else can throw, so close() always finds it.
      const std::size_t index = workers_.size();
      workers_.push_back(std::move(worker));
      ++running_;
      Worker& added = *workers_.back();
      add_to_epoll(added.pidfd.get(), kind_pid, index);
      added.out.epoll_data = epoll_data(kind_out, index);
      added.err.epoll_data = epoll_data(kind_err, index);
      if (added.out.pipe) add_to_epoll(added.out.pipe.get(), kind_out, index);
      if (added.err.pipe) add_to_epoll(added.err.pipe.get(), kind_err, index);
      log::debug("started local_rank {} (pid {}): {}", local_rank, process.pid, argv[0]);
    }
  }

  enum : std::uint32_t {
    kind_pid = 1,
    kind_out = 2,
    kind_err = 3,
    kind_watched = 4,
    kind_console_room = 5,
    kind_child_signal = 6
  };

  struct Stream {
    detail::Fd pipe;  // read end, when teed
    detail::Fd file;  // log file the launcher writes, when teed
    std::string file_path;
    LinePrefixer console;
    bool paused = false;  // not read while its console is full
    std::uint64_t epoll_data = 0;
  };

  struct Worker {
    int local_rank = 0;
    pid_t pid = -1;
    detail::Fd pidfd;
    bool running = false;
    bool terminated = false;  // we stopped it: not a failure
    int exitcode = 0;
    std::string error_file;
    Stream out, err;
  };

  static detail::Fd open_log_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open log file " + path);
    return detail::Fd(fd);
  }

  // Redirect only: the worker writes its file itself. Tee: a pipe the launcher
  // copies to the file and, line by line, to the console.
  void open_stream(const Worker& worker, Stream& stream, const std::string& file, const std::string& tee,
                   int console_fd, detail::Fd& child_end) {
    if (file.empty()) return;
    if (tee.empty()) {
      child_end = open_log_file(file);
      return;
    }
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    stream.pipe = detail::Fd(fds[0]);
    child_end = detail::Fd(fds[1]);
    ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
    stream.file = open_log_file(file);
    stream.file_path = file;
    auto prefix = prefixes_.find(worker.local_rank);
    stream.console = LinePrefixer(console_fd, prefix == prefixes_.end() ? std::string() : prefix->second);
    const bool is_out = &stream == &worker.out;
    const auto& filters = is_out ? options_.duplicate_stdout_filters : options_.duplicate_stderr_filters;
    const std::string& filtered_path = is_out ? dest_.filtered_stdout : dest_.filtered_stderr;
    detail::Fd& filtered = is_out ? filtered_stdout_ : filtered_stderr_;
    if (!filters.empty() && !filtered_path.empty()) {
      if (!filtered) filtered = open_log_file(filtered_path);
      stream.console.duplicate_to(filtered.get(), &filters);
    }
    if (Console* console = stream.console.console()) {
      // Told when a full console has room again, to resume the paused streams.
      if (console_rooms_.insert(console->room_fd()).second)
        add_to_epoll(console->room_fd(), kind_console_room, static_cast<std::size_t>(console->room_fd()));
    }
  }

  static std::uint64_t epoll_data(std::uint32_t kind, std::size_t index) {
    return (static_cast<std::uint64_t>(kind) << 32) | index;
  }

  void add_to_epoll(int fd, std::uint32_t kind, std::size_t index) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = epoll_data(kind, index);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
      throw std::system_error(errno, std::generic_category(), "epoll_ctl");
  }

  // Stops (or resumes) reading a stream whose console is full: the worker then
  // waits on its pipe, and the loop goes on watching exits and signals.
  void set_paused(Stream& stream, bool paused) {
    if (!stream.pipe || stream.paused == paused) return;
    epoll_event ev{};
    ev.events = paused ? 0u : static_cast<std::uint32_t>(EPOLLIN);
    ev.data.u64 = stream.epoll_data;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, stream.pipe.get(), &ev);
    stream.paused = paused;
  }

  void on_console_room(int room_fd) {
    std::uint64_t count = 0;
    ssize_t ignored = ::read(room_fd, &count, sizeof(count));
    (void)ignored;
    for (auto& w : workers_)
      for (Stream* stream : {&w->out, &w->err})
        if (stream->paused && stream->console.console()->has_room()) set_paused(*stream, false);
  }

  // SIGCHLD through a signalfd, blocked in this thread while the context lives.
  void watch_children() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    ::pthread_sigmask(SIG_BLOCK, &set, &mask_before_);
    child_signals_ = detail::Fd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!child_signals_) {
      int error = errno;
      ::pthread_sigmask(SIG_SETMASK, &mask_before_, nullptr);
      throw std::system_error(error, std::generic_category(), "signalfd");
    }
    add_to_epoll(child_signals_.get(), kind_child_signal, 0);
  }

  // Reaps the children that exited and are neither workers (reaped by their
  // pidfds, once their groups are killed) nor the watchdog.
  void reap_orphans() {
    signalfd_siginfo info{};
    while (::read(child_signals_.get(), &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
    }
    for (pid_t pid : detail::children_of_self()) {
      if (pid == watchdog_.pid()) continue;
      bool worker = false;
      for (const auto& w : workers_) worker = worker || (w->pid == pid && w->pidfd);
      if (worker) continue;
      siginfo_t exited{};
      ::waitid(P_PID, static_cast<id_t>(pid), &exited, WEXITED | WNOHANG);
    }
  }

  // Handles one batch of events; true when the watched fd is readable.
  bool poll_events(int wait_ms, bool include_watched = true) {
    epoll_event events[64];
    int n = ::epoll_wait(epoll_.get(), events, 64, wait_ms);
    if (n < 0) {
      if (errno == EINTR) return false;
      throw std::system_error(errno, std::generic_category(), "epoll_wait");
    }
    bool watched = false;
    // Output first, so a worker's last lines are shown before its exit is handled.
    for (int i = 0; i < n; ++i) {
      auto kind = static_cast<std::uint32_t>(events[i].data.u64 >> 32);
      auto index = static_cast<std::size_t>(events[i].data.u64 & 0xffffffffu);
      if (kind == kind_out) pump(workers_[index]->out, false);
      if (kind == kind_err) pump(workers_[index]->err, false);
    }
    for (int i = 0; i < n; ++i) {
      auto kind = static_cast<std::uint32_t>(events[i].data.u64 >> 32);
      auto index = static_cast<std::size_t>(events[i].data.u64 & 0xffffffffu);
      if (kind == kind_pid) on_exit(*workers_[index]);
      if (kind == kind_watched) watched = include_watched;
      if (kind == kind_console_room) on_console_room(static_cast<int>(index));
      if (kind == kind_child_signal) reap_orphans();
    }
    return watched;
  }

  // Copies what is readable now; `to_end` drains until EOF or nothing is left.
  // Not read while the console is full (the stream is paused), except when
  // draining an exited worker: what it left is at most a pipe's capacity.
  // Up to `batch_reads` reads go to the log file in one write and to the
  // console in one hand-off.
  void pump(Stream& stream, bool to_end) {
    if (!stream.pipe) return;
    constexpr std::size_t read_size = 65536, batch_reads = 4;
    if (!read_buffer_) read_buffer_ = std::make_unique<char[]>(read_size * batch_reads);
    char* const buffer = read_buffer_.get();
    // Bounded even when draining: a writer we could not stop must not hold us.
    int rounds = 4;
    if (to_end) {
      const int capacity = ::fcntl(stream.pipe.get(), F_GETPIPE_SZ);
      rounds = capacity > 0 ? capacity / static_cast<int>(read_size) + 2 : 18;
    }
    std::size_t have = 0;
    for (int round = 0; round < rounds; ++round) {
      if (!to_end && stream.console.enabled() && !stream.console.console()->has_room()) {
        copy_out(stream, buffer, have);
        set_paused(stream, true);
        return;
      }
      if (have + read_size > read_size * batch_reads) {
        copy_out(stream, buffer, have);
        have = 0;
      }
      ssize_t got = ::read(stream.pipe.get(), buffer + have, read_size);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        const bool ended = got == 0 || errno != EAGAIN;  // read before copy_out can change errno
        copy_out(stream, buffer, have);
        if (ended) close_stream(stream);
        return;
      }
      // Fed read by read: a line is cut at max_line the same way whatever the batch.
      stream.console.feed(std::string_view(buffer + have, static_cast<std::size_t>(got)), false);
      have += static_cast<std::size_t>(got);
    }
    copy_out(stream, buffer, have);
  }

  // The bytes of one batch to the log file; the lines fed meanwhile to the console.
  void copy_out(Stream& stream, const char* data, std::size_t size) {
    if (size > 0 && stream.file && !detail::write_all(stream.file.get(), data, size)) {
      // Told once; the console copy goes on, complete.
      log::error("cannot write log file {}: {}; the rest of this stream is not in the file", stream.file_path,
                 std::strerror(errno));
      stream.file.reset();
    }
    stream.console.commit();
  }

  void close_stream(Stream& stream) {
    if (!stream.pipe) return;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, stream.pipe.get(), nullptr);
    stream.pipe.reset();
    stream.paused = false;
    stream.console.flush();
    stream.file.reset();
  }

  void on_exit(Worker& worker) {
    if (!worker.running) return;
    siginfo_t info{};
    // WNOWAIT: the exited worker stays a zombie until its group is killed, so
    // the group id cannot have been reused when we signal it.
    if (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(worker.pidfd.get()), &info,
                 WEXITED | WNOHANG | WNOWAIT) != 0 ||
        info.si_pid == 0)
      return;
    worker.exitcode = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    worker.running = false;
    --running_;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, worker.pidfd.get(), nullptr);
    // A worker's group ends with it: whatever it left running is killed now
    // (first, so nothing keeps filling its pipes), and the worker is reaped at
    // once, so no zombie stays for the rest of the run. Everything the worker
    // wrote before exiting is in its pipes: drain them without waiting for EOF.
    signal_group(worker, SIGKILL);
    drain(worker.out);
    drain(worker.err);
    reap(worker);
    if (worker.exitcode != 0 && (!worker.terminated || failed_on_its_own(worker))) {
      failed_.push_back(worker.local_rank);
      // Told after the survivors were signalled: stopping them comes first.
      if (stopping_) log_failures();
    }
  }

  // A worker we were stopping is not a failure because it ended; it is one when
  // it failed by itself meanwhile: killed by a signal we did not send (a crash),
  // or a non-zero exit with an error file it wrote (an exception it recorded).
  bool failed_on_its_own(const Worker& worker) const {
    if (worker.exitcode < 0) return -worker.exitcode != stop_signal_ && -worker.exitcode != SIGKILL;
    struct stat st {};
    return ::stat(worker.error_file.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
  }

  void drain(Stream& stream) {
    if (!stream.pipe) return;
    pump(stream, true);
    close_stream(stream);
  }

  void log_failures() {
    for (; logged_failures_ < failed_.size(); ++logged_failures_) {
      const Worker& w = worker_by_rank(failed_[logged_failures_]);
      log::error("failed (exitcode: {}) local_rank: {} (pid: {}) of binary: {}", w.exitcode, w.local_rank, w.pid,
                 entrypoint_);
    }
  }

  void signal_group(Worker& worker, int sig) {
    // Only while the worker is unreaped: as a process (or zombie) it pins its
    // pid, and so its group id, against reuse.
    if (worker.pidfd) ::kill(-worker.pid, sig);
  }

  void reap(Worker& worker) {
    siginfo_t info{};
    while (::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(worker.pidfd.get()), &info, WEXITED) != 0 &&
           errno == EINTR) {
    }
    if (options_.watchdog) watchdog_.remove_group(worker.pid);
    worker.pidfd.reset();
  }

  // Stops the running workers: `sig`, then SIGKILL after `grace`, or at once
  // when the watched fd becomes readable meanwhile (a signal to the launcher:
  // whoever sent it will not wait out the grace period).
  void stop_survivors(int sig, std::chrono::milliseconds grace) {
    if (workers_.empty()) return;
    stopping_ = true;
    stop_signal_ = sig;
    bool watching = watched_fd_ >= 0;
    for (auto& w : workers_) {
      if (!w->running) continue;
      w->terminated = true;
      log::warning("Sending process {} closing signal {}", w->pid, signal_name(sig));
      signal_group(*w, sig);
    }
    log_failures();
    const auto deadline = Clock::now() + grace;
    while (running_ > 0 && !stop_interrupted_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) break;
      if (poll_events(static_cast<int>(left), watching)) stop_interrupted_ = true;
    }
    if (watching) ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, watched_fd_, nullptr);
    if (running_ > 0) {
      for (auto& w : workers_) {
        if (!w->running) continue;
        if (stop_interrupted_)
          log::warning("Signal received while stopping: sending process {} SIGKILL", w->pid);
        else if (sig != SIGKILL)
          log::warning("Unable to shutdown process {} via {}, forcefully exiting via SIGKILL", w->pid,
                       signal_name(sig));
        signal_group(*w, SIGKILL);
      }
      // SIGKILL is final, but a process stuck in the kernel can take a while: bounded wait.
      const auto kill_deadline = Clock::now() + std::chrono::seconds(10);
      while (running_ > 0) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(kill_deadline - Clock::now()).count();
        if (left <= 0) {
          log::error("{} worker(s) did not exit after SIGKILL; giving up on them", running_);
          break;
        }
        poll_events(static_cast<int>(left), false);
      }
    }
    if (watching) add_to_epoll(watched_fd_, kind_watched, 0);
  }

  // Kills what is left of every group, reaps the workers, builds the result.
  RunProcsResult finish() {
    RunProcsResult result;
    for (auto& w : workers_) {
      // Only a worker that ignored even SIGKILL (stuck in the kernel) is left.
      if (w->pidfd) signal_group(*w, SIGKILL);
      drain(w->out);
      drain(w->err);
      result.stdouts[w->local_rank] = dest_.stdouts[w->local_rank];
      result.stderrs[w->local_rank] = dest_.stderrs[w->local_rank];
    }
    log_failures();
    if (!failed_.empty()) {
      for (int local_rank : failed_) {
        const Worker& w = worker_by_rank(local_rank);
        result.failures.emplace(local_rank,
                                ProcessFailure::read_or_describe(local_rank, w.pid, w.exitcode, w.error_file));
      }
    } else {
      for (auto& w : workers_) result.return_values[w->local_rank] = w->exitcode;
    }
    // What the workers started and left running, wherever it moved, ends with them.
    cgroup_.kill_and_remove();
    watchdog_.stop();
    // Everything the workers wrote is queued: give the console a bounded time to take it.
    for (int console : {options_.console_stdout, options_.console_stderr})
      if (console >= 0) Console::of(console).flush(options_.console_stall_limit);
    result_ = result;
    return result;
  }

  const Worker& worker_by_rank(int local_rank) const {
    for (const auto& w : workers_)
      if (w->local_rank == local_rank) return *w;
    throw std::out_of_range("no worker with local rank " + std::to_string(local_rank));
  }

  std::string name_;
  std::string entrypoint_;
  std::map<int, std::vector<std::string>> args_;
  std::map<int, Env> envs_;
  LogsSpecs& logs_specs_;
  std::map<int, std::string> prefixes_;
  PContextOptions options_;
  LogsDest dest_;
  detail::Fd filtered_stdout_, filtered_stderr_;  // shared by the ranks' tees; outlive them
  std::unique_ptr<char[]> read_buffer_;           // one batch of reads from a worker pipe, made on first use
  detail::Fd epoll_;
  JobCgroup cgroup_;
  Watchdog watchdog_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<int> failed_;
  std::size_t logged_failures_ = 0;
  int running_ = 0;
  int watched_fd_ = -1;
  bool watched_ready_ = false;
  bool stopping_ = false;
  bool stop_interrupted_ = false;
  int stop_signal_ = SIGTERM;
  std::set<int> console_rooms_;
  detail::Fd child_signals_;
  sigset_t mask_before_{};
  bool closed_ = false;
  std::optional<RunProcsResult> result_;
};

// PyTorch's start_processes: starts the workers and returns their context.
inline std::unique_ptr<PContext> start_processes(std::string name, std::string entrypoint,
                                                 std::map<int, std::vector<std::string>> args, std::map<int, Env> envs,
                                                 LogsSpecs& logs_specs,
                                                 std::map<int, std::string> log_line_prefixes = {},
                                                 PContextOptions options = {}) {
  auto context = std::make_unique<PContext>(std::move(name), std::move(entrypoint), std::move(args), std::move(envs),
                                            logs_specs, std::move(log_line_prefixes), options);
  context->start();
  return context;
}

}  // namespace elastic::multiprocessing
