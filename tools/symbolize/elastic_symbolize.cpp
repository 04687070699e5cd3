// elastic-symbolize: adds source file:line to the frames of an error file.
//
//   elastic-symbolize [--pid PID] [--build-id HEX:MODULE]... ERROR_FILE
//
// Rewrites extraInfo.py_callstack in place (atomically) so that each frame line
//   #3 0x55d0c0a1d2f1 in train() (/path/worker+0x12f1)
// becomes
//   #3 0x55d0c0a1d2f1 in train() at /src/train.cpp:42 (/path/worker+0x12f1)
// with one line more before it for each function inlined at that address. The
// worker's crash handler runs it (a fresh process: DWARF parsing allocates and may
// take locks, which a signal handler must not) and so does the exception path;
// the worker itself never loads libdw.
//
// --build-id gives a module's GNU build id as loaded in the process (the worker
// reads it from the mapped image): the file at MODULE, and the separate debug file
// chosen for it, are used only when their build ids are that one. A module with
// no build id given is checked, with --pid, by device and inode against the
// files process PID maps (not deleted). So a binary replaced on disk after start
// keeps its function+offset frames, and the record says why, once per module, on
// a line at its end. Frames of modules without line information are left as they
// are. Separate debug files are looked up by build id under /usr/lib/debug/.build-id/
// (ELASTIC_DEBUG_FILE_DIRECTORY: other directories, colon-separated) and by
// .gnu_debuglink. Exit status 0 when the file was rewritten or had nothing to add,
// 1 on a problem (the file is then untouched).
//
// A part of the errors module (its out-of-process helper): it writes records with
// that module's own file and JSON routines, as the worker would.
#include <cxxabi.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <elfutils/libdwfl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elastic/errors/crash/symbolizer.hpp>
#include <elastic/errors/detail/file_io.hpp>
#include <elastic/errors/detail/python_json.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct DwflCloser {
  void operator()(Dwfl* dwfl) const { dwfl_end(dwfl); }
};

// Where libdw looks for separate debug files, in its own format: the module's
// directory and its .debug subdirectory (for .gnu_debuglink names), then each
// directory of ELASTIC_DEBUG_FILE_DIRECTORY (colon-separated, /usr/lib/debug when
// unset), under .build-id/ and by the module's path. Set once in main.
char* debuginfo_path = nullptr;
const Dwfl_Callbacks offline_callbacks = {
    dwfl_build_id_find_elf,        // find_elf
    dwfl_standard_find_debuginfo,  // .gnu_debuglink, /usr/lib/debug/.build-id
    dwfl_offline_section_address,  // section_address
    &debuginfo_path,
};

std::string debuginfo_path_from_environment() {
  const char* directories = std::getenv("ELASTIC_DEBUG_FILE_DIRECTORY");
  return std::string(":.debug:") + (directories != nullptr && *directories != '\0' ? directories : "/usr/lib/debug");
}

std::string demangled(const char* name) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status), &std::free);
  return status == 0 && out ? out.get() : name;
}

// The name of a subprogram or inlined subroutine DIE, demangled.
std::string die_name(Dwarf_Die* die) {
  Dwarf_Attribute attr;
  for (int at : {DW_AT_linkage_name, DW_AT_MIPS_linkage_name}) {
    const char* linkage = dwarf_formstring(dwarf_attr_integrate(die, at, &attr));
    if (linkage == nullptr) continue;
    std::string name = demangled(linkage);
    if (name != linkage) return name;  // else a name the demangler does not know: the plain one
  }
  if (const char* name = dwarf_formstring(dwarf_attr_integrate(die, DW_AT_name, &attr))) return name;
  return "??";
}

// A source path as the reader should see it: relative ones joined to the
// compilation directory, "a/../b" folded.
std::string source_path(Dwarf_Die* cu, const char* file) {
  std::filesystem::path path(file);
  if (path.is_relative()) {
    Dwarf_Attribute attr;
    if (const char* dir = dwarf_formstring(dwarf_attr(cu, DW_AT_comp_dir, &attr)))
      path = std::filesystem::path(dir) / path;
  }
  return path.lexically_normal().string();
}

struct Location {
  std::string function;  // empty: the symbol name already on the line
  std::string file;
  int line = 0;
};

bool ends_with(const std::string& text, const std::string& tail) {
  return text.size() >= tail.size() && text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

// Code of the library's own wrappers around the user's function (record()'s
// call operator, invoke_recorded, run_recorded_main), inlined: the frames the
// writer hides by name when they are not inlined. By the file the code is in, as
// a lambda's call operator has no name or declaring file of its own in DWARF.
bool is_wrapper(const Location& location) { return ends_with(location.file, "/elastic/errors/record.hpp"); }

// The standard library's std::invoke steps, between a wrapper and the user's function.
bool is_invoke_step(const Location& location) {
  return ends_with(location.file, "/bits/invoke.h") || ends_with(location.file, "/functional");
}

bool traceback_all_requested() {
  const char* value = std::getenv("ELASTIC_TRACEBACK_ALL");
  if (value == nullptr) return false;
  const std::string text = value;
  return text == "1" || text == "true" || text == "yes" || text == "on";
}

// Devices and inodes of the files process `pid` maps ("(deleted)" ones are left
// out: their path names another file now, or none). Not by path: the loader's
// path of a module may go through symbolic links (/lib on a merged /usr) where
// the kernel's names the file itself.
std::set<std::pair<unsigned long, unsigned long>> mapped_files(long pid) {
  std::set<std::pair<unsigned long, unsigned long>> files;
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, path;
    unsigned long inode = 0;
    in >> range >> perms >> offset >> dev >> inode;
    std::getline(in >> std::ws, path);
    if (path.empty() || path[0] != '/' || inode == 0) continue;
    if (path.size() > 10 && path.compare(path.size() - 10, 10, " (deleted)") == 0) continue;
    unsigned major = 0, minor = 0;
    if (std::sscanf(dev.c_str(), "%x:%x", &major, &minor) != 2) continue;
    files.insert({static_cast<unsigned long>(makedev(major, minor)), inode});
  }
  return files;
}

// The functions and inlined calls of one compilation unit with their address
// ranges, gathered in one walk of its DIEs. libdw's dwarf_getscopes walks the
// whole unit (types included) for every address: some milliseconds a frame in a
// unit that includes large headers, where one walk per unit serves every frame.
class ScopeIndex {
 public:
  explicit ScopeIndex(Dwarf_Die unit) { walk(unit, 0, 0); }

  // Innermost first: the inlined subroutines and the subprogram holding `address`.
  std::vector<Dwarf_Die> containing(Dwarf_Addr address) const {
    std::vector<const Scope*> found;
    for (const Scope& scope : scopes_)
      for (const auto& [low, high] : scope.ranges)
        if (address >= low && address < high) {
          found.push_back(&scope);
          break;
        }
    std::stable_sort(found.begin(), found.end(), [](const Scope* a, const Scope* b) { return a->depth > b->depth; });
    std::vector<Dwarf_Die> result;
    for (const Scope* scope : found) result.push_back(scope->die);
    return result;
  }

 private:
  struct Scope {
    Dwarf_Die die;
    int depth;
    std::vector<std::pair<Dwarf_Addr, Dwarf_Addr>> ranges;
  };

  // Descends only where code can be: namespaces, functions, blocks, imported
  // (dwz) units; types and variables are stepped over. `units` bounds imports.
  void walk(Dwarf_Die parent, int depth, int units) {
    Dwarf_Die child;
    if (dwarf_child(&parent, &child) != 0) return;
    do {
      switch (dwarf_tag(&child)) {
        case DW_TAG_subprogram:
        case DW_TAG_inlined_subroutine: {
          Scope scope{child, depth, {}};
          Dwarf_Addr base = 0, low = 0, high = 0;
          for (ptrdiff_t at = 0; (at = dwarf_ranges(&child, at, &base, &low, &high)) > 0;)
            scope.ranges.emplace_back(low, high);
          if (scope.ranges.empty()) break;  // a declaration or an abstract instance
          scopes_.push_back(std::move(scope));
          walk(child, depth + 1, units);
          break;
        }
        case DW_TAG_lexical_block: walk(child, depth + 1, units); break;
        case DW_TAG_namespace:
        case DW_TAG_module: walk(child, depth, units); break;
        case DW_TAG_imported_unit: {
          Dwarf_Attribute attr;
          Dwarf_Die imported;
          if (units < 64 && dwarf_formref_die(dwarf_attr(&child, DW_AT_import, &attr), &imported) != nullptr)
            walk(imported, depth, units + 1);
          break;
        }
        default: break;
      }
    } while (dwarf_siblingof(&child, &child) == 0);
  }

  std::vector<Scope> scopes_;
};

// An ELF file's GNU build id in lowercase hex, empty when it has none.
std::string build_id_of(Elf* elf) {
  const void* bits = nullptr;
  const ssize_t size = elf != nullptr ? dwelf_elf_gnu_build_id(elf, &bits) : -1;
  std::string hex;
  for (ssize_t i = 0; i < size; ++i) {
    static const char digits[] = "0123456789abcdef";
    const auto byte = static_cast<const unsigned char*>(bits)[i];
    hex += digits[byte >> 4];
    hex += digits[byte & 0xF];
  }
  return hex;
}

class Resolver {
 public:
  Resolver(std::optional<long> pid, std::map<std::string, std::string> build_ids) : build_ids_(std::move(build_ids)) {
    if (pid) mapped_ = mapped_files(*pid);
    checked_ = pid.has_value();
  }

  // Why modules were not used, one line each, in the order they were met.
  const std::vector<std::string>& notes() const { return notes_; }

  // Innermost first: the inlined functions at `offset`, then the function itself.
  std::vector<Location> resolve(const std::string& path, std::uint64_t offset) {
    Dwfl_Module* module = module_of(path);
    if (module == nullptr) return {};
    Dwarf_Addr bias = 0;
    Dwarf_Die* cu = compilation_unit(module, offset, bias);
    Dwarf_Line* line = cu != nullptr ? dwarf_getsrc_die(cu, offset - bias) : nullptr;
    int lineno = 0;
    const char* file = line != nullptr ? dwarf_linesrc(line, nullptr, nullptr) : nullptr;
    if (file == nullptr || dwarf_lineno(line, &lineno) != 0 || lineno <= 0) return {};

    std::vector<Location> chain{{std::string(), source_path(cu, file), lineno}};
    Dwarf_Files* files = nullptr;
    std::size_t file_count = 0;
    if (dwarf_getsrcfiles(cu, &files, &file_count) != 0) return chain;
    // Each inlined subroutine names the function inlined (the location so far is
    // inside it) and where it was called from (the next location out).
    for (Dwarf_Die scope : scopes_of(module, *cu).containing(offset - bias)) {
      if (dwarf_tag(&scope) != DW_TAG_inlined_subroutine) break;  // the subprogram: done
      chain.back().function = die_name(&scope);
      Dwarf_Attribute attr;
      Dwarf_Word call_file = 0, call_line = 0;
      if (dwarf_formudata(dwarf_attr(&scope, DW_AT_call_file, &attr), &call_file) != 0 ||
          dwarf_formudata(dwarf_attr(&scope, DW_AT_call_line, &attr), &call_line) != 0 || call_file >= file_count)
        break;
      const char* caller_file = dwarf_filesrc(files, call_file, nullptr, nullptr);
      chain.push_back(
          {std::string(), caller_file != nullptr ? source_path(cu, caller_file) : "??", static_cast<int>(call_line)});
    }
    return chain;
  }

 private:
  const ScopeIndex& scopes_of(Dwfl_Module* module, Dwarf_Die unit) {
    auto key = std::make_pair(module, dwarf_dieoffset(&unit));
    auto found = scope_indexes_.find(key);
    if (found == scope_indexes_.end()) found = scope_indexes_.emplace(key, ScopeIndex(unit)).first;
    return found->second;
  }

  Dwfl_Module* module_of(const std::string& path) {
    auto found = modules_.find(path);
    if (found != modules_.end()) return found->second;
    Dwfl_Module* module = checked_module(path);
    modules_[path] = module;
    return module;
  }

  // The compilation unit whose code holds `offset`. libdw finds it through
  // .debug_aranges, which GCC writes and clang does not (unless -gdwarf-aranges);
  // libdw 0.188 (Debian 12) has no other way, so without that section the units'
  // own address ranges are read, once per module.
  Dwarf_Die* compilation_unit(Dwfl_Module* module, Dwarf_Addr offset, Dwarf_Addr& bias) {
    if (Dwarf_Die* cu = dwfl_module_addrdie(module, offset, &bias)) return cu;
    auto [ranges, made] = unit_ranges_.try_emplace(module);
    if (made) {
      Dwarf_Addr unit_bias = 0;
      for (Dwarf_Die* cu = nullptr; (cu = dwfl_module_nextcu(module, cu, &unit_bias)) != nullptr;) {
        Dwarf_Addr base = 0, start = 0, end = 0;
        for (ptrdiff_t at = 0; (at = dwarf_ranges(cu, at, &base, &start, &end)) > 0;)
          if (start < end) ranges->second[start + unit_bias] = {end + unit_bias, cu};
      }
    }
    auto next = ranges->second.upper_bound(offset);
    if (next == ranges->second.begin()) return nullptr;
    const auto& [end, cu] = std::prev(next)->second;
    if (offset >= end) return nullptr;
    Dwarf_Addr unit_bias = 0;
    dwfl_module_getdwarf(module, &unit_bias);
    bias = unit_bias;
    return cu;
  }

  // The module at `path` when it is the build the process ran, else null (with a
  // note saying why).
  Dwfl_Module* checked_module(const std::string& path) {
    auto expected = build_ids_.find(path);
    const bool by_build_id = expected != build_ids_.end();
    if (!by_build_id && !same_file_as_mapped(path)) {
      note(path,
           "the file there is not the one the process mapped (compared by device and inode: no build id "
           "was known for it)");
      return nullptr;
    }
    std::unique_ptr<Dwfl, DwflCloser> dwfl(dwfl_begin(&offline_callbacks));
    if (!dwfl) return nullptr;
    // Reported at address 0: the offsets in the record are link-time addresses
    // for position-independent modules and absolute ones for the others.
    Dwfl_Module* module = dwfl_report_elf(dwfl.get(), path.c_str(), path.c_str(), -1, 0, false);
    if (module == nullptr || dwfl_report_end(dwfl.get(), nullptr, nullptr) != 0) {
      if (by_build_id)
        note(path, "the file there cannot be read as ELF, so it is not the build the process ran (build id " +
                       expected->second + ")");
      return nullptr;
    }
    if (by_build_id) {
      Dwarf_Addr bias = 0;
      Elf* elf = dwfl_module_getelf(module, &bias);
      const std::string on_disk = build_id_of(elf);
      if (on_disk != expected->second) {
        note(path, "the file there is another build than the one the process ran (build id " +
                       (on_disk.empty() ? std::string("none") : on_disk) + " on disk, " + expected->second +
                       " in the process)");
        return nullptr;
      }
      // The separate debug file libdw picked (by build id under
      // /usr/lib/debug/.build-id/, or by .gnu_debuglink) must be of that build too.
      Dwarf* dwarf = dwfl_module_getdwarf(module, &bias);
      Elf* debug = dwarf != nullptr ? dwarf_getelf(dwarf) : nullptr;
      if (debug != nullptr && debug != elf) {
        const std::string debug_id = build_id_of(debug);
        if (debug_id != expected->second) {
          const char* debug_path = nullptr;
          dwfl_module_info(module, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, &debug_path);
          note(path, "its debug file " + std::string(debug_path != nullptr ? debug_path : "") +
                         " is another build (build id " + (debug_id.empty() ? std::string("none") : debug_id) +
                         ", the process ran " + expected->second + ")");
          return nullptr;
        }
      }
    }
    sessions_.push_back(std::move(dwfl));
    return module;
  }

  void note(const std::string& path, const std::string& why) {
    notes_.push_back("(no file:line for " + path + ": " + why + ")");
  }

  // Whether the file at `path` now is one the process maps.
  bool same_file_as_mapped(const std::string& path) const {
    if (!checked_) return true;
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 &&
           mapped_.count({static_cast<unsigned long>(st.st_dev), static_cast<unsigned long>(st.st_ino)}) != 0;
  }

  bool checked_ = false;
  std::map<std::string, std::string> build_ids_;  // module path: hex
  std::vector<std::string> notes_;
  std::set<std::pair<unsigned long, unsigned long>> mapped_;
  std::map<std::string, Dwfl_Module*> modules_;
  std::map<std::pair<Dwfl_Module*, Dwarf_Off>, ScopeIndex> scope_indexes_;
  // Per module, without .debug_aranges: where each unit's code starts, its end and the unit.
  std::map<Dwfl_Module*, std::map<Dwarf_Addr, std::pair<Dwarf_Addr, Dwarf_Die*>>> unit_ranges_;
  std::vector<std::unique_ptr<Dwfl, DwflCloser>> sessions_;
};

// "#3 0xpc in name (module+0xoffset)" or "#3 0xpc (module+0xoffset)".
struct FrameLine {
  std::string head;    // "#3 0xpc"
  std::string index;   // "3"
  std::string name;    // " in name", or empty
  std::string module;  // "/path"
  std::string offset;  // hex digits
};

bool all_of_class(const std::string& text, const char* chars) {
  return !text.empty() && text.find_first_not_of(chars) == std::string::npos;
}

// Parses "#3 0xpc in name (module+0xoffset)" or "#3 0xpc (module+0xoffset)". The
// name may hold anything, so the module is the last " (/" part.
std::optional<FrameLine> parse_frame_line(const std::string& line) {
  const char* digits = "0123456789";
  const char* hex = "0123456789abcdef";
  if (line.size() < 8 || line[0] != '#' || line.back() != ')') return std::nullopt;
  const std::size_t space = line.find(' ');
  if (space == std::string::npos || line.compare(space + 1, 2, "0x") != 0) return std::nullopt;
  std::size_t pc_end = line.find_first_not_of(hex, space + 3);
  if (pc_end == std::string::npos || pc_end == space + 3) return std::nullopt;
  const std::size_t open = line.rfind(" (/");
  const std::size_t plus = line.rfind("+0x");
  if (open == std::string::npos || open < pc_end || plus == std::string::npos || plus < open) return std::nullopt;
  FrameLine frame{line.substr(0, pc_end), line.substr(1, space - 1), line.substr(pc_end, open - pc_end),
                  line.substr(open + 2, plus - open - 2), line.substr(plus + 3, line.size() - 1 - plus - 3)};
  if (!all_of_class(frame.index, digits) || !all_of_class(frame.offset, hex)) return std::nullopt;
  if (!frame.name.empty() && (frame.name.rfind(" in ", 0) != 0 || frame.name.size() == 4)) return std::nullopt;
  // " in f() at /src/f.cpp:42": resolved already (by an earlier run on this file).
  const std::size_t at = frame.name.rfind(" at ");
  const std::size_t colon = frame.name.rfind(':');
  if (at != std::string::npos && colon != std::string::npos && colon > at &&
      all_of_class(frame.name.substr(colon + 1), digits))
    return std::nullopt;
  return frame;
}

// "(3 frames of elastic's wrappers ... hidden; ...)": the writer's count of the
// frames it left out of one trace.
// Returns the count and the words after "frames ", or nothing for another line.
std::optional<std::pair<std::size_t, std::string>> parse_hidden_line(const std::string& line) {
  if (line.empty() || line[0] != '(') return std::nullopt;
  const std::size_t space = line.find(' ');
  if (space == std::string::npos || !all_of_class(line.substr(1, space - 1), "0123456789") || space > 10)
    return std::nullopt;
  for (const char* word : {"frames ", "frame "})
    if (line.compare(space + 1, std::strlen(word), word) == 0) {
      std::string rest = line.substr(space + 1 + std::strlen(word));
      if (rest.rfind("of elastic's wrappers ", 0) != 0) return std::nullopt;
      return std::make_pair(static_cast<std::size_t>(std::stoul(line.substr(1, space - 1))), std::move(rest));
    }
  return std::nullopt;
}

std::string hidden_frames_line(std::size_t count, const std::string& rest) {
  return "(" + std::to_string(count) + (count == 1 ? " frame " : " frames ") + rest;
}

std::string symbolize(const std::string& callstack, Resolver& resolver, bool show_all) {
  std::istringstream in(callstack);
  std::string line;
  std::vector<std::string> out;
  // Frame #0 of a fatal signal is the faulting instruction itself; every other pc
  // is a return address, whose call is the byte before.
  const bool first_is_exact = callstack.rfind("Fatal signal ", 0) == 0;
  bool first_section = true;
  // Inlined wrapper frames left out in this trace, and whether its writer's
  // hidden-frames line was seen (it ends the trace).
  std::size_t folded = 0;
  bool counted = false;
  const auto end_trace = [&] {
    if (folded > 0 && !counted)
      out.push_back(hidden_frames_line(
          folded, "of elastic's wrappers and the C runtime's start-up hidden; ELASTIC_TRACEBACK_ALL=1 shows them)"));
    folded = 0;
    counted = false;
  };
  while (std::getline(in, line)) {
    if (line.rfind("Caused by: ", 0) == 0) {
      end_trace();
      first_section = false;
    }
    if (auto hidden_count = parse_hidden_line(line)) {
      out.push_back(folded > 0 ? hidden_frames_line(hidden_count->first + folded, hidden_count->second) : line);
      folded = 0;
      counted = true;
      continue;
    }
    const std::optional<FrameLine> frame = parse_frame_line(line);
    if (!frame || frame->offset.size() > 16) {
      out.push_back(line);
      continue;
    }
    std::uint64_t offset = std::stoull(frame->offset, nullptr, 16);
    const bool exact = first_is_exact && first_section && frame->index == "0";
    std::vector<Location> chain = resolver.resolve(frame->module, exact || offset == 0 ? offset : offset - 1);
    if (chain.empty()) {
      out.push_back(line);
      continue;
    }
    // Outermost inward: the wrappers inlined into the frame, then the std::invoke
    // steps they call, are plumbing; the first other function is the user's.
    std::vector<bool> hidden(chain.size(), false);
    if (!show_all) {
      bool in_wrapper = false;
      for (std::size_t i = chain.size() - 1; i-- > 0;) {
        if (is_wrapper(chain[i]) || (in_wrapper && is_invoke_step(chain[i]))) {
          hidden[i] = in_wrapper = true;
          ++folded;
        } else {
          in_wrapper = false;
        }
      }
    }
    for (std::size_t i = 0; i + 1 < chain.size(); ++i)
      if (!hidden[i])
        out.push_back(frame->head + " in " + chain[i].function + " at " + chain[i].file + ":" +
                      std::to_string(chain[i].line) + " (inlined)");
    const Location& outer = chain.back();
    std::string last = frame->head + frame->name;
    last += " at " + outer.file + ":" + std::to_string(outer.line) + " (" + frame->module + "+0x" + frame->offset + ")";
    out.push_back(std::move(last));
  }
  end_trace();
  for (const std::string& note : resolver.notes())
    if (callstack.find(note) == std::string::npos) out.push_back(note);  // not twice when run again
  std::string text;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (i > 0) text += '\n';
    text += out[i];
  }
  return text;
}

int usage() {
  std::fprintf(stderr, "usage: elastic-symbolize [--pid PID] [--build-id HEX:MODULE]... ERROR_FILE\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Started with the stop signals blocked (see symbolizer_stop_signals): ignoring
  // them discards any that came meanwhile, so a stop sent to the worker's process
  // group leaves the record's resolution to finish within the worker's bound.
  sigset_t stops;
  elastic::errors::detail::symbolizer_stop_signals(&stops);
  for (int signo : {SIGTERM, SIGINT, SIGHUP}) std::signal(signo, SIG_IGN);
  ::sigprocmask(SIG_UNBLOCK, &stops, nullptr);
  std::optional<long> pid;
  std::map<std::string, std::string> build_ids;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--pid" && i + 1 < argc) {
      char* end = nullptr;
      pid = std::strtol(argv[++i], &end, 10);
      if (end == nullptr || *end != '\0' || *pid <= 0) return usage();
    } else if (arg == "--build-id" && i + 1 < argc) {
      const std::string value = argv[++i];
      const std::size_t colon = value.find(':');
      if (colon == std::string::npos || colon == 0 || colon % 2 != 0 ||
          value.find_first_not_of("0123456789abcdef") != colon || colon + 1 >= value.size() || value[colon + 1] != '/')
        return usage();
      build_ids[value.substr(colon + 1)] = value.substr(0, colon);
    } else if (path.empty() && !arg.empty() && arg[0] != '-') {
      path = arg;
    } else {
      return usage();
    }
  }
  if (path.empty()) return usage();
  namespace detail = elastic::errors::detail;
  auto read = detail::read_regular_file(path, 64 * 1024 * 1024);
  if (read.status != detail::ReadResult::Status::ok) {
    std::fprintf(stderr, "elastic-symbolize: cannot read %s: %s\n", path.c_str(), read.reason.c_str());
    return 1;
  }
  nlohmann::ordered_json data = nlohmann::ordered_json::parse(read.data, nullptr, false);
  if (data.is_discarded() || !data.is_object()) {
    std::fprintf(stderr, "elastic-symbolize: %s is not an error file\n", path.c_str());
    return 1;
  }
  auto message = data.find("message");
  if (message == data.end() || !message->is_object()) return 0;
  auto extra = message->find("extraInfo");
  if (extra == message->end() || !extra->is_object()) return 0;
  auto stack = extra->find("py_callstack");
  if (stack == extra->end() || !stack->is_string()) return 0;
  std::string debug_directories = debuginfo_path_from_environment();
  debuginfo_path = debug_directories.data();
  Resolver resolver(pid, std::move(build_ids));
  const std::string before = stack->get<std::string>();
  const std::string after = symbolize(before, resolver, traceback_all_requested());
  if (after == before) return 0;
  *stack = after;
  const std::string problem = detail::write_file_atomically(path, detail::python_json_dumps(data));
  if (!problem.empty()) {
    std::fprintf(stderr, "elastic-symbolize: cannot write %s: %s\n", path.c_str(), problem.c_str());
    return 1;
  }
  return 0;
}
