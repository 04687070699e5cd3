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
// are. Exit status 0 when the file was rewritten or had nothing to add, 1 on a
// problem (the file is then untouched).
#include <cxxabi.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <elfutils/libdwfl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elastic/errors/detail/file_io.hpp>
#include <elastic/errors/detail/python_json.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct DwflCloser {
  void operator()(Dwfl* dwfl) const { dwfl_end(dwfl); }
};

char* no_debuginfo_path = nullptr;
const Dwfl_Callbacks offline_callbacks = {
    dwfl_build_id_find_elf,        // find_elf
    dwfl_standard_find_debuginfo,  // .gnu_debuglink, /usr/lib/debug/.build-id
    dwfl_offline_section_address,  // section_address
    &no_debuginfo_path,
};

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
    Dwarf_Die* scopes = nullptr;
    const int count = dwarf_getscopes(cu, offset - bias, &scopes);
    Dwarf_Files* files = nullptr;
    std::size_t file_count = 0;
    if (count > 0 && dwarf_getsrcfiles(cu, &files, &file_count) == 0) {
      // Each inlined subroutine names the function inlined (the location so far
      // is inside it) and where it was called from (the next location out).
      for (int i = 0; i < count; ++i) {
        const int tag = dwarf_tag(&scopes[i]);
        if (tag != DW_TAG_inlined_subroutine) {
          if (tag == DW_TAG_subprogram) break;
          continue;
        }
        chain.back().function = die_name(&scopes[i]);
        Dwarf_Attribute attr;
        Dwarf_Word call_file = 0, call_line = 0;
        if (dwarf_formudata(dwarf_attr(&scopes[i], DW_AT_call_file, &attr), &call_file) != 0 ||
            dwarf_formudata(dwarf_attr(&scopes[i], DW_AT_call_line, &attr), &call_line) != 0 || call_file >= file_count)
          break;
        const char* caller_file = dwarf_filesrc(files, call_file, nullptr, nullptr);
        chain.push_back(
            {std::string(), caller_file != nullptr ? source_path(cu, caller_file) : "??", static_cast<int>(call_line)});
      }
    }
    std::free(scopes);
    return chain;
  }

 private:
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
  // Per module, without .debug_aranges: where each unit's code starts, its end and the unit.
  std::map<Dwfl_Module*, std::map<Dwarf_Addr, std::pair<Dwarf_Addr, Dwarf_Die*>>> unit_ranges_;
  std::vector<std::unique_ptr<Dwfl, DwflCloser>> sessions_;
};

// "#3 0xpc in name (module+0xoffset)" or "#3 0xpc (module+0xoffset)".
const std::regex frame_line(R"(^(#(\d+) (0x[0-9a-f]+))( in (.*))? \((/.*)\+0x([0-9a-f]+)\)$)");

std::string symbolize(const std::string& callstack, Resolver& resolver) {
  std::istringstream in(callstack);
  std::string line, out;
  // Frame #0 of a fatal signal is the faulting instruction itself; every other pc
  // is a return address, whose call is the byte before.
  const bool first_is_exact = callstack.rfind("Fatal signal ", 0) == 0;
  bool first_section = true;
  bool first_line = true;
  while (std::getline(in, line)) {
    if (!first_line) out += '\n';
    first_line = false;
    if (line.rfind("Caused by: ", 0) == 0) first_section = false;
    std::smatch match;
    if (!std::regex_match(line, match, frame_line)) {
      out += line;
      continue;
    }
    std::uint64_t offset = std::stoull(match[7].str(), nullptr, 16);
    const bool exact = first_is_exact && first_section && match[2].str() == "0";
    const std::vector<Location> chain = resolver.resolve(match[6].str(), exact || offset == 0 ? offset : offset - 1);
    if (chain.empty()) {
      out += line;
      continue;
    }
    for (std::size_t i = 0; i + 1 < chain.size(); ++i)
      out += match[1].str() + " in " + chain[i].function + " at " + chain[i].file + ":" +
             std::to_string(chain[i].line) + " (inlined)\n";
    const Location& outer = chain.back();
    out += match[1].str();
    if (match[4].matched) out += match[4].str();
    out +=
        " at " + outer.file + ":" + std::to_string(outer.line) + " (" + match[6].str() + "+0x" + match[7].str() + ")";
  }
  for (const std::string& note : resolver.notes()) out += "\n" + note;
  return out;
}

int usage() {
  std::fprintf(stderr, "usage: elastic-symbolize [--pid PID] [--build-id HEX:MODULE]... ERROR_FILE\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
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
  Resolver resolver(pid, std::move(build_ids));
  const std::string before = stack->get<std::string>();
  const std::string after = symbolize(before, resolver);
  if (after == before) return 0;
  *stack = after;
  const std::string problem = detail::write_file_atomically(path, detail::python_json_dumps(data));
  if (!problem.empty()) {
    std::fprintf(stderr, "elastic-symbolize: cannot write %s: %s\n", path.c_str(), problem.c_str());
    return 1;
  }
  return 0;
}
