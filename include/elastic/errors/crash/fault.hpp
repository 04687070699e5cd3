// What a fatal signal says about itself: the headline of a crash report
// ("Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)"), stack overflows, and
// the first frame of the interrupted code. Signal-path file: all of it is
// async-signal-safe.
#pragma once

#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <elastic/errors/detail/signal_safe.hpp>
#include <elastic/errors/signals.hpp>
#include <elastic/errors/stacktrace.hpp>

namespace elastic::errors::detail {

// What the kernel's si_code says about a fault, for the signals that have one.
// Async-signal-safe.
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

// Async-signal-safe.
inline bool signal_has_fault_address(int signo) {
  return signo == SIGSEGV || signo == SIGBUS || signo == SIGFPE || signo == SIGILL || signo == SIGTRAP;
}

// The stack pointer of the interrupted code, 0 where unknown.
// Async-signal-safe.
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
// Async-signal-safe.
inline bool looks_like_stack_overflow(int signo, const siginfo_t* info, const void* context) {
  const std::uintptr_t sp = interrupted_stack_pointer(context);
  if (signo != SIGSEGV || info->si_code <= 0 || sp == 0) return false;
  const auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
  const std::uintptr_t distance = address > sp ? address - sp : sp - address;
  return distance < 64 * 1024;
}

// "Fatal signal 11 (SIGSEGV) at address 0x0 (SEGV_MAPERR)". A signal sent by
// another process names the sender instead.
// Async-signal-safe.
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
// Async-signal-safe.
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

}  // namespace elastic::errors::detail
