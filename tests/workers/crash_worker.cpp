// A worker for the crash-capture tests: `crash_worker MODE` dies, for real, in
// the way MODE names, inside a noinline function with a distinctive name that
// the tests look for in the error file.
#include <dirent.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elastic/errors.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define WORKER_NOINLINE __attribute__((noinline))

namespace crash_worker {

volatile int zero = 0;
volatile int recursion_limit = -1;
volatile int* volatile null_pointer = nullptr;

WORKER_NOINLINE void crash_here_on_purpose() { *null_pointer = 42; }

WORKER_NOINLINE void abort_here_on_purpose() { std::abort(); }

WORKER_NOINLINE void terminate_here_on_purpose() { std::terminate(); }

// UBSan would report the division before the CPU traps: this one must trap.
__attribute__((no_sanitize("integer-divide-by-zero"))) WORKER_NOINLINE int divide_by_zero_on_purpose(int numerator) {
  // Both operands volatile: the division must happen at run time and trap.
  volatile int dividend = numerator;
  return dividend / zero;
}

WORKER_NOINLINE void illegal_instruction_on_purpose() {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ volatile("ud2");
#elif defined(__aarch64__)
  __asm__ volatile("udf #0");
#else
  std::raise(SIGILL);
#endif
}

WORKER_NOINLINE void trap_here_on_purpose() {
#if defined(__x86_64__) || defined(__i386__)
  __asm__ volatile("int3");
#elif defined(__aarch64__)
  __builtin_trap();  // brk: SIGTRAP on this architecture
#else
  std::raise(SIGTRAP);
#endif
}

WORKER_NOINLINE void bus_error_on_purpose() {
  // Touching a page of a file mapping past the end of the file is SIGBUS.
  char path[] = "/tmp/elastic_crash_worker_XXXXXX";
  int fd = ::mkstemp(path);
  if (fd < 0) std::abort();
  ::unlink(path);
  void* mapping = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (mapping == MAP_FAILED) std::abort();
  static_cast<volatile char*>(mapping)[0] = 1;
}

WORKER_NOINLINE int recurse_without_end_on_purpose(int depth) {
  volatile char frame_filler[256];
  frame_filler[depth % 256] = static_cast<char>(depth);
  if (depth == recursion_limit) return 0;  // never reached: the limit is out of range
  // Reading the frame after the call keeps it from becoming a tail call.
  return recurse_without_end_on_purpose(depth + 1) + frame_filler[depth % 256];
}

}  // namespace crash_worker

namespace {
// Internal linkage: not in the dynamic symbol table even with -rdynamic, so only
// a symbolizer that reads the ELF .symtab can name it.
__attribute__((noinline)) void crash_in_internal_function_on_purpose() { *crash_worker::null_pointer = 7; }
}  // namespace

namespace crash_worker {

struct DistinctiveError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

WORKER_NOINLINE void throw_from_thread_on_purpose() { throw DistinctiveError("thrown on a worker thread"); }

WORKER_NOINLINE void throw_here_on_purpose() { throw DistinctiveError("thrown deep inside"); }

// Inlined into its caller whatever the optimization level: the record must show
// both functions, this one as inlined.
__attribute__((always_inline)) inline void inlined_null_write(volatile int* target) { *target = 7; }

WORKER_NOINLINE void calls_inlined_on_purpose() {
  inlined_null_write(null_pointer);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

// Puts another file where this program's executable was (as an upgrade would):
// the file named by CRASH_WORKER_REPLACEMENT (another build of this program),
// else a text file. The record must not take file:line from the new file.
void replace_own_binary() {
  char self[4096] = {};
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) std::abort();
  const char* chosen = std::getenv("CRASH_WORKER_REPLACEMENT");
  std::string replacement;
  if (chosen != nullptr) {
    replacement = chosen;
  } else {
    replacement = std::string(self) + ".new";
    std::FILE* file = std::fopen(replacement.c_str(), "w");
    if (file == nullptr) std::abort();
    std::fputs("not the program that is running\n", file);
    std::fclose(file);
  }
  if (std::rename(replacement.c_str(), self) != 0) std::abort();
}

WORKER_NOINLINE void replace_own_binary_then_crash() {
  replace_own_binary();
  crash_here_on_purpose();
}

WORKER_NOINLINE void call_through(void (*fn)()) {
  fn();
  std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps this frame on the stack
}

WORKER_NOINLINE void out_of_range_in_library_on_purpose() {
  std::vector<int> empty;
  std::printf("%d\n", empty.at(3));
}

WORKER_NOINLINE void noexcept_violation_on_purpose() noexcept { call_through(&throw_here_on_purpose); }

// Two threads crash at (nearly) the same time: both start, meet, then fault.
void two_threads_crash() {
  std::atomic<int> ready{0};
  auto body = [&ready] {
    elastic::register_crash_thread();
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    crash_here_on_purpose();
  };
  std::thread first(body);
  std::thread second(body);
  first.join();
  second.join();
}

// Tells that it ran, and whether it saw the kernel's fault code, then lets the
// fault happen again with the default action.
// A thread of the user's own that registers itself, then overflows its stack.
void thread_stack_overflow() {
  std::thread([] {
    elastic::register_crash_thread();
    std::printf("%d\n", recurse_without_end_on_purpose(0));
  }).join();
}

extern "C" void previous_segv_handler(int, siginfo_t* info, void*) {
  const char* text = info->si_code == SEGV_MAPERR ? "previous SIGSEGV handler ran (SEGV_MAPERR)\n"
                                                  : "previous SIGSEGV handler ran (other si_code)\n";
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
  ::signal(SIGSEGV, SIG_DFL);
}

// A previous handler that takes its time (as a core dump or a runtime's own
// report would) before the fault ends the process.
extern "C" void slow_previous_segv_handler(int, siginfo_t*, void*) {
  timespec pause{0, 300 * 1000 * 1000};
  ::nanosleep(&pause, nullptr);
  ::signal(SIGSEGV, SIG_DFL);
}

// A detached thread faults while the main thread throws into record(): which
// comes first varies from run to run.
void crash_races_throw() {
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    crash_here_on_purpose();
  }).detach();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  throw DistinctiveError("thrown while another thread crashes");
}

// The crash comes first for sure: the main thread throws only once the crash
// record is on disk (the crash handler then lingers in a slow previous handler).
void throw_after_crash() {
  const char* path = std::getenv("TORCHELASTIC_ERROR_FILE");
  std::thread(&crash_here_on_purpose).detach();
  for (int waited = 0; waited < 10000 && path != nullptr && ::access(path, F_OK) != 0; ++waited)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  throw DistinctiveError("thrown after another thread crashed");
}

// The main thread throws into record(); once its exception record is on disk and
// exit() has begun, another thread faults, while an atexit handler registered
// before record() (so run after the library's) keeps the exit going, as a leak
// checker or a slow static destructor would.
std::atomic<bool> exit_begun{false};
void keep_exit_going() {
  exit_begun.store(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
}
void crash_during_exit_after_throw() {
  std::thread([] {
    while (!exit_begun.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    crash_here_on_purpose();
  }).detach();
  throw DistinctiveError("thrown before another thread crashed during exit");
}

[[noreturn]] void previous_terminate_handler() {
  static const char text[] = "previous terminate handler ran\n";
  ssize_t ignored = ::write(STDERR_FILENO, text, sizeof(text) - 1);
  (void)ignored;
  std::abort();
}

}  // namespace crash_worker

int worker_main(int argc, char** argv) {
  using namespace crash_worker;
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "segv")
    crash_here_on_purpose();  // the call of mode segv
  else if (mode == "segv_internal")
    crash_in_internal_function_on_purpose();
  else if (mode == "abort")
    abort_here_on_purpose();
  else if (mode == "terminate")
    terminate_here_on_purpose();
  else if (mode == "fpe")
    std::printf("%d\n", divide_by_zero_on_purpose(argc));
  else if (mode == "ill")
    illegal_instruction_on_purpose();
  else if (mode == "trap")
    trap_here_on_purpose();
  else if (mode == "bus")
    bus_error_on_purpose();
  else if (mode == "stack_overflow")
    std::printf("%d\n", recurse_without_end_on_purpose(0));
  else if (mode == "thread_stack_overflow")
    thread_stack_overflow();
  else if (mode == "thread_exception")
    std::thread(&throw_from_thread_on_purpose).join();
  else if (mode == "noexcept")
    noexcept_violation_on_purpose();
  else if (mode == "throw")
    call_through(&throw_here_on_purpose);
  else if (mode == "library_throw")
    out_of_range_in_library_on_purpose();
  else if (mode == "two_threads")
    two_threads_crash();
  else if (mode == "crash_races_throw")
    crash_races_throw();
  else if (mode == "throw_after_crash")
    throw_after_crash();
  else if (mode == "crash_during_exit_after_throw")
    crash_during_exit_after_throw();
  else if (mode == "inlined_segv")
    calls_inlined_on_purpose();
  else if (mode == "replace_self_segv")
    replace_own_binary_then_crash();
  else if (mode == "replace_self_throw") {
    replace_own_binary();
    call_through(&throw_here_on_purpose);
  } else if (mode == "ok")
    return 0;
  else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  return 0;
}

// "previous_handler MODE": a SIGSEGV handler is installed before record() runs;
// "previous_terminate MODE": a terminate handler is.
int main(int argc, char** argv) {
  if (argc > 2 && std::strcmp(argv[1], "previous_handler") == 0) {
    struct sigaction previous {};
    previous.sa_sigaction = &crash_worker::previous_segv_handler;
    previous.sa_flags = SA_SIGINFO;
    sigemptyset(&previous.sa_mask);
    ::sigaction(SIGSEGV, &previous, nullptr);
    return elastic::errors::detail::run_recorded_main("worker_main", worker_main, argc - 1, argv + 1);
  }
  // "startup_cost": what initialize() leaves behind on the happy path, and whether
  // a throw before it is traced (it must not be: programs that never record pay
  // nothing per throw). Prints "descriptors_before=N descriptors_after=M" and the
  // callstacks of an exception thrown before and one thrown after initialize.
  if (argc > 1 && std::strcmp(argv[1], "startup_cost") == 0) {
    auto count_descriptors = [] {
      int count = 0;
      if (DIR* dir = ::opendir("/proc/self/fd")) {
        while (::readdir(dir) != nullptr) ++count;
        ::closedir(dir);
      }
      return count;
    };
    std::exception_ptr before, after;
    try {
      crash_worker::throw_here_on_purpose();
    } catch (...) {
      before = std::current_exception();
    }
    const int descriptors_before = count_descriptors();
    elastic::get_error_handler()->initialize();
    const int descriptors_after = count_descriptors();
    try {
      crash_worker::throw_here_on_purpose();
    } catch (...) {
      after = std::current_exception();
    }
    namespace detail = elastic::errors::detail;
    std::printf("descriptors_before=%d descriptors_after=%d\n", descriptors_before, descriptors_after);
    std::printf("before:\n%s\n", detail::format_exception_callstack(detail::describe_exception(before)).c_str());
    std::printf("after:\n%s\n", detail::format_exception_callstack(detail::describe_exception(after)).c_str());
    return 0;
  }
  // "limited_memory ok|segv": no memory can be mapped any more (RLIMIT_AS at the
  // current size plus 64 KiB) when crash capture is initialized.
  if (argc > 2 && std::strcmp(argv[1], "limited_memory") == 0) {
    auto handler = elastic::get_error_handler();
    const bool crash = std::strcmp(argv[2], "segv") == 0;
    long pages = 0;
    if (FILE* statm = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(statm, "%ld", &pages) != 1) pages = 0;
      std::fclose(statm);
    }
    struct rlimit limit {};
    limit.rlim_cur = limit.rlim_max = static_cast<rlim_t>(pages) * ::sysconf(_SC_PAGESIZE) + 64 * 1024;
    if (pages <= 0 || ::setrlimit(RLIMIT_AS, &limit) != 0) return 3;
    handler->initialize();
    if (crash) crash_worker::crash_here_on_purpose();
    static const char text[] = "initialized\n";
    ssize_t ignored = ::write(STDOUT_FILENO, text, sizeof(text) - 1);
    (void)ignored;
    return 0;
  }
  if (argc > 2 && std::strcmp(argv[1], "slow_previous_handler") == 0) {
    struct sigaction previous {};
    previous.sa_sigaction = &crash_worker::slow_previous_segv_handler;
    previous.sa_flags = SA_SIGINFO;
    sigemptyset(&previous.sa_mask);
    ::sigaction(SIGSEGV, &previous, nullptr);
    return elastic::errors::detail::run_recorded_main("worker_main", worker_main, argc - 1, argv + 1);
  }
  if (argc > 2 && std::strcmp(argv[1], "previous_terminate") == 0) {
    std::set_terminate(&crash_worker::previous_terminate_handler);
    return elastic::errors::detail::run_recorded_main("worker_main", worker_main, argc - 1, argv + 1);
  }
  // "record_lambda throw|segv": main wraps a lambda in record() the documented
  // way, so that an optimized build inlines the library's wrappers into main.
  if (argc > 2 && std::strcmp(argv[1], "record_lambda") == 0) {
    const bool crash = std::strcmp(argv[2], "segv") == 0;
    return elastic::record([crash] {
      if (crash)
        crash_worker::crash_here_on_purpose();
      else
        crash_worker::throw_here_on_purpose();
      return 0;  // the lambda of mode record_lambda
    })();
  }
  if (argc > 1 && std::strcmp(argv[1], "crash_during_exit_after_throw") == 0)
    std::atexit(&crash_worker::keep_exit_going);
  return elastic::errors::detail::run_recorded_main("worker_main", worker_main, argc, argv);
}
