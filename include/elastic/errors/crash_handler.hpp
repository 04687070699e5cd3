// Native crash capture: a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT,
// SIGTRAP) or std::terminate writes the error file, with the native stack of the
// failing thread in extraInfo.py_callstack, before the process dies as it would
// have without us (same signal, so the parent sees -11 and core dumps still happen).
//
// install_crash_handlers() is called by ErrorHandler::initialize(), hence by every
// record(). The signal path only uses async-signal-safe calls on memory set aside
// here before any crash; see stacktrace.hpp for how frames are found and named.
//
// Environment:
//   ELASTIC_CRASH_SIGNALS  unset: the default list; "off" (or 0, none, false): no
//                          signal handler is installed (for runtimes that install
//                          their own, such as the JVM or a sanitizer); otherwise
//                          a comma separated list of names (SIGSEGV or SEGV) or numbers.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <elastic/errors/detail/exception_info.hpp>
#include <elastic/errors/detail/file_io.hpp>
#include <elastic/errors/detail/python_json.hpp>
#include <elastic/errors/detail/signal_safe.hpp>
#include <elastic/errors/signals.hpp>
#include <elastic/errors/stacktrace.hpp>
#include <elastic/errors/throw_trace.hpp>
#include <elastic/log.hpp>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace elastic {

inline constexpr const char* crash_signals_env = "ELASTIC_CRASH_SIGNALS";

// The signals treated as crashes. SIGTERM and SIGINT are not: launchers send them
// to stop healthy workers.
inline std::vector<int> default_crash_signals() { return {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP}; }

struct CrashCaptureOptions {
  std::vector<int> signals = default_crash_signals();  // ELASTIC_CRASH_SIGNALS overrides
  std::size_t alternate_stack_bytes = 256 * 1024;      // per thread, for stack overflows
  unsigned watchdog_seconds = 20;                      // a handler stuck longer ends the process by the same signal
  bool terminate_handler = true;                       // std::set_terminate: uncaught exceptions, noexcept violations
  bool throw_traces = true;  // record throw sites from now on (ELASTIC_THROW_TRACES=0 overrides)
};

namespace errors::detail {

inline constexpr std::size_t max_crash_frames = 100;

// Everything the signal handler touches, allocated before any crash.
struct CrashState {
  // The thread writing the crash report; 0 while none. Minus a thread's id: that
  // thread is ending the process by exit() after an exception record (see below).
  std::atomic<long> writer_thread{0};
  std::atomic<bool> report_done{false};
  std::atomic<bool> exception_recorded{false};  // an exception record is on disk
  std::atomic<int> crashing_signal{0};
  unsigned watchdog_seconds = 20;

  // The error file path, double-buffered so initialize() can change it while a
  // handler might be reading the other copy. -1: no path, trace on stderr only.
  char paths[2][4096] = {};
  std::atomic<int> active_path{-1};

  // Threads writing an exception record now (their ids; 0: a free slot). A crash
  // record is renamed into place only after they are done, so it is the last word.
  static constexpr std::size_t max_record_writers = 16;
  std::atomic<long> record_writers[max_record_writers] = {};

  struct sigaction previous[NSIG] = {};
  bool installed[NSIG] = {};

  StackFrame frames[max_crash_frames + 1];
  StaticText<32 * 1024> headline_and_frames;  // py_callstack
  StaticText<96 * 1024> report;               // the JSON document
  StaticText<8 * 1024> scratch;               // file names, one frame line
};

inline CrashState& crash_state() {
  static CrashState state;
  return state;
}

inline long current_thread_id() { return static_cast<long>(::syscall(SYS_gettid)); }

inline std::mutex& install_mutex() {
  static std::mutex mutex;
  return mutex;
}

// What the kernel's si_code says about a fault, for the signals that have one.
inline const char* fault_code_name(int signo, int code) {
  if (code == SI_KERNEL) return "SI_KERNEL";
  switch (signo) {
    case SIGSEGV:
      switch (code) {
        case SEGV_MAPERR: return "SEGV_MAPERR";
        case SEGV_ACCERR: return "SEGV_ACCERR";
#ifdef SEGV_BNDERR
        case SEGV_BNDERR: return "SEGV_BNDERR";
#endif
#ifdef SEGV_PKUERR
        case SEGV_PKUERR: return "SEGV_PKUERR";
#endif
      }
      break;
    case SIGBUS:
      switch (code) {
        case BUS_ADRALN: return "BUS_ADRALN";
        case BUS_ADRERR: return "BUS_ADRERR";
        case BUS_OBJERR: return "BUS_OBJERR";
      }
      break;
    case SIGFPE:
      switch (code) {
        case FPE_INTDIV: return "FPE_INTDIV";
        case FPE_INTOVF: return "FPE_INTOVF";
        case FPE_FLTDIV: return "FPE_FLTDIV";
        case FPE_FLTOVF: return "FPE_FLTOVF";
        case FPE_FLTUND: return "FPE_FLTUND";
        case FPE_FLTRES: return "FPE_FLTRES";
        case FPE_FLTINV: return "FPE_FLTINV";
        case FPE_FLTSUB: return "FPE_FLTSUB";
      }
      break;
    case SIGILL:
      switch (code) {
        case ILL_ILLOPC: return "ILL_ILLOPC";
        case ILL_ILLOPN: return "ILL_ILLOPN";
        case ILL_ILLADR: return "ILL_ILLADR";
        case ILL_ILLTRP: return "ILL_ILLTRP";
        case ILL_PRVOPC: return "ILL_PRVOPC";
        case ILL_PRVREG: return "ILL_PRVREG";
        case ILL_COPROC: return "ILL_COPROC";
        case ILL_BADSTK: return "ILL_BADSTK";
      }
      break;
    case SIGTRAP:
      switch (code) {
        case TRAP_BRKPT: return "TRAP_BRKPT";
        case TRAP_TRACE: return "TRAP_TRACE";
      }
      break;
  }
  return nullptr;
}

inline bool signal_has_fault_address(int signo) {
  return signo == SIGSEGV || signo == SIGBUS || signo == SIGFPE || signo == SIGILL || signo == SIGTRAP;
}

// "Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)". A signal sent by
// another process names the sender instead.
// The stack pointer of the interrupted code, 0 where unknown.
inline std::uintptr_t interrupted_stack_pointer(const void* context) {
  if (context == nullptr) return 0;
  const auto* uc = static_cast<const ucontext_t*>(context);
#if defined(__x86_64__)
  return static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]);
#elif defined(__aarch64__)
  return static_cast<std::uintptr_t>(uc->uc_mcontext.sp);
#else
  (void)uc;
  return 0;
#endif
}

// A SIGSEGV this close to the stack pointer is a write into the guard page below
// the stack: the stack is exhausted.
inline bool looks_like_stack_overflow(int signo, const siginfo_t* info, const void* context) {
  const std::uintptr_t sp = interrupted_stack_pointer(context);
  if (signo != SIGSEGV || info->si_code <= 0 || sp == 0) return false;
  const auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
  const std::uintptr_t distance = address > sp ? address - sp : sp - address;
  return distance < 64 * 1024;
}

inline void append_signal_headline(FixedText& out, int signo, const siginfo_t* info, const void* context) {
  out.append("Fatal signal ").append_decimal(signo).append(" (").append(signal_name_cstr(signo)).append(')');
  if (info == nullptr) return;
  if (info->si_code > 0 && signal_has_fault_address(signo)) {
    // SI_KERNEL faults (a general protection fault) report no usable address.
    if (info->si_code != SI_KERNEL)
      out.append(" at address ").append_hex(reinterpret_cast<std::uintptr_t>(info->si_addr));
    if (const char* code = fault_code_name(signo, info->si_code)) out.append(" (").append(code).append(')');
    if (looks_like_stack_overflow(signo, info, context)) out.append(": stack overflow");
  } else if (info->si_code <= 0 && info->si_pid != ::getpid()) {
    out.append(" sent by PID ").append_decimal(info->si_pid);
  }
}

// The first frame to show: the one the signal interrupted. libgcc marks it as
// "exact" (its pc is not a return address); the handler's own frames and the
// signal trampoline come before it. Without such a mark, the context's pc.
inline std::size_t first_interrupted_frame(const StackFrame* frames, std::size_t count, const void* context) {
  for (std::size_t i = 0; i < count; ++i)
    if (frames[i].exact) return i;
  std::uintptr_t interrupted_pc = 0;
  if (context != nullptr) {
    const auto* uc = static_cast<const ucontext_t*>(context);
#if defined(__x86_64__)
    interrupted_pc = static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]);
#elif defined(__aarch64__)
    interrupted_pc = static_cast<std::uintptr_t>(uc->uc_mcontext.pc);
#else
    (void)uc;
#endif
  }
  for (std::size_t i = 0; i < count; ++i)
    if (frames[i].pc == interrupted_pc) return i;
  return 0;
}

inline std::int64_t wall_clock_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<std::int64_t>(now.tv_sec);
}

// ---- which record wins ------------------------------------------------------
// The error file must describe what ended the process. A crash (fatal signal or
// std::terminate) on one thread may race an exception record written by another:
// - the exception path announces itself in `record_writers` before it checks for
//   a crash, and the crash path claims `writer_thread` before it checks for
//   writers (both sequentially consistent), so at least one sees the other;
// - an exception path that sees a crash begun writes nothing and waits for the
//   crash to end the process;
// - a crash that sees exception writers waits for them to finish (bounded), then
//   renames its own file over theirs;
// - exit() after an exception record claims `writer_thread` as minus its own id:
//   the process ends by that exit, so a crash on another thread from then on (while
//   exit runs destructors, or a leak checker) writes nothing and waits for the
//   exit, bounded. A crash on the exiting thread itself is still reported.

inline void pause_a_little() {
  timespec pause{0, 2 * 1000 * 1000};
  ::nanosleep(&pause, nullptr);
}

// A crash report begun or done, or an exit after an exception record begun, on a
// thread other than the caller's.
inline bool crash_on_other_thread(long self) {
  const long writer = crash_state().writer_thread.load();
  return writer != 0 && writer != self && writer != -self;
}

// The calling thread takes `writer_thread`: when it is free, or held by this very
// thread's exit (a crash during its own exit is still reported).
inline bool claim_crash_report(long self) {
  CrashState& state = crash_state();
  long writer = 0;
  if (state.writer_thread.compare_exchange_strong(writer, self)) return true;
  return writer == -self && state.writer_thread.compare_exchange_strong(writer, self);
}

// Waits, bounded, until no thread but `self` writes an exception record.
// Async-signal-safe.
inline void wait_for_record_writers(long self) {
  CrashState& state = crash_state();
  for (unsigned waited = 0; waited < 2500; ++waited) {  // about 5 s
    bool busy = false;
    for (auto& writer : state.record_writers) {
      const long id = writer.load();
      if (id != 0 && id != self) busy = true;
    }
    if (!busy) return;
    pause_a_little();
  }
}

// Called by a thread that is about to let the process end otherwise (an exception
// record written, exit()): when a crash began on another thread, waits for it to
// end the process, so the process dies of the crash its record describes. Bounded
// by the watchdog; a crash handler that lets the process live returns here.
inline void wait_for_crash_on_other_thread(long self) {
  CrashState& state = crash_state();
  if (!crash_on_other_thread(self)) return;
  unsigned after_report = 0;
  const unsigned limit = (state.watchdog_seconds + 5) * 500;
  for (unsigned waited = 0; waited < limit && after_report < 2500; ++waited) {
    if (state.report_done.load()) ++after_report;  // then up to 5 s for the signal to end it
    pause_a_little();
  }
}

// The atexit hook: after an exception record, the exit ends the process (a later
// crash elsewhere waits for it); otherwise a crash begun on another thread ends it.
inline void on_exit_hook() {
  CrashState& state = crash_state();
  const long self = current_thread_id();
  long writer = 0;
  if (state.exception_recorded.load() && state.writer_thread.compare_exchange_strong(writer, -self)) return;
  wait_for_crash_on_other_thread(self);
}

// Held by the exception path while it writes a record (see above).
class ExceptionRecordScope {
 public:
  ExceptionRecordScope() : self_(current_thread_id()) {
    for (auto& slot : crash_state().record_writers) {
      long free = 0;
      if (slot.compare_exchange_strong(free, self_)) {
        slot_ = &slot;
        break;
      }
    }
    // With every slot taken (16 threads recording at once) the record is written
    // unguarded: it may then lose a race with a crash, as without this scope.
  }
  ExceptionRecordScope(const ExceptionRecordScope&) = delete;
  ExceptionRecordScope& operator=(const ExceptionRecordScope&) = delete;
  ~ExceptionRecordScope() {
    if (slot_ != nullptr) slot_->store(0);
    wait_for_crash_on_other_thread(self_);
  }

  // False when a crash began on another thread: its record is the one to keep.
  bool may_write() const { return !crash_on_other_thread(self_); }
  // To be called once the record is on disk.
  void written() { crash_state().exception_recorded.store(true); }

 private:
  long self_;
  std::atomic<long>* slot_ = nullptr;
};

inline void write_stderr(const char* text, std::size_t size) { write_all(STDERR_FILENO, text, size); }
inline void write_stderr(const char* text) { write_stderr(text, safe_strlen(text)); }

// The nested-format document, key order as PyTorch writes it:
// {"message": {"message": ..., "extraInfo": {"py_callstack": ..., "timestamp": ..., extra...}}}
inline void append_crash_json(FixedText& out, const char* message, std::size_t message_size, const char* callstack,
                              std::size_t callstack_size, std::int64_t timestamp, const char* signal, long thread) {
  char number[32];
  FixedText digits(number, sizeof(number));
  out.append("{\"message\": {\"message\": ").append_json_string(message, message_size);
  out.append(", \"extraInfo\": {\"py_callstack\": ").append_json_string(callstack, callstack_size);
  digits.append_decimal(timestamp);
  out.append(", \"timestamp\": ").append_json_string(digits.c_str());
  if (signal != nullptr) out.append(", \"signal\": ").append_json_string(signal);
  digits.clear();
  digits.append_decimal(thread);
  out.append(", \"thread_id\": ").append_json_string(digits.c_str());
  out.append("}}}");
}

inline const char* crash_report_path() {
  CrashState& state = crash_state();
  const int active = state.active_path.load(std::memory_order_acquire);
  return active < 0 ? nullptr : state.paths[active];
}

// Builds and writes the report of a fatal signal. Async-signal-safe.
inline void write_signal_report(int signo, const siginfo_t* info, const void* context, long thread) {
  CrashState& state = crash_state();
  FixedText& stack_text = state.headline_and_frames;
  stack_text.clear();
  append_signal_headline(stack_text, signo, info, context);
  const std::size_t headline_size = stack_text.size();

  const std::size_t captured = capture_stack(state.frames, max_crash_frames + 1);
  const std::size_t first = first_interrupted_frame(state.frames, captured, context);
  const bool name = can_name_frames();  // else module and offset alone: still enough for addr2line
  for (std::size_t i = first; i < captured && i - first < max_crash_frames; ++i) {
    stack_text.append('\n');
    append_frame(stack_text, i - first, state.frames[i], name);
  }
  if (captured > max_crash_frames && captured - first >= max_crash_frames) stack_text.append("\n... (more frames)");

  const char* path = crash_report_path();
  write_stderr("[elastic] ERROR: ");
  write_stderr(stack_text.c_str(), stack_text.size());
  write_stderr("\n");
  if (path == nullptr) {
    write_stderr("[elastic] ERROR: no error file written (TORCHELASTIC_ERROR_FILE not set)\n");
    return;
  }
  state.report.clear();
  const std::int64_t now = wall_clock_seconds();
  append_crash_json(state.report, stack_text.c_str(), headline_size, stack_text.c_str(), stack_text.size(), now,
                    signal_name_cstr(signo), thread);
  if (state.report.truncated()) {
    // Cut JSON would be unreadable; the headline alone still tells what happened.
    state.report.clear();
    append_crash_json(state.report, stack_text.c_str(), headline_size, stack_text.c_str(), headline_size, now,
                      signal_name_cstr(signo), thread);
  }
  wait_for_record_writers(thread);
  const int error = safe_write_file_atomically(path, state.report.c_str(), state.report.size(), state.scratch);
  if (error != 0) {
    write_stderr("[elastic] ERROR: cannot write error file ");
    write_stderr(path);
    // strerror is not async-signal-safe: the number is.
    StaticText<32> number;
    number.append(": errno ").append_decimal(error).append('\n');
    write_stderr(number.c_str(), number.size());
  } else {
    write_stderr("[elastic] ERROR: error file written to ");
    write_stderr(path);
    write_stderr("\n");
  }
}

// Sends `signo` to this thread with `action` in place. The signal is blocked while
// its handler runs, so it arrives as soon as the handler returns, in the
// interrupted context: the default action then dumps core at the real fault.
// With the original siginfo (allowed when a process signals itself) a previous
// handler and the core dump see the real fault address and si_code.
inline void reraise_with(int signo, const struct sigaction& action, const siginfo_t* info = nullptr) {
  ::sigaction(signo, &action, nullptr);
  const long pid = static_cast<long>(::getpid());
  const long thread = current_thread_id();
  if (info != nullptr) {
    siginfo_t copy = *info;
    if (::syscall(SYS_rt_tgsigqueueinfo, pid, thread, static_cast<long>(signo), &copy) == 0) return;
  }
  ::syscall(SYS_tgkill, pid, thread, static_cast<long>(signo));
}

inline void reraise_with_default(int signo) {
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  sigemptyset(&default_action.sa_mask);
  reraise_with(signo, default_action);
}

// SIGALRM when the report takes longer than the watchdog allows: end the process
// by the signal that crashed it, as if no handler had been installed.
inline void watchdog_expired(int) {
  const int signo = crash_state().crashing_signal.load();
  if (signo <= 0) return;
  write_stderr("[elastic] ERROR: crash report timed out\n");
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, signo);
  ::pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
  reraise_with_default(signo);
}

inline void arm_watchdog(unsigned seconds) {
  if (seconds == 0) return;
  struct sigaction alarm_action {};
  alarm_action.sa_handler = &watchdog_expired;
  sigemptyset(&alarm_action.sa_mask);
  alarm_action.sa_flags = SA_ONSTACK;
  ::sigaction(SIGALRM, &alarm_action, nullptr);
  ::alarm(seconds);
}

inline void crash_signal_handler(int signo, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  CrashState& state = crash_state();
  const long self = current_thread_id();
  if (!claim_crash_report(self)) {
    const long writer = state.writer_thread.load();
    if (writer == self) {
      // Either our terminate handler wrote the report and now aborts (let the
      // previous handler see it), or the handler itself faulted (die now).
      if (state.report_done.load())
        reraise_with(signo, state.previous[signo]);
      else
        reraise_with_default(signo);
      errno = saved_errno;
      return;
    }
    // Another thread is writing the report and will end the process, or is ending
    // it by exit() after an exception record: wait for it, bounded, then die by the
    // default action.
    for (unsigned waited = 0; waited < state.watchdog_seconds * 10 + 10; ++waited) {
      if (writer > 0 && state.report_done.load()) break;
      timespec tenth{0, 100 * 1000 * 1000};
      ::nanosleep(&tenth, nullptr);
    }
    reraise_with_default(signo);
    errno = saved_errno;
    return;
  }
  state.crashing_signal.store(signo);
  arm_watchdog(state.watchdog_seconds);
  write_signal_report(signo, info, context, self);
  state.report_done.store(true);
  ::alarm(0);
  reraise_with(signo, state.previous[signo], info);
  errno = saved_errno;
}

// ---- std::terminate --------------------------------------------------------

inline std::terminate_handler& previous_terminate_handler() {
  static std::terminate_handler previous = nullptr;
  return previous;
}

inline void write_terminate_report(long thread) {
  std::string headline;
  std::string callstack;
  std::vector<StackFrame> here = current_stack(max_crash_frames);
  if (std::exception_ptr error = std::current_exception()) {
    auto levels = describe_exception(error);
    headline = levels.front().headline();
    // Without a recorded throw site, the stack here: std::terminate runs on top of
    // the throw when nothing caught the exception (no unwinding happened).
    callstack = format_exception_callstack(levels, here);
  } else {
    headline = "std::terminate called without an active exception";
    callstack = headline + "\n" + format_stack(here);
    callstack.pop_back();
  }
  log::detail::write_line(log::Level::error, "terminate called: " + callstack);
  const char* path = crash_report_path();
  if (path == nullptr) return;
  nlohmann::ordered_json extra;
  extra["py_callstack"] = callstack;
  extra["timestamp"] = std::to_string(wall_clock_seconds());
  extra["thread_id"] = std::to_string(thread);
  nlohmann::ordered_json data;
  data["message"]["message"] = headline;
  data["message"]["extraInfo"] = std::move(extra);
  const std::string contents = python_json_dumps(data);
  wait_for_record_writers(thread);
  std::string problem = write_file_atomically(path, contents);
  if (!problem.empty()) log::error("cannot write error file {}: {}", path, problem);
}

[[noreturn]] inline void crash_terminate_handler() {
  CrashState& state = crash_state();
  const long self = current_thread_id();
  if (claim_crash_report(self)) {
    try {
      write_terminate_report(self);
    } catch (...) {
      write_stderr("[elastic] ERROR: cannot write the terminate report\n");
    }
    state.report_done.store(true);
  }
  // Chain: the previous handler (libstdc++'s prints the exception and aborts).
  if (std::terminate_handler previous = previous_terminate_handler()) previous();
  std::abort();
}

// ---- per-thread alternate signal stacks -------------------------------------

class AlternateSignalStack {
 public:
  AlternateSignalStack() = default;
  AlternateSignalStack(const AlternateSignalStack&) = delete;
  AlternateSignalStack& operator=(const AlternateSignalStack&) = delete;
  ~AlternateSignalStack() {
    if (mapping_ == nullptr) return;
    stack_t current{};
    if (::sigaltstack(nullptr, &current) == 0 && current.ss_sp == usable_start()) {
      stack_t disable{};
      disable.ss_flags = SS_DISABLE;
      ::sigaltstack(&disable, nullptr);
    }
    ::munmap(mapping_, mapping_size_);
  }

  // Gives the calling thread an alternate stack unless it has one (ours or
  // someone else's). Returns false only when one was needed and could not be set.
  bool ensure(std::size_t bytes) {
    if (mapping_ != nullptr) return true;
    stack_t current{};
    if (::sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return true;
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t usable = (bytes + page - 1) / page * page;
    void* mapping =
        ::mmap(nullptr, usable + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (mapping == MAP_FAILED) return false;
    ::mprotect(mapping, page, PROT_NONE);  // a guard page below: an overflow faults, not corrupts
    mapping_ = mapping;
    mapping_size_ = usable + page;
    page_ = page;
    stack_t stack{};
    stack.ss_sp = usable_start();
    stack.ss_size = usable;
    if (::sigaltstack(&stack, nullptr) != 0) {
      ::munmap(mapping_, mapping_size_);
      mapping_ = nullptr;
      return false;
    }
    return true;
  }

 private:
  void* usable_start() const { return static_cast<char*>(mapping_) + page_; }

  void* mapping_ = nullptr;
  std::size_t mapping_size_ = 0;
  std::size_t page_ = 0;
};

inline bool ensure_alternate_signal_stack(std::size_t bytes) {
  thread_local AlternateSignalStack stack;
  return stack.ensure(bytes);
}

inline bool crash_signals_disabled(const char* value) {
  std::string text = value;
  for (char& c : text) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return text == "0" || text == "off" || text == "none" || text == "false" || text == "no";
}

// The signals to handle: ELASTIC_CRASH_SIGNALS when set, else `fallback`.
inline std::vector<int> crash_signals_from_environment(const std::vector<int>& fallback) {
  const char* value = std::getenv(crash_signals_env);
  if (value == nullptr || *value == '\0') return fallback;
  if (crash_signals_disabled(value)) return {};
  std::vector<int> signals;
  std::string text = value;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find_first_of(", ", start);
    if (end == std::string::npos) end = text.size();
    std::string name = text.substr(start, end - start);
    start = end + 1;
    if (name.empty()) continue;
    int found = 0;
    if (name.find_first_not_of("0123456789") == std::string::npos) {
      found = std::atoi(name.c_str());
    } else {
      for (char& c : name) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
      if (name.rfind("SIG", 0) != 0) name = "SIG" + name;
      for (int signo = 1; signo < NSIG && found == 0; ++signo)
        if (name == signal_name_cstr(signo)) found = signo;
    }
    if (found <= 0 || found >= NSIG || found == SIGKILL || found == SIGSTOP)
      log::warning("{}: ignoring '{}', not a signal that can be handled", crash_signals_env, name);
    else
      signals.push_back(found);
  }
  return signals;
}

}  // namespace errors::detail

// Where crash reports go: the error file path, or none for stderr only.
// ErrorHandler::initialize() sets it from TORCHELASTIC_ERROR_FILE.
inline void set_crash_report_path(const std::optional<std::string>& path) {
  auto& state = errors::detail::crash_state();
  std::lock_guard<std::mutex> lock(errors::detail::install_mutex());
  if (!path || path->empty()) {
    state.active_path.store(-1, std::memory_order_release);
    return;
  }
  if (path->size() >= sizeof(state.paths[0])) {
    log::warning("error file path too long for crash reports: {}", *path);
    state.active_path.store(-1, std::memory_order_release);
    return;
  }
  const int next = state.active_path.load() == 0 ? 1 : 0;
  std::memcpy(state.paths[next], path->c_str(), path->size() + 1);
  state.active_path.store(next, std::memory_order_release);
}

// Gives the calling thread its own alternate signal stack, so a stack overflow in
// it is reported too. record() does this for the threads it runs on; call it at
// the start of other threads.
inline bool register_crash_thread(std::size_t alternate_stack_bytes = CrashCaptureOptions{}.alternate_stack_bytes) {
  return errors::detail::ensure_alternate_signal_stack(alternate_stack_bytes);
}

// Installs the crash handlers once per process (signals listed in options or
// ELASTIC_CRASH_SIGNALS, and std::terminate), and an alternate signal stack for
// the calling thread. Cheap after the first call. Problems are logged, not thrown.
inline void install_crash_handlers(const CrashCaptureOptions& options = {}) {
  namespace detail = errors::detail;
  if (!register_crash_thread(options.alternate_stack_bytes))
    log::warning("cannot set an alternate signal stack: stack overflows will not be reported");
  std::lock_guard<std::mutex> lock(detail::install_mutex());
  auto& state = detail::crash_state();
  static bool terminate_installed = false;
  static bool warmed_up = false;
  const std::vector<int> signals = detail::crash_signals_from_environment(options.signals);
  if (!warmed_up && (!signals.empty() || options.terminate_handler)) {
    // Binds and initializes what the handlers call, so a crash finds it ready. The
    // symbol tables are read only when a report needs them (see prepare_stacktrace).
    prepare_stacktrace();
    detail::current_thread_id();
    detail::wall_clock_seconds();
    detail::safe_random_u64();
    warmed_up = true;
  }
  errors::detail::arm_throw_traces(options.throw_traces);
  state.watchdog_seconds = options.watchdog_seconds;
  for (int signo : signals) {
    if (signo <= 0 || signo >= NSIG || state.installed[signo]) continue;
    struct sigaction action {};
    action.sa_sigaction = &detail::crash_signal_handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    if (::sigaction(signo, &action, &state.previous[signo]) != 0) {
      log::warning("cannot install the crash handler for {}: {}", signal_name_cstr(signo), std::strerror(errno));
      continue;
    }
    state.installed[signo] = true;
  }
  static bool exit_hook_installed = false;
  if (!exit_hook_installed && (!signals.empty() || options.terminate_handler)) {
    // exit() on one thread while another reports a crash: let the crash end the process.
    std::atexit(&detail::on_exit_hook);
    exit_hook_installed = true;
  }
  if (options.terminate_handler && !terminate_installed) {
    std::terminate_handler previous = std::set_terminate(&detail::crash_terminate_handler);
    if (previous != &detail::crash_terminate_handler) detail::previous_terminate_handler() = previous;
    terminate_installed = true;
  }
}

}  // namespace elastic
