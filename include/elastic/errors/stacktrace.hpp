// Native stack traces: capture the return addresses of the current thread and
// turn them into lines like
//   #0 0x5622a1a07d67 in crash_here_on_purpose() (/path/to/worker+0x1d67)
// Capturing and naming are both async-signal-safe once prepare_stacktrace() has
// run, so the crash handler uses the same code as ordinary callers:
// - unwinding is libgcc's _Unwind_Backtrace (DWARF call frame information, so
//   code built without frame pointers unwinds too, and it steps through signal
//   frames);
// - the module of an address comes from glibc's _dl_find_object (lock-free and
//   async-signal-safe), its offset is what addr2line takes;
// - names come from abseil's absl::Symbolize, which reads ELF symbol tables with
//   open/read into memory it owns (no malloc) and demangles without allocating.
#pragma once

#include <absl/debugging/symbolize.h>
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>
#include <unwind.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <elastic/errors/detail/signal_safe.hpp>
#include <memory>
#include <string>
#include <vector>

namespace elastic {

// One captured frame. `exact` is true for the frame that was interrupted by a
// signal, whose pc is the faulting instruction itself; other pcs are return
// addresses, one past the call.
struct StackFrame {
  std::uintptr_t pc = 0;
  bool exact = false;

  // The address that lies inside the calling instruction: a return address may
  // already be the first byte of the next function when the callee never returns.
  std::uintptr_t lookup_address() const { return exact || pc == 0 ? pc : pc - 1; }
};

namespace errors::detail {

struct CaptureState {
  StackFrame* frames;
  std::size_t capacity;
  std::size_t count;
};

inline _Unwind_Reason_Code collect_frame(_Unwind_Context* context, void* argument) {
  auto* state = static_cast<CaptureState*>(argument);
  if (state->count >= state->capacity) return _URC_END_OF_STACK;
  int before_instruction = 0;
  const auto pc = static_cast<std::uintptr_t>(_Unwind_GetIPInfo(context, &before_instruction));
  if (pc == 0) return _URC_END_OF_STACK;
  state->frames[state->count++] = StackFrame{pc, before_instruction != 0};
  return _URC_NO_REASON;
}

// The executable's own path: its link map has an empty name. Read from
// /proc/self/exe at the first need, not at start-up (readlink is
// async-signal-safe; no guard variable, so a signal handler may be the first).
// A file renamed over the program since it started makes the kernel name the
// running one "PATH (deleted)": the suffix is dropped, so frames keep the path
// the program was started from, and the file now there is told apart by its
// build id (see crash/symbolizer.hpp). Names /proc/self/exe itself while another
// thread is reading it.
inline const char* executable_path() {
  static char path[4096] = {};
  static std::atomic<int> state{0};  // 0: not read, 1: being read, 2: ready
  if (state.load(std::memory_order_acquire) == 2) return path;
  int unread = 0;
  if (state.compare_exchange_strong(unread, 1, std::memory_order_acq_rel)) {
    const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
    std::size_t size = n > 0 ? static_cast<std::size_t>(n) : 0;
    constexpr char deleted[] = " (deleted)";
    constexpr std::size_t deleted_size = sizeof(deleted) - 1;
    if (size > deleted_size) {
      bool suffix = true;
      for (std::size_t i = 0; i < deleted_size; ++i) suffix = suffix && path[size - deleted_size + i] == deleted[i];
      if (suffix) size -= deleted_size;
    }
    path[size] = '\0';
    state.store(2, std::memory_order_release);
    return path;
  }
  return state.load(std::memory_order_acquire) == 2 ? path : "/proc/self/exe";
}

struct ModuleOfAddress {
  const char* path = nullptr;    // null when unknown
  std::uintptr_t offset = 0;     // the address relative to the module's load base
  std::uintptr_t map_start = 0;  // where its lowest mapping begins (its ELF header), 0 when unknown
  std::uintptr_t load_bias = 0;  // what its program headers' addresses are relative to
};

// The module holding `address`. Async-signal-safe with glibc 2.35+ (see below).
inline ModuleOfAddress find_module(std::uintptr_t address) {
  ModuleOfAddress module;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
  dl_find_object found{};
  if (_dl_find_object(reinterpret_cast<void*>(address), &found) == 0 && found.dlfo_link_map != nullptr) {
    const link_map* map = found.dlfo_link_map;
    module.path = map->l_name != nullptr && map->l_name[0] != '\0' ? map->l_name : executable_path();
    module.offset = address - static_cast<std::uintptr_t>(map->l_addr);
    module.map_start = reinterpret_cast<std::uintptr_t>(found.dlfo_map_start);
    module.load_bias = static_cast<std::uintptr_t>(map->l_addr);
  }
#else
  // Older glibc: dladdr takes the loader's lock, so this is safe only when the
  // crash did not happen inside the dynamic loader.
  Dl_info info{};
  link_map* map = nullptr;
  if (::dladdr1(reinterpret_cast<void*>(address), &info, reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP) != 0 &&
      map != nullptr) {
    module.path = map->l_name != nullptr && map->l_name[0] != '\0' ? map->l_name : executable_path();
    module.offset = address - static_cast<std::uintptr_t>(map->l_addr);
    module.map_start = reinterpret_cast<std::uintptr_t>(info.dli_fbase);
    module.load_bias = static_cast<std::uintptr_t>(map->l_addr);
  }
#endif
  return module;
}

// The descriptors open now, sorted. Start-up only: it allocates.
inline std::vector<int> open_descriptors() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    const int fd = std::atoi(entry->d_name);
    if (fd != ::dirfd(dir)) fds.push_back(fd);
  }
  ::closedir(dir);
  std::sort(fds.begin(), fds.end());
  return fds;
}

// Marks close-on-exec every descriptor opened since `before` was taken.
inline void set_close_on_exec_except(const std::vector<int>& before) {
  for (int fd : open_descriptors()) {
    if (std::binary_search(before.begin(), before.end(), fd)) continue;
    const int flags = ::fcntl(fd, F_GETFD);
    if (flags >= 0 && !(flags & FD_CLOEXEC)) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
  }
}

}  // namespace errors::detail

// Fills `frames` with the calling thread's stack, innermost first; returns how
// many were stored (at most `capacity`). Async-signal-safe after warm-up.
inline std::size_t capture_stack(StackFrame* frames, std::size_t capacity) {
  errors::detail::CaptureState state{frames, capacity, 0};
  _Unwind_Backtrace(&errors::detail::collect_frame, &state);
  return state.count;
}

namespace errors::detail {

// Whether naming frames may go ahead: set by prepare_stacktrace(), cleared when
// the symbolizer cannot be made safe here.
inline std::atomic<bool>& symbolizer_ready() {
  static std::atomic<bool> ready{false};
  return ready;
}

// The first name lookup sets up abseil's symbolizer, whose allocator ends the
// process when mmap fails. Whether 1 MiB could be mapped now (it is given back at
// once) tells it apart from a process at its RLIMIT_AS or out of memory: then
// frames go without names (module and offset only). Async-signal-safe.
inline bool memory_to_name_frames() {
  constexpr std::size_t probe = 1u << 20;
  void* mapping = ::mmap(nullptr, probe, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapping == MAP_FAILED) return false;
  ::munmap(mapping, probe);
  return true;
}

}  // namespace errors::detail

namespace errors::detail {

inline bool starts_with(const char* text, const char* prefix) {
  while (*prefix != '\0')
    if (*text++ != *prefix++) return false;
  return true;
}

// The library's own wrappers around the user's function: record()'s lambda,
// invoke_recorded, run_recorded_main. Async-signal-safe.
inline bool is_wrapper_frame_name(const char* name) {
  return starts_with(name, "elastic::errors::detail::invoke_recorded") ||
         starts_with(name, "elastic::errors::detail::run_recorded_main") || starts_with(name, "elastic::record<");
}

// The C runtime's frames below main() or a thread's function. Async-signal-safe.
inline bool is_startup_frame_name(const char* name) {
  return safe_streq(name, "_start") || safe_streq(name, "__libc_start_main") ||
         safe_streq(name, "__libc_start_call_main") || safe_streq(name, "start_thread") || safe_streq(name, "clone3") ||
         safe_streq(name, "clone");
}

// Whether `path` names the C library (libc.so.6), whose static functions have no
// name in its dynamic symbol table. Async-signal-safe.
inline bool is_libc_path(const char* path) {
  if (path == nullptr) return false;
  const char* base = path;
  for (const char* p = path; *p != '\0'; ++p)
    if (*p == '/') base = p + 1;
  return starts_with(base, "libc.so") || starts_with(base, "libc-");
}

}  // namespace errors::detail

// Marks in `hidden` (one flag per frame) the frames of plumbing a reader does not
// need: the library's wrappers around the user's function, and the C runtime's
// start-up frames at the outer end of the stack. Returns how many were marked.
// Frames are only marked when names can be looked up (`name`). Async-signal-safe
// after prepare_stacktrace().
inline std::size_t mark_plumbing_frames(const StackFrame* frames, std::size_t count, bool* hidden, bool name = true) {
  for (std::size_t i = 0; i < count; ++i) hidden[i] = false;
  if (!name) return 0;
  std::size_t marked = 0;
  char symbol[1024];
  bool outer_end = true;  // still in the start-up frames, walking inward
  for (std::size_t i = count; i-- > 0;) {
    const std::uintptr_t address = frames[i].lookup_address();
    const bool named = absl::Symbolize(reinterpret_cast<const void*>(address), symbol, sizeof(symbol));
    if (outer_end) {
      outer_end = named ? errors::detail::is_startup_frame_name(symbol)
                        : errors::detail::is_libc_path(errors::detail::find_module(address).path);
      if (outer_end) {
        hidden[i] = true;
        ++marked;
        continue;
      }
    }
    if (named && errors::detail::is_wrapper_frame_name(symbol)) {
      hidden[i] = true;
      ++marked;
    }
  }
  return marked;
}

// The line that stands for the hidden frames. Async-signal-safe.
inline void append_hidden_frames_line(errors::detail::FixedText& out, std::size_t hidden) {
  out.append("(").append_unsigned(hidden).append(hidden == 1 ? " frame" : " frames");
  out.append(" of elastic's wrappers and the C runtime's start-up hidden; ELASTIC_TRACEBACK_ALL=1 shows them)");
}

// Whether ELASTIC_TRACEBACK_ALL asks for every frame ("1", "true", "yes", "on").
// Not async-signal-safe (getenv): the crash handler uses the answer taken when it
// was installed.
inline bool traceback_all_requested() {
  const char* value = std::getenv("ELASTIC_TRACEBACK_ALL");
  if (value == nullptr) return false;
  return errors::detail::safe_streq(value, "1") || errors::detail::safe_streq(value, "true") ||
         errors::detail::safe_streq(value, "yes") || errors::detail::safe_streq(value, "on");
}

// Appends "#index 0xpc in name (module+0xoffset)" without a newline. Parts that
// cannot be found are left out; with `name` false, the name is not looked up.
// Async-signal-safe after prepare_stacktrace().
inline void append_frame(errors::detail::FixedText& out, std::size_t index, const StackFrame& frame, bool name = true) {
  const std::uintptr_t address = frame.lookup_address();
  out.append('#').append_unsigned(index).append(' ').append_hex(frame.pc);
  char symbol[1024];
  if (name && absl::Symbolize(reinterpret_cast<const void*>(address), symbol, sizeof(symbol)))
    out.append(" in ").append(symbol);
  const errors::detail::ModuleOfAddress module = errors::detail::find_module(address);
  if (module.path != nullptr) {
    // The offset of the pc as printed, for `addr2line -e module offset` (for a
    // caller frame, offset - 1 names the line of the call itself).
    const std::uintptr_t load_base = address - module.offset;
    out.append(" (").append(module.path).append('+').append_hex(frame.pc - load_base).append(')');
  }
}

// Whether frames can be named now (see memory_to_name_frames). Async-signal-safe.
inline bool can_name_frames() {
  return errors::detail::symbolizer_ready().load() && errors::detail::memory_to_name_frames();
}

inline void prepare_stacktrace();

// The frames as text, one a line, each line ending in '\n'. Not for signal handlers.
inline std::string format_stack(const StackFrame* frames, std::size_t count) {
  std::string text;
  std::vector<char> storage(8192);
  errors::detail::FixedText line(storage.data(), storage.size());
  prepare_stacktrace();
  const bool name = can_name_frames();
  // The symbolizer keeps object files open for later lookups (a crash's), without
  // O_CLOEXEC: those descriptors must not leak into the worker's own children.
  const std::vector<int> open_before = name ? errors::detail::open_descriptors() : std::vector<int>();
  std::unique_ptr<bool[]> hidden(new bool[count + 1]);
  const std::size_t hidden_count =
      traceback_all_requested() ? 0 : mark_plumbing_frames(frames, count, hidden.get(), name);
  for (std::size_t i = 0; i < count; ++i) {
    if (hidden_count > 0 && hidden[i]) continue;
    line.clear();
    append_frame(line, i, frames[i], name);
    text.append(line.c_str(), line.size());
    text += '\n';
  }
  if (hidden_count > 0) {
    line.clear();
    append_hidden_frames_line(line, hidden_count);
    text.append(line.c_str(), line.size());
    text += '\n';
  }
  if (name) errors::detail::set_close_on_exec_except(open_before);
  return text;
}

inline std::string format_stack(const std::vector<StackFrame>& frames) {
  return format_stack(frames.data(), frames.size());
}

// The stack of the caller of this function, starting at the caller. Not inlined,
// so its return address marks where the caller's frames begin whatever the
// optimizer did to the capture code.
__attribute__((noinline)) inline std::vector<StackFrame> current_stack(std::size_t max_frames = 64) {
  const auto caller = reinterpret_cast<std::uintptr_t>(__builtin_return_address(0));
  std::vector<StackFrame> frames(max_frames + 8);
  frames.resize(capture_stack(frames.data(), frames.size()));
  for (std::size_t i = 0; i < frames.size(); ++i) {
    if (frames[i].pc == caller) {
      frames.erase(frames.begin(), frames.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
  }
  if (frames.size() > max_frames) frames.resize(max_frames);
  return frames;
}

// Makes capturing and naming frames ready for a signal handler, cheaply: binds
// the unwinder (one capture) and initializes abseil's symbolizer. The
// costly part, reading symbol tables, is left to the first lookup: on the error
// path or inside the crash handler itself (absl::Symbolize is async-signal-safe
// and takes its memory with mmap), so a run that never fails never pays for it.
// Safe to call repeatedly; later calls cost an atomic load.
inline void prepare_stacktrace() {
  static const bool done = [] {
    StackFrame frames[4];
    capture_stack(frames, 4);
    // Without argv0: abseil reads the executable through /proc/self/exe, and uses
    // argv0 only where that cannot be opened.
    absl::InitializeSymbolizer(nullptr);
    errors::detail::symbolizer_ready().store(true);
    return true;
  }();
  (void)done;
}

// The same as prepare_stacktrace(), then one lookup, so the symbol tables are read
// now (a first crash report is then faster). Optional.
inline void warm_up_stacktrace() {
  prepare_stacktrace();
  (void)format_stack(current_stack(4));
}

}  // namespace elastic
