// Throw-site stack traces: the stack of where an exception was thrown, not of
// where it was caught, so an exception escaping into record() shows its origin.
//
// Every `throw` compiles to a call to __cxa_throw. This header defines that
// function (a weak definition, so any number of translation units may include
// it) in the program; with -rdynamic (set by the elastic::errors CMake target) the
// dynamic loader binds calls from shared libraries to it too, so exceptions thrown
// inside libstdc++ (std::vector::at) or third-party libraries are traced as well.
// It records the stack into a small table keyed by the thrown object's address,
// then hands over to the C++ runtime's own __cxa_throw.
//
// Recording starts with the first ErrorHandler::initialize() (every record() runs
// it) or install_crash_handlers(): before that, and in programs that never record,
// a throw costs one relaxed load more than without the library.
// Off at build time with ELASTIC_THROW_TRACES=0 (CMake option of the same name) in
// every translation unit of the program,
// at run time with the environment variable ELASTIC_THROW_TRACES=0, in code with
// CrashCaptureOptions::throw_traces = false.
#pragma once

#include <dlfcn.h>
#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <elastic/errors/detail/exception_info.hpp>
#include <elastic/errors/stacktrace.hpp>
#include <exception>
#include <string>
#include <typeinfo>
#include <vector>

// AddressSanitizer intercepts __cxa_throw itself, so its builds go without.
#ifndef ELASTIC_THROW_TRACES
#if defined(__SANITIZE_ADDRESS__)
#define ELASTIC_THROW_TRACES 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ELASTIC_THROW_TRACES 0
#endif
#endif
#endif
#ifndef ELASTIC_THROW_TRACES
#define ELASTIC_THROW_TRACES 1
#endif

namespace elastic::errors::detail {

inline constexpr std::size_t throw_trace_depth = 48;
inline constexpr std::size_t throw_trace_slots = 32;

struct ThrowTrace {
  const void* object = nullptr;
  std::size_t count = 0;
  StackFrame frames[throw_trace_depth];
};

// The most recent throws of the whole process (an exception_ptr may carry an
// exception to another thread before it is reported). A bounded spin lock rather
// than a mutex: it never throws, and a lock left held (a fork at the wrong moment)
// costs a missing trace, never a hang.
class ThrowTraceTable {
 public:
  void record(const void* object, const StackFrame* frames, std::size_t count) {
    if (!lock()) return;
    ThrowTrace& slot = slots_[next_++ % throw_trace_slots];
    slot.object = object;
    slot.count = count < throw_trace_depth ? count : throw_trace_depth;
    for (std::size_t i = 0; i < slot.count; ++i) slot.frames[i] = frames[i];
    unlock();
  }

  // The newest trace of `object`, empty when none was recorded (or it is too old).
  std::vector<StackFrame> find(const void* object) {
    std::vector<StackFrame> frames;
    if (object == nullptr || !lock()) return frames;
    for (std::size_t age = 1; age <= throw_trace_slots && age <= next_; ++age) {
      const ThrowTrace& slot = slots_[(next_ - age) % throw_trace_slots];
      if (slot.object == object) {
        frames.assign(slot.frames, slot.frames + slot.count);
        break;
      }
    }
    unlock();
    return frames;
  }

 private:
  bool lock() {
    for (int attempt = 0; attempt < 100000; ++attempt) {
      if (!busy_.test_and_set(std::memory_order_acquire)) return true;
      if (attempt > 100) ::sched_yield();
    }
    return false;
  }
  void unlock() { busy_.clear(std::memory_order_release); }

  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::size_t next_ = 0;
  ThrowTrace slots_[throw_trace_slots];
};

inline ThrowTraceTable& throw_traces() {
  static ThrowTraceTable table;
  return table;
}

// Throw sites are recorded only once crash capture is installed (by record(),
// through ErrorHandler::initialize()): a program that merely links the library
// pays one relaxed load per throw, not a stack capture.
inline std::atomic<bool>& throw_traces_armed() {
  static std::atomic<bool> armed{false};
  return armed;
}

inline void arm_throw_traces(bool on = true) { throw_traces_armed().store(on, std::memory_order_relaxed); }

// The environment's say (ELASTIC_THROW_TRACES=0 or off: no traces). The build
// switch does not enter here: an inline body that differed between translation
// units built with and without it would break the one-definition rule, and the
// linker would keep either at random. The switch decides only whether this unit
// defines __cxa_throw (below), a symbol with one meaning wherever it is defined:
// a program is traced when any of its units is built with the switch on.
inline bool throw_tracing_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("ELASTIC_THROW_TRACES");
    return !(value != nullptr && (std::strcmp(value, "0") == 0 || std::strcmp(value, "off") == 0));
  }();
  return enabled;
}

// Records the current stack for `object`, starting at the frame that called
// __cxa_throw (whose return address is `throw_return`): the tracing frames
// themselves are left out.
// Out of line: its stack buffer must not keep traced_cxa_throw from handing over
// with a jump.
__attribute__((noinline)) inline void record_throw_site(const void* object, const void* throw_return) noexcept {
  if (!throw_tracing_enabled()) return;
  StackFrame frames[throw_trace_depth + 8];
  std::size_t count = capture_stack(frames, throw_trace_depth + 8);
  std::size_t first = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (frames[i].pc == reinterpret_cast<std::uintptr_t>(throw_return)) {
      first = i;
      break;
    }
  }
  throw_traces().record(object, frames + first, count - first);
}

// The throw-site trace recorded for a thrown object, empty if there is none.
inline std::vector<StackFrame> throw_site_trace(const void* object) { return throw_traces().find(object); }

// The py_callstack text of an exception chain: each level's "<type>: <what()>"
// line (the first line is what a summary shows), followed by the frames of where
// that level was thrown when known. `top_fallback` stands in for the outermost
// level's frames when its throw was not traced.
inline std::string format_exception_callstack(const std::vector<ExceptionLevel>& levels,
                                              const std::vector<StackFrame>& top_fallback = {}) {
  std::string text;
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if (i > 0) text += "\nCaused by: ";
    text += levels[i].headline();
    std::vector<StackFrame> frames = throw_site_trace(levels[i].object);
    if (frames.empty() && i == 0) frames = top_fallback;
    if (!frames.empty()) {
      text += '\n';
      text += format_stack(frames);
      text.pop_back();  // format_stack ends each line; the text ends without one
    }
  }
  return text;
}

using CxaThrowFunction = void (*)(void*, std::type_info*, void (*)(void*));

inline CxaThrowFunction runtime_cxa_throw() {
  static const CxaThrowFunction next = reinterpret_cast<CxaThrowFunction>(::dlsym(RTLD_NEXT, "__cxa_throw"));
  return next;
}

}  // namespace elastic::errors::detail

#if ELASTIC_THROW_TRACES
namespace elastic::errors::detail {
// The C++ runtime's entry point for `throw`, defined under its symbol name (an asm
// label, since compilers declare __cxa_throw themselves with varying types). Weak
// so that every translation unit including this header may define it; the linker
// keeps one.
//
// Not declared noreturn, and the hand-over is its last act: the compiler makes it a
// jump (a sibling call), so no frame of ours is left on the stack while the
// exception unwinds, which would cost every throw an extra frame to unwind
// through (about a third more time for a shallow throw).
void traced_cxa_throw(void* object, std::type_info* type, void (*destroy)(void*)) __asm__("__cxa_throw");

__attribute__((weak)) void traced_cxa_throw(void* object, std::type_info* type, void (*destroy)(void*)) {
  if (throw_traces_armed().load(std::memory_order_relaxed)) record_throw_site(object, __builtin_return_address(0));
  CxaThrowFunction next = runtime_cxa_throw();
  if (next == nullptr) std::abort();  // no C++ runtime to hand over to (a static link)
  next(object, type, destroy);
}
}  // namespace elastic::errors::detail
#endif
