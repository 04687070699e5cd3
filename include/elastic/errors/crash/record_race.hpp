// Which record wins when a crash on one thread races an exception record (or an
// exit) on another. The crash side of this protocol runs in the signal handler:
// every function it calls here is async-signal-safe (atomics and nanosleep).
#pragma once

#include <time.h>

#include <atomic>
#include <elastic/errors/crash/state.hpp>

namespace elastic::errors::detail {

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

// Async-signal-safe.
inline void pause_a_little() {
  timespec pause{0, 2 * 1000 * 1000};
  ::nanosleep(&pause, nullptr);
}

// A crash report begun or done, or an exit after an exception record begun, on a
// thread other than the caller's.
// Async-signal-safe.
inline bool crash_on_other_thread(long self) {
  const long writer = crash_state().writer_thread.load();
  return writer != 0 && writer != self && writer != -self;
}

// The calling thread takes `writer_thread`: when it is free, or held by this very
// thread's exit (a crash during its own exit is still reported).
// Async-signal-safe.
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
// Async-signal-safe.
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
// Not on the signal path (an atexit hook); async-signal-safe all the same.
inline void on_exit_hook() {
  CrashState& state = crash_state();
  const long self = current_thread_id();
  long writer = 0;
  if (state.exception_recorded.load() && state.writer_thread.compare_exchange_strong(writer, -self)) return;
  wait_for_crash_on_other_thread(self);
}

// Held by the exception path while it writes a record (see above). Not on the
// signal path.
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

}  // namespace elastic::errors::detail
