// elastic-symbolize: adds source file:line to the frames of an error file.
//
//   elastic-symbolize [--pid PID] ERROR_FILE
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
// With --pid, a module is trusted only when the file at its path is the one the
// process mapped (same device and inode, not deleted): a binary replaced on disk
// after start keeps its function+offset frames. Frames of modules without line
// information are left as they are. Exit status 0 when the file was rewritten or
// had nothing to add, 1 on a problem (the file is then untouched).
#include <cxxabi.h>
#include <dwarf.h>
#include <elfutils/libdw.h>
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
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
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

// Devices and inodes of the files process `pid` maps, by path ("(deleted)" ones
// are left out: their path names another file now, or none).
std::map<std::string, std::pair<unsigned long, unsigned long>> mapped_files(long pid) {
  std::map<std::string, std::pair<unsigned long, unsigned long>> files;
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
    files[path] = {static_cast<unsigned long>(makedev(major, minor)), inode};
  }
  return files;
}

class Resolver {
 public:
  explicit Resolver(std::optional<long> pid) {
    if (pid) mapped_ = mapped_files(*pid);
    checked_ = pid.has_value();
  }

  // Innermost first: the inlined functions at `offset`, then the function itself.
  std::vector<Location> resolve(const std::string& path, std::uint64_t offset) {
    Dwfl_Module* module = module_of(path);
    if (module == nullptr) return {};
    Dwarf_Addr bias = 0;
    Dwarf_Die* cu = dwfl_module_addrdie(module, offset, &bias);
    Dwfl_Line* line = dwfl_module_getsrc(module, offset);
    if (cu == nullptr || line == nullptr) return {};
    int lineno = 0;
    const char* file = dwfl_lineinfo(line, nullptr, &lineno, nullptr, nullptr, nullptr);
    if (file == nullptr || lineno <= 0) return {};

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
    Dwfl_Module* module = nullptr;
    if (trusted(path)) {
      std::unique_ptr<Dwfl, DwflCloser> dwfl(dwfl_begin(&offline_callbacks));
      // Reported at address 0: the offsets in the record are link-time addresses
      // for position-independent modules and absolute ones for the others.
      if (dwfl) module = dwfl_report_elf(dwfl.get(), path.c_str(), path.c_str(), -1, 0, false);
      if (module != nullptr && dwfl_report_end(dwfl.get(), nullptr, nullptr) == 0)
        sessions_.push_back(std::move(dwfl));
      else
        module = nullptr;
    }
    modules_[path] = module;
    return module;
  }

  bool trusted(const std::string& path) const {
    if (!checked_) return true;
    auto mapped = mapped_.find(path);
    struct stat st {};
    return mapped != mapped_.end() && ::stat(path.c_str(), &st) == 0 &&
           mapped->second ==
               std::make_pair(static_cast<unsigned long>(st.st_dev), static_cast<unsigned long>(st.st_ino));
  }

  bool checked_ = false;
  std::map<std::string, std::pair<unsigned long, unsigned long>> mapped_;
  std::map<std::string, Dwfl_Module*> modules_;
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
  return out;
}

int usage() {
  std::fprintf(stderr, "usage: elastic-symbolize [--pid PID] ERROR_FILE\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<long> pid;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--pid" && i + 1 < argc) {
      char* end = nullptr;
      pid = std::strtol(argv[++i], &end, 10);
      if (end == nullptr || *end != '\0' || *pid <= 0) return usage();
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
  Resolver resolver(pid);
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
