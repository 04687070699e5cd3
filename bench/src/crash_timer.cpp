// The crash-path figure: the time from a fault (SIGSEGV in a record-wrapped
// function) to the moment the error file is complete, that is, renamed into
// place. The child notes the time of the fault in shared memory just before
// the faulting store; the parent watches the directory with inotify. Also told:
// the time until the parent sees the child die, and whether the file reads back.
// The fault happens 30 frames deep. The first rename puts the complete record
// (function+offset frames) in place; when elastic-symbolize is there, a second one
// puts the record with source file:line: "fault_to_lines_s" is that moment (the
// same as fault_to_file_s when no second rename came).
//
//   crash_timer     prints {"fault_to_file_s": ..., "fault_to_lines_s": ..., "fault_to_exit_s": ..., ...}
#include <poll.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elastic/errors.hpp>
#include <string>

namespace {

volatile int* volatile null_pointer = nullptr;
volatile long* fault_time_ns = nullptr;  // shared with the parent

long now_ns() {
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000L + t.tv_nsec;
}

__attribute__((noinline)) void fault_on_purpose() {
  *fault_time_ns = now_ns();
  *null_pointer = 42;
}

// Down `depth` frames, then the fault.
__attribute__((noinline)) int descend_then_fault(int depth) {
  if (depth <= 1) {
    fault_on_purpose();
    return 0;
  }
  const int below = descend_then_fault(depth - 1);
  std::atomic_signal_fence(std::memory_order_seq_cst);  // no tail call: every frame stays
  return below + 1;
}

void fault_30_frames_deep() { descend_then_fault(28); }

[[noreturn]] void die(const char* what) {
  std::perror(what);
  std::exit(2);
}

}  // namespace

int main() {
  char dir_template[] = "/tmp/elastic-crash-timer-XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  if (dir == nullptr) die("mkdtemp");
  const std::string path = std::string(dir) + "/error.json";
  void* shared = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) die("mmap");
  fault_time_ns = static_cast<volatile long*>(shared);

  int watch = ::inotify_init1(IN_CLOEXEC);
  if (watch < 0 || ::inotify_add_watch(watch, dir, IN_MOVED_TO | IN_CLOSE_WRITE) < 0) die("inotify");

  pid_t pid = ::fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    ::close(watch);
    ::setenv("TORCHELASTIC_ERROR_FILE", path.c_str(), 1);
    ::setenv("ELASTIC_LOG_LEVEL", "off", 1);
    elastic::record(fault_30_frames_deep)();
    ::_exit(0);
  }

  // The file is complete when it appears under its final name (rename), or, for
  // a writer that writes in place, when it is closed after writing. Events are
  // read as they come until the child is gone.
  long file_ns = 0, last_file_ns = 0, exit_ns = 0;
  int status = 0;
  alignas(inotify_event) char events[4096];
  for (;;) {
    pollfd ready{watch, POLLIN, 0};
    if (::poll(&ready, 1, exit_ns == 0 ? 1 : 0) > 0) {
      ssize_t n = ::read(watch, events, sizeof events);
      if (n <= 0) die("read inotify");
      for (char* p = events; p < events + n;) {
        auto* event = reinterpret_cast<inotify_event*>(p);
        if (event->len > 0 && std::strcmp(event->name, "error.json") == 0) {
          last_file_ns = now_ns();
          if (file_ns == 0) file_ns = last_file_ns;
        }
        p += sizeof(inotify_event) + event->len;
      }
      continue;
    }
    if (exit_ns != 0) break;  // gone, and nothing more to read
    if (::waitpid(pid, &status, WNOHANG) == pid) exit_ns = now_ns();
  }
  if (file_ns == 0) die("no error file");

  auto failure = elastic::ProcessFailure::read_or_describe(0, pid, WIFSIGNALED(status) ? -WTERMSIG(status) : 1, path);
  const bool readable = failure.error_file == path && failure.message.is_object();
  const bool lines = readable && failure.message.dump().find(".cpp:") != std::string::npos;
  std::printf(
      "{\"fault_to_file_s\": %.9f, \"fault_to_lines_s\": %.9f, \"fault_to_exit_s\": %.9f, \"signal\": %d, "
      "\"file_readable\": %s, \"file_has_lines\": %s}\n",
      (file_ns - *fault_time_ns) * 1e-9, (last_file_ns - *fault_time_ns) * 1e-9, (exit_ns - *fault_time_ns) * 1e-9,
      WIFSIGNALED(status) ? WTERMSIG(status) : 0, readable ? "true" : "false", lines ? "true" : "false");
  ::unlink(path.c_str());
  ::rmdir(dir);
  return readable ? 0 : 1;
}
