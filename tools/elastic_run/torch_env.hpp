// Which PyTorch a Python worker will import, found without starting Python, for the one
// environment variable whose name changed: NCCL's async error handling.
//
// torch 1.x to 2.1 read NCCL_ASYNC_ERROR_HANDLING; 2.2 renamed it TORCH_NCCL_ASYNC_ERROR_HANDLING
// and warns ("Environment variable NCCL_ASYNC_ERROR_HANDLING is deprecated") whenever the old
// name is set. torchrun 1.13 gives workers the old name, newest torchrun the new one.
#pragma once

#include <glob.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace elastic_run {

namespace detail {

// `program` as execvp would find it ("python3" on PATH); empty if nowhere.
inline std::string find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    std::size_t colon = dirs.find(':', start);
    std::string dir = dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return "";
}

inline std::vector<std::string> glob_paths(const std::string& pattern) {
  std::vector<std::string> found;
  glob_t matches{};
  if (::glob(pattern.c_str(), 0, nullptr, &matches) == 0)
    for (std::size_t i = 0; i < matches.gl_pathc; ++i) found.emplace_back(matches.gl_pathv[i]);
  ::globfree(&matches);
  return found;
}

}  // namespace detail

// (major, minor) of the torch that `interpreter` would import, from torch/version.py in the
// places its sys.path usually holds: the user site, then under its prefix (the parent of its
// bin/, which is a venv's or conda env's own) local/lib/python3.*/dist-packages,
// lib/python3.*/site-packages, lib/python3/dist-packages (Debian). nullopt when not found.
inline std::optional<std::pair<int, int>> torch_version_of(const std::string& interpreter) {
  const std::string program = detail::find_program(interpreter);
  if (program.empty()) return std::nullopt;
  const auto slash = program.rfind('/');
  const std::string bin = slash == 0 ? "/" : program.substr(0, slash);
  const std::string prefix = bin.substr(0, bin.rfind('/'));
  std::vector<std::string> patterns;
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    patterns.push_back(std::string(home) + "/.local/lib/python3.*/site-packages/torch/version.py");
  for (const char* tail : {"/local/lib/python3.*/dist-packages", "/lib/python3.*/site-packages",
                           "/lib/python3/dist-packages", "/lib/python3.*/dist-packages"})
    patterns.push_back(prefix + tail + "/torch/version.py");
  static const std::regex version_line(R"(__version__\s*=\s*['"](\d+)\.(\d+))");
  for (const auto& pattern : patterns) {
    for (const auto& path : detail::glob_paths(pattern)) {
      std::ifstream in(path);
      for (std::string line; std::getline(in, line);) {
        std::smatch m;
        if (std::regex_search(line, m, version_line)) return std::make_pair(std::stoi(m[1]), std::stoi(m[2]));
      }
    }
  }
  return std::nullopt;
}

// Whether workers run by `interpreter` need NCCL_ASYNC_ERROR_HANDLING (torch older than 2.2).
inline bool needs_legacy_nccl_name(const std::string& interpreter) {
  auto version = torch_version_of(interpreter);
  return version && *version < std::make_pair(2, 2);
}

}  // namespace elastic_run
