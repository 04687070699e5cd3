// Native stack traces: capture the return addresses of the current thread and
// turn them into lines like
//   #0 0x5622a1a07d67 in crash_here_on_purpose() (/path/to/worker+0x1d67)
// Capturing and naming are both async-signal-safe once warm_up_stacktrace() has
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
#include <unistd.h>
#include <unwind.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <elastic/errors/detail/signal_safe.hpp>
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

// The executable's own path: its link map has an empty name. Read once, before any
// crash, because readlink of /proc/self/exe is the only way to learn it.
inline const char* executable_path() {
  static char path[4096] = {};
  static const bool loaded = [] {
    ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
    path[n > 0 ? n : 0] = '\0';
    return true;
  }();
  (void)loaded;
  return path;
}

struct ModuleOfAddress {
  const char* path = nullptr;  // null when unknown
  std::uintptr_t offset = 0;   // the address relative to the module's load base
};

inline ModuleOfAddress find_module(std::uintptr_t address) {
  ModuleOfAddress module;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
  dl_find_object found{};
  if (_dl_find_object(reinterpret_cast<void*>(address), &found) == 0 && found.dlfo_link_map != nullptr) {
    const link_map* map = found.dlfo_link_map;
    module.path = map->l_name != nullptr && map->l_name[0] != '\0' ? map->l_name : executable_path();
    module.offset = address - static_cast<std::uintptr_t>(map->l_addr);
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

// Appends "#index 0xpc in name (module+0xoffset)" without a newline. Parts that
// cannot be found are left out. Async-signal-safe after warm-up.
inline void append_frame(errors::detail::FixedText& out, std::size_t index, const StackFrame& frame) {
  const std::uintptr_t address = frame.lookup_address();
  out.append('#').append_unsigned(index).append(' ').append_hex(frame.pc);
  char name[1024];
  if (absl::Symbolize(reinterpret_cast<const void*>(address), name, sizeof(name))) out.append(" in ").append(name);
  const errors::detail::ModuleOfAddress module = errors::detail::find_module(address);
  if (module.path != nullptr) {
    // The offset of the pc as printed, for `addr2line -e module offset` (for a
    // caller frame, offset - 1 names the line of the call itself).
    const std::uintptr_t load_base = address - module.offset;
    out.append(" (").append(module.path).append('+').append_hex(frame.pc - load_base).append(')');
  }
}

// The frames as text, one a line, each line ending in '\n'. Not for signal handlers.
inline std::string format_stack(const StackFrame* frames, std::size_t count) {
  std::string text;
  std::vector<char> storage(8192);
  errors::detail::FixedText line(storage.data(), storage.size());
  for (std::size_t i = 0; i < count; ++i) {
    line.clear();
    append_frame(line, i, frames[i]);
    text.append(line.c_str(), line.size());
    text += '\n';
  }
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

// Runs each step once so that lazy binding, the unwinder's caches and the
// symbolizer's memory are set up now and never allocate during a crash.
inline void warm_up_stacktrace() {
  static const bool done = [] {
    // The symbolizer keeps object files open for use during a crash, without
    // O_CLOEXEC: those descriptors must not leak into the worker's own children.
    const std::vector<int> open_before = errors::detail::open_descriptors();
    struct MarkNewDescriptorsCloseOnExec {
      const std::vector<int>& before;
      ~MarkNewDescriptorsCloseOnExec() { errors::detail::set_close_on_exec_except(before); }
    } mark_new{open_before};
    absl::InitializeSymbolizer(errors::detail::executable_path());
    StackFrame frames[8];
    std::size_t count = capture_stack(frames, 8);
    char line_storage[2048];
    errors::detail::FixedText line(line_storage, sizeof(line_storage));
    for (std::size_t i = 0; i < count; ++i) {
      line.clear();
      append_frame(line, i, frames[i]);
    }
    return true;
  }();
  (void)done;
}

}  // namespace elastic
