// Source file:line for the frames of a record, added by a helper process
// (elastic-symbolize, which reads DWARF with libdw) before the record is final:
// the crash handler runs it after writing the record and before re-raising, the
// exception path after writing its record. Reading DWARF allocates, takes locks
// and may meet corrupt data: none of it may happen in a signal handler, nor in
// the worker (its `ldd` lists the C/C++ runtime alone). The helper rewrites the
// file atomically; while it runs, and whenever it fails or is too slow, the file
// holds the complete record with function+offset frames.
//
// The helper is told the GNU build id of each module as it is loaded in this
// process (read from the mapped image, not from the file), so it uses a file on
// disk only when it is that very build: a binary replaced after start keeps
// function+offset frames instead of lines of another build.
//
// Signal-path file: the command line (built here, for both paths, without
// allocating), the handler's run of the helper and the wait are async-signal-safe.
// The exception path's run and the choice of helper are in symbolizer_setup.hpp.
#pragma once

#include <elf.h>
#include <link.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <elastic/errors/crash/state.hpp>
#include <elastic/errors/detail/signal_safe.hpp>
#include <elastic/errors/stacktrace.hpp>

extern char** environ;

namespace elastic::errors::detail {

// How long a record waits for its file:line: ELASTIC_SYMBOLIZER_TIMEOUT_MS, else
// the default. A crash waits at most 10 s. The exception path waits at most 4 s:
// less than a crash on another thread waits for exception records (5 s,
// record_race.hpp), so a helper never rewrites a file after a crash record
// replaced it.
inline constexpr unsigned default_symbolizer_wait_ms = 2000;
inline constexpr unsigned max_crash_symbolizer_wait_ms = 10 * 1000;
inline constexpr unsigned max_exception_symbolizer_wait_ms = 4 * 1000;

// The longest build id handed over (SHA-1 ones have 20 bytes, MD5 ones 16).
inline constexpr std::size_t max_build_id_bytes = 64;

// The NT_GNU_BUILD_ID note of the module whose ELF header is mapped at
// `map_start` (`load_bias` as the dynamic loader keeps it): points `id` at its
// bytes in memory and returns how many, 0 when there is none. Reads only what
// the module's own program headers say is mapped readable from its file, so a
// module whose headers are not where expected yields 0, never a fault.
// Async-signal-safe (memory reads only).
inline std::size_t mapped_build_id(std::uintptr_t map_start, std::uintptr_t load_bias, const unsigned char*& id) {
  // The smallest page size: the ELF header's page is mapped whole, so the program
  // headers are read only when they lie in it (the linkers put them right after).
  constexpr std::uintptr_t header_page = 4096;
  if (map_start == 0 || map_start % header_page != 0) return 0;
  const auto* header = reinterpret_cast<const ElfW(Ehdr)*>(map_start);
  if (header->e_ident[EI_MAG0] != ELFMAG0 || header->e_ident[EI_MAG1] != ELFMAG1 ||
      header->e_ident[EI_MAG2] != ELFMAG2 || header->e_ident[EI_MAG3] != ELFMAG3)
    return 0;
  if (header->e_phentsize != sizeof(ElfW(Phdr)) || header->e_phnum == 0 || header->e_phnum == PN_XNUM ||
      header->e_phoff >= header_page ||
      std::uintptr_t{header->e_phnum} * sizeof(ElfW(Phdr)) > header_page - header->e_phoff)
    return 0;
  const auto* phdrs = reinterpret_cast<const ElfW(Phdr)*>(map_start + header->e_phoff);
  const std::size_t count = header->e_phnum;

  // Whether [start, start + size) lies in the file-backed part of a readable segment.
  const auto readable = [&](std::uintptr_t start, std::uintptr_t size) {
    for (std::size_t i = 0; i < count; ++i) {
      const ElfW(Phdr)& segment = phdrs[i];
      if (segment.p_type != PT_LOAD || (segment.p_flags & PF_R) == 0) continue;
      const std::uintptr_t begin = load_bias + segment.p_vaddr;
      if (start >= begin && size <= segment.p_filesz && start - begin <= segment.p_filesz - size) return true;
    }
    return false;
  };
  // The header is where a readable segment maps the start of the file.
  bool header_mapped = false;
  for (std::size_t i = 0; i < count; ++i)
    if (phdrs[i].p_type == PT_LOAD && phdrs[i].p_offset == 0 && (phdrs[i].p_flags & PF_R) != 0 &&
        load_bias + phdrs[i].p_vaddr == map_start)
      header_mapped = true;
  if (!header_mapped) return 0;

  for (std::size_t i = 0; i < count; ++i) {
    const ElfW(Phdr)& segment = phdrs[i];
    if (segment.p_type != PT_NOTE) continue;
    const std::uintptr_t start = load_bias + segment.p_vaddr;
    const std::uintptr_t size = segment.p_filesz;
    if (!readable(start, size)) continue;
    const std::uintptr_t align = segment.p_align == 8 ? 8 : 4;
    const auto round_up = [align](std::uintptr_t n) { return (n + align - 1) & ~(align - 1); };
    std::uintptr_t at = 0;
    while (size - at >= sizeof(ElfW(Nhdr))) {
      const auto* note = reinterpret_cast<const ElfW(Nhdr)*>(start + at);
      const std::uintptr_t name_at = at + sizeof(ElfW(Nhdr));
      const std::uintptr_t name_size = round_up(note->n_namesz);
      if (name_size > size - name_at) break;
      const std::uintptr_t desc_at = name_at + name_size;
      const std::uintptr_t desc_size = round_up(note->n_descsz);
      if (desc_size > size - desc_at) break;
      const auto* name = reinterpret_cast<const char*>(start + name_at);
      if (note->n_type == NT_GNU_BUILD_ID && note->n_namesz == 4 && name[0] == 'G' && name[1] == 'N' &&
          name[2] == 'U' && name[3] == '\0' && note->n_descsz > 0 && note->n_descsz <= max_build_id_bytes) {
        id = reinterpret_cast<const unsigned char*>(start + desc_at);
        return note->n_descsz;
      }
      at = desc_at + desc_size;
    }
  }
  return 0;
}

// The helper's command line,
//   HELPER --pid PID [--build-id HEX:MODULE]... RECORD
// built in storage the caller provides (the crash handler's is
// SymbolizerCommandStorage, set aside before any crash; the exception path's is
// on the heap). A module whose build id is unknown, or does not fit, is left
// out: the helper then checks its file by device and inode instead.
// Async-signal-safe.
class SymbolizerCommand {
 public:
  SymbolizerCommand(char** argv, std::size_t max_args, std::uintptr_t* modules, std::size_t max_modules, char* text,
                    std::size_t text_bytes)
      : argv_(argv),
        max_args_(max_args),
        modules_(modules),
        max_modules_(max_modules),
        text_(text),
        text_bytes_(text_bytes) {}

  // Begins the command for the record at `record_path` (whose room is kept for
  // the end). Async-signal-safe.
  bool start(const char* helper, long pid, const char* record_path) {
    args_ = 0;
    used_ = 0;
    module_count_ = 0;
    record_path_ = record_path;
    reserved_ = safe_strlen(record_path) + 1;
    if (record_path == nullptr || reserved_ > text_bytes_) return false;
    char digits_storage[24];
    FixedText digits(digits_storage, sizeof(digits_storage));
    digits.append_decimal(pid);
    return add_arg(helper) && add_arg("--pid") && add_arg(digits.c_str());
  }

  // Hands over the build id of the module that holds `address`, once per module.
  // Async-signal-safe.
  void add_module_of(std::uintptr_t address) {
    const ModuleOfAddress module = find_module(address);
    if (module.path == nullptr || module.path[0] != '/' || module.map_start == 0) return;
    for (std::size_t i = 0; i < module_count_; ++i)
      if (modules_[i] == module.map_start) return;
    if (module_count_ == max_modules_) return;
    modules_[module_count_++] = module.map_start;
    const unsigned char* id = nullptr;
    const std::size_t id_size = mapped_build_id(module.map_start, module.load_bias, id);
    if (id_size == 0 || args_ + 4 > max_args_) return;  // two, the record, the end
    char value_storage[2 * max_build_id_bytes + 2];
    std::size_t length = 0;
    static const char hex[] = "0123456789abcdef";
    for (std::size_t i = 0; i < id_size; ++i) {
      value_storage[length++] = hex[id[i] >> 4];
      value_storage[length++] = hex[id[i] & 0xF];
    }
    value_storage[length++] = ':';
    value_storage[length] = '\0';
    const std::size_t mark = used_;
    const std::size_t args_mark = args_;
    if (!add_arg("--build-id") || !add_arg(value_storage, module.path)) {
      used_ = mark;  // leaves it to the device and inode check
      args_ = args_mark;
    }
  }

  // The finished command line (null-terminated), or null when the helper's or
  // the record's path did not fit. Async-signal-safe.
  char** finish() {
    if (args_ < 3 || args_ + 2 > max_args_) return nullptr;
    reserved_ = 0;
    if (!add_arg(record_path_)) return nullptr;
    argv_[args_] = nullptr;
    return argv_;
  }

 private:
  // Async-signal-safe.
  bool add_arg(const char* first, const char* second = nullptr) {
    if (args_ + 1 >= max_args_) return false;
    const std::size_t first_size = safe_strlen(first);
    const std::size_t second_size = safe_strlen(second);
    if (first_size + second_size + 1 + reserved_ > text_bytes_ - used_) return false;
    char* arg = text_ + used_;
    for (std::size_t i = 0; i < first_size; ++i) arg[i] = first[i];
    for (std::size_t i = 0; i < second_size; ++i) arg[first_size + i] = second[i];
    arg[first_size + second_size] = '\0';
    used_ += first_size + second_size + 1;
    argv_[args_++] = arg;
    return true;
  }

  char** argv_;
  std::size_t max_args_;
  std::uintptr_t* modules_;
  std::size_t max_modules_;
  char* text_;
  std::size_t text_bytes_;
  std::size_t args_ = 0;
  std::size_t used_ = 0;
  std::size_t module_count_ = 0;
  const char* record_path_ = nullptr;
  std::size_t reserved_ = 0;  // kept for the record's path
};

enum class SymbolizerOutcome {
  not_run,    // no helper, or it could not be started
  finished,   // it ended by itself (having rewritten the record or not)
  timed_out,  // stopped at the bound: the record has no file:line
};

// The signals a launcher stops a worker's process group with. The helper starts
// with them blocked and ignores them from its first line (elastic-symbolize's
// main): a stop sent to the group while a record is being resolved (another rank
// failed first) must not cut the resolution short. The wait below still bounds
// it, and SIGKILL still ends it. Async-signal-safe.
inline void symbolizer_stop_signals(sigset_t* set) {
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGHUP);
}

// Waits for the helper at most `limit_ms`, then kills it. Async-signal-safe.
inline SymbolizerOutcome wait_for_symbolizer(long child, unsigned limit_ms) {
  const auto now_ms = [] {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
  };
  const std::int64_t deadline = now_ms() + limit_ms;
  while (now_ms() < deadline) {
    int status = 0;
    const long done = ::waitpid(static_cast<pid_t>(child), &status, WNOHANG);
    if (done == child) return SymbolizerOutcome::finished;
    // ECHILD: SIGCHLD ignored, so it was reaped already (or will be): not waited for.
    if (done < 0 && errno != EINTR) return SymbolizerOutcome::finished;
    timespec pause{0, 1000 * 1000};
    ::nanosleep(&pause, nullptr);
  }
  ::kill(static_cast<pid_t>(child), SIGKILL);
  int status = 0;
  ::waitpid(static_cast<pid_t>(child), &status, 0);
  return SymbolizerOutcome::timed_out;
}

// The line a record gets when the helper was stopped at the bound.
// Async-signal-safe.
inline void append_symbolizer_timeout_note(FixedText& out, unsigned limit_ms) {
  out.append("(no file:line: elastic-symbolize took longer than ").append_unsigned(limit_ms);
  out.append(" ms and was stopped; ELASTIC_SYMBOLIZER_TIMEOUT_MS sets the limit)");
}

// How long a crash record waits for the helper. Async-signal-safe.
inline unsigned crash_symbolizer_wait_ms() {
  const unsigned chosen = crash_state().symbolizer_wait_ms.load();
  return chosen < max_crash_symbolizer_wait_ms ? chosen : max_crash_symbolizer_wait_ms;
}

// Runs the helper on the record at `path`, whose frames are `frames`, and waits
// for it, bounded. From the crash handler: a raw clone (fork without the atfork
// handlers, which may lock) and execve, both async-signal-safe.
// Async-signal-safe.
inline SymbolizerOutcome symbolize_record_from_handler(const char* path, const StackFrame* frames, std::size_t count) {
  CrashState& state = crash_state();
  if (path == nullptr || !state.has_symbolizer.load()) return SymbolizerOutcome::not_run;
  SymbolizerCommandStorage& storage = symbolizer_command_storage;
  SymbolizerCommand command(storage.argv, SymbolizerCommandStorage::max_args, storage.modules,
                            sizeof(storage.modules) / sizeof(storage.modules[0]), storage.text, sizeof(storage.text));
  if (!command.start(state.symbolizer, static_cast<long>(::getpid()), path)) return SymbolizerOutcome::not_run;
  for (std::size_t i = 0; i < count; ++i) command.add_module_of(frames[i].lookup_address());
  char** argv = command.finish();
  if (argv == nullptr) return SymbolizerOutcome::not_run;
  const long child = ::syscall(SYS_clone, static_cast<long>(SIGCHLD), 0L, 0L, 0L, 0L);
  if (child < 0) return SymbolizerOutcome::not_run;
  if (child == 0) {
    sigset_t stops;
    symbolizer_stop_signals(&stops);
    ::sigprocmask(SIG_SETMASK, &stops, nullptr);  // the crashing signal is blocked here: unblocked
    ::execve(argv[0], argv, environ);
    ::_exit(127);
  }
  return wait_for_symbolizer(child, crash_symbolizer_wait_ms());
}

}  // namespace elastic::errors::detail
