// Where the logs and error files of a group of workers go. A LogsSpecs turns the
// environments of one attempt's workers into a LogsDest; DefaultLogsSpecs gives
// TorchElastic's layout:
//   <log_dir>/<run_id>_<random>/attempt_<restart_count>/<local_rank>/{stdout.log,stderr.log,error.json}
// Users can plug in their own by deriving from LogsSpecs.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <elastic/log.hpp>
#include <elastic/multiprocessing/std.hpp>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>

namespace elastic::multiprocessing {

using Env = std::map<std::string, std::string>;

struct LogsDest {
  // Per local rank; an empty path means "not written to a file".
  std::map<int, std::string> stdouts;
  std::map<int, std::string> stderrs;
  // Per local rank; non-empty when that stream is also shown on the console (tee).
  std::map<int, std::string> tee_stdouts;
  std::map<int, std::string> tee_stderrs;
  std::map<int, std::string> error_files;
  // Where teed lines that match --duplicate-std{out,err}-filters are also written, one
  // file for all ranks (made only when there are filters).
  std::string filtered_stdout;
  std::string filtered_stderr;
};

class LogsSpecs {
 public:
  LogsSpecs(std::optional<std::string> log_dir = std::nullopt, StdSpec redirects = Std::NONE, StdSpec tee = Std::NONE,
            std::optional<std::set<int>> local_ranks_filter = std::nullopt)
      : log_dir_(std::move(log_dir)),
        redirects_(std::move(redirects)),
        tee_(std::move(tee)),
        local_ranks_filter_(std::move(local_ranks_filter)) {}
  virtual ~LogsSpecs() = default;

  // Called once per attempt with each local rank's environment (it holds
  // TORCHELASTIC_RUN_ID and TORCHELASTIC_RESTART_COUNT). Creates what it needs.
  virtual LogsDest reify(const std::map<int, Env>& envs) = 0;
  // The base directory every log of this job is under.
  virtual std::string root_log_dir() = 0;

  const StdSpec& redirects() const { return redirects_; }
  const StdSpec& tee() const { return tee_; }
  const std::optional<std::set<int>>& local_ranks_filter() const { return local_ranks_filter_; }

 protected:
  std::optional<std::string> log_dir_;
  StdSpec redirects_;
  StdSpec tee_;
  std::optional<std::set<int>> local_ranks_filter_;
};

namespace detail {

// mkdir with mode 0700: logs can hold secrets, and error files are trusted input.
inline void make_private_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
    throw std::system_error(errno, std::generic_category(), "cannot create log directory " + path);
}

inline std::string make_temp_dir(const std::string& parent, const std::string& prefix) {
  std::string pattern = parent + "/" + prefix + "XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr)
    throw std::system_error(errno, std::generic_category(), "cannot create a directory in " + parent);
  return pattern;  // mkdtemp makes it 0700
}

inline std::string env_or(const Env& env, const std::string& name, const std::string& fallback) {
  auto found = env.find(name);
  return found == env.end() ? fallback : found->second;
}

}  // namespace detail

class DefaultLogsSpecs : public LogsSpecs {
 public:
  using LogsSpecs::LogsSpecs;

  ~DefaultLogsSpecs() override {
    if (!discard_dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(discard_dir_, ignored);
    }
  }

  // --log-dir=/dev/null: every log file is /dev/null, no directory is made under it.
  bool discards_logs() const { return log_dir_ && *log_dir_ == "/dev/null"; }

  std::string root_log_dir() override {
    if (!root_ && discards_logs()) root_ = *log_dir_;
    if (!root_) {
      if (log_dir_ && !log_dir_->empty()) {
        std::error_code ec;
        std::filesystem::create_directories(*log_dir_, ec);
        if (ec) throw std::system_error(ec, "cannot create log directory " + *log_dir_);
        root_ = *log_dir_;
      } else {
        root_ = detail::make_temp_dir(std::filesystem::temp_directory_path().string(), "torchelastic_");
        log::info("log directory not set; logs go to {}", *root_);
      }
    }
    return *root_;
  }

  // The per-job directory, made on the first attempt.
  const std::optional<std::string>& run_log_dir() const { return run_dir_; }

  LogsDest reify(const std::map<int, Env>& envs) override {
    LogsDest dest;
    if (envs.empty()) return dest;
    const Env& any = envs.begin()->second;
    if (discards_logs()) return discarded(envs);
    if (!run_dir_)
      run_dir_ = detail::make_temp_dir(root_log_dir(), detail::env_or(any, "TORCHELASTIC_RUN_ID", "none") + "_");
    const std::string attempt = *run_dir_ + "/attempt_" + detail::env_or(any, "TORCHELASTIC_RESTART_COUNT", "0");
    // A restart reuses the attempt number only if told to; start it clean either way.
    std::error_code ec;
    std::filesystem::remove_all(attempt, ec);
    detail::make_private_dir(attempt);

    dest.filtered_stdout = attempt + "/filtered_stdout.log";
    dest.filtered_stderr = attempt + "/filtered_stderr.log";
    const int nprocs = static_cast<int>(envs.rbegin()->first) + 1;
    auto redirects = to_map(redirects_, nprocs);
    auto tees = to_map(tee_, nprocs);
    for (const auto& [local_rank, env] : envs) {
      (void)env;
      const std::string dir = attempt + "/" + std::to_string(local_rank);
      detail::make_private_dir(dir);
      const Std redirect = redirects[local_rank];
      const Std tee = tees[local_rank];
      const bool shown = !local_ranks_filter_ || local_ranks_filter_->count(local_rank) > 0;
      // A teed stream is written to its file too; the console gets it only when shown.
      const bool out_file = has_out(redirect) || has_out(tee);
      const bool err_file = has_err(redirect) || has_err(tee);
      // A rank the filter leaves out shows nothing: a stream it neither tees nor
      // redirects goes to /dev/null instead of the console, as in torchrun.
      const std::string console = shown ? "" : "/dev/null";
      dest.stdouts[local_rank] = out_file ? dir + "/stdout.log" : console;
      dest.stderrs[local_rank] = err_file ? dir + "/stderr.log" : console;
      dest.tee_stdouts[local_rank] = has_out(tee) && shown ? dest.stdouts[local_rank] : "";
      dest.tee_stderrs[local_rank] = has_err(tee) && shown ? dest.stderrs[local_rank] : "";
      dest.error_files[local_rank] = dir + "/error.json";
    }
    return dest;
  }

 private:
  // Logs discarded: redirected and teed streams are written to /dev/null (the console
  // still shows teed lines), filtered lines too. The error files, which the failure
  // summary is made of, live in a private temporary directory removed with this object.
  LogsDest discarded(const std::map<int, Env>& envs) {
    LogsDest dest;
    if (discard_dir_.empty())
      discard_dir_ = detail::make_temp_dir(std::filesystem::temp_directory_path().string(), "torchelastic_errors_");
    const std::string attempt =
        discard_dir_ + "/attempt_" + detail::env_or(envs.begin()->second, "TORCHELASTIC_RESTART_COUNT", "0");
    std::error_code ec;
    std::filesystem::remove_all(attempt, ec);
    detail::make_private_dir(attempt);
    dest.filtered_stdout = dest.filtered_stderr = "/dev/null";
    const int nprocs = static_cast<int>(envs.rbegin()->first) + 1;
    auto redirects = to_map(redirects_, nprocs);
    auto tees = to_map(tee_, nprocs);
    for (const auto& [local_rank, env] : envs) {
      (void)env;
      const Std redirect = redirects[local_rank];
      const Std tee = tees[local_rank];
      const bool shown = !local_ranks_filter_ || local_ranks_filter_->count(local_rank) > 0;
      const std::string console = shown ? "" : "/dev/null";
      dest.stdouts[local_rank] = has_out(redirect) || has_out(tee) ? "/dev/null" : console;
      dest.stderrs[local_rank] = has_err(redirect) || has_err(tee) ? "/dev/null" : console;
      dest.tee_stdouts[local_rank] = has_out(tee) && shown ? dest.stdouts[local_rank] : "";
      dest.tee_stderrs[local_rank] = has_err(tee) && shown ? dest.stderrs[local_rank] : "";
      dest.error_files[local_rank] = attempt + "/error_" + std::to_string(local_rank) + ".json";
    }
    return dest;
  }

  std::optional<std::string> root_;
  std::optional<std::string> run_dir_;
  std::string discard_dir_;
};

}  // namespace elastic::multiprocessing
