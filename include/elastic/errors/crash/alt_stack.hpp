// Per-thread alternate signal stacks, so that a stack overflow is reported too
// (the handler then runs on a stack of its own). Set up before any crash.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>

namespace elastic::errors::detail {

// Not async-signal-safe: set up per thread, before any crash.
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

// Not async-signal-safe (a thread_local with a destructor).
inline bool ensure_alternate_signal_stack(std::size_t bytes) {
  thread_local AlternateSignalStack stack;
  return stack.ensure(bytes);
}

}  // namespace elastic::errors::detail
