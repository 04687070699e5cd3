// ErrorHandler: writes this process's error file (TORCHELASTIC_ERROR_FILE) and
// copies a failed child's file up to it. Subclass it and install the subclass with
// set_error_handler() to change where or how failures are recorded.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <elastic/errors/crash/install.hpp>
#include <elastic/errors/detail/exception_info.hpp>
#include <elastic/errors/detail/file_io.hpp>
#include <elastic/errors/detail/python_json.hpp>
#include <elastic/errors/process_failure.hpp>
#include <elastic/errors/throw_trace.hpp>
#include <elastic/log.hpp>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace elastic {

inline constexpr const char* error_file_env = "TORCHELASTIC_ERROR_FILE";

class ErrorHandler {
 public:
  virtual ~ErrorHandler() = default;

  // The most of a replaced error file that dump_error_file() echoes to the log.
  static constexpr std::size_t max_echoed_bytes = 64 * 1024;

  // Called by record() before the wrapped function runs: points crash reports at
  // this process's error file and installs the crash handlers (fatal signals,
  // std::terminate) with an alternate signal stack for the calling thread. Cheap
  // after the first call. Errors here are warned about, never fatal.
  virtual void initialize() {
    set_crash_report_path(error_file_path());
    install_crash_handlers(crash_capture_options());
  }

  // Which signals and limits initialize() uses; override to change them.
  virtual CrashCaptureOptions crash_capture_options() const { return {}; }

  // Writes the nested-format record of an exception (and its nested chain).
  virtual void record_exception(std::exception_ptr error) {
    write_exception_record(errors::detail::describe_exception(error));
  }
  virtual void record_exception(const std::exception& error) {
    write_exception_record(errors::detail::describe_exception(error));
  }

  // Called when the wrapped function returned. Writes nothing; says so at debug
  // level when an entry point name is set.
  virtual void record_success() {
    if (!entrypoint_fn_name_.empty()) log::debug("{} finished successfully", entrypoint_fn_name_);
  }

  virtual void set_entrypoint_fn_name(std::string name) { entrypoint_fn_name_ = std::move(name); }
  const std::string& entrypoint_fn_name() const noexcept { return entrypoint_fn_name_; }

  // Sets `error_code` in the root cause's data read from `rootcause_error_file`, as
  // dump_error_file() does with a non-zero code; override to change how. Returns
  // whether `rootcause_error` changed (false: the copy stays byte-identical).
  virtual bool override_error_code_in_rootcause_data(const std::string& rootcause_error_file,
                                                     nlohmann::ordered_json& rootcause_error, int error_code) {
    if (!rootcause_error.is_object() || !rootcause_error.contains("message")) {
      log::warning("child error file ({}) does not have field `message`; cannot override error code: {}",
                   rootcause_error_file, error_code);
      return false;
    }
    if (!rootcause_error["message"].is_object()) {
      log::warning("child error file ({}) has a new message format; skipping error code override",
                   rootcause_error_file);
      return false;
    }
    rootcause_error["message"]["errorCode"] = error_code;
    return true;
  }

  // Copies a child's error file to this process's error file. With a non-zero
  // error_code and a nested message, message.errorCode is set; with 0 the copy
  // is byte-identical. Problems are logged, never thrown: this runs while a
  // failure is already being reported.
  virtual void dump_error_file(const std::string& child_file, int error_code = 0) {
    auto read = errors::detail::read_regular_file(child_file, ErrorFileLimits::max_bytes);
    if (read.status != errors::detail::ReadResult::Status::ok) {
      log::warning("cannot copy child error file {}: {}", child_file, read.reason);
      return;
    }
    if (std::string problem = errors::detail::json_limits_problem(read.data); !problem.empty()) {
      log::warning("cannot copy child error file {}: {}", child_file, problem);
      return;
    }
    nlohmann::ordered_json data;
    try {
      data = nlohmann::ordered_json::parse(read.data);
    } catch (const nlohmann::json::exception& e) {
      log::warning("cannot copy child error file {}: not valid JSON ({})", child_file,
                   errors::detail::printable_reason(e.what()));
      return;
    }
    std::string contents = std::move(read.data);
    if (error_code != 0 && override_error_code_in_rootcause_data(child_file, data, error_code))
      contents = errors::detail::python_json_dumps(data);
    if (log::enabled(log::Level::debug))  // the dump is costly: skip it when unseen
      log::debug("child error file ({}) contents:\n{}", child_file, data.dump(2));

    auto destination = error_file_path();
    if (!destination) {
      log::info("no error file defined for parent, to copy child error file ({})", child_file);
      return;
    }
    errors::detail::ExceptionRecordScope scope;
    if (!scope.may_write()) return;
    warn_if_overwriting(*destination);
    if (write_error_file(*destination, contents)) {
      scope.written();
      log::info("dumped error file to parent's {}", *destination);
    }
  }

  // Writes `data` (an error file's contents, e.g. a failure another node of the job
  // reported) as this process's error file; error_code as in dump_error_file().
  // Problems are logged, never thrown.
  virtual void dump_error_data(const nlohmann::json& data, int error_code = 0) {
    auto destination = error_file_path();
    if (!destination) return;
    nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(
        data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), nullptr, /*allow_exceptions=*/false);
    if (!ordered.is_object() || !ordered.contains("message")) {
      log::warning("the root cause's error data has no field `message`; not written to {}", *destination);
      return;
    }
    if (error_code != 0 && ordered["message"].is_object()) ordered["message"]["errorCode"] = error_code;
    errors::detail::ExceptionRecordScope scope;
    if (!scope.may_write()) return;
    warn_if_overwriting(*destination);
    if (write_error_file(*destination, errors::detail::python_json_dumps(ordered))) {
      scope.written();
      log::info("dumped the root cause's error data to parent's {}", *destination);
    }
  }

  // Lets a handler add context (e.g. a device fault) to the rendered root cause of
  // a failure by signal when a summary is formatted. The base returns it unchanged.
  virtual std::string maybe_enrich_signal_failure_message(std::string message, const std::string& error_file) {
    (void)error_file;
    return message;
  }

  // TORCHELASTIC_ERROR_FILE, or nothing when unset or empty.
  virtual std::optional<std::string> error_file_path() const {
    const char* path = std::getenv(error_file_env);
    if (path == nullptr || *path == '\0') return std::nullopt;
    return std::string(path);
  }

 protected:
  // The text put in extraInfo.py_callstack: each level's "<type>: <what()>" line,
  // outermost first, followed by the frames of its throw site when traced. The first line is
  // what a summary shows next to "traceback :".
  virtual std::string format_callstack(const std::vector<errors::detail::ExceptionLevel>& levels) const {
    return errors::detail::format_exception_callstack(levels);
  }

  void write_exception_record(const std::vector<errors::detail::ExceptionLevel>& levels) {
    const std::string headline = levels.empty() ? std::string("<no exception>") : levels.front().headline();
    if (!entrypoint_fn_name_.empty()) log::debug("recording the exception raised by {}", entrypoint_fn_name_);
    nlohmann::ordered_json extra;
    extra["py_callstack"] = format_callstack(levels);
    const std::int64_t now_ns = errors::detail::now_nanoseconds();
    extra["timestamp"] = std::to_string(now_ns / 1000000000);
    extra[errors::detail::time_ns_key] = std::to_string(now_ns);
    nlohmann::ordered_json data;
    data["message"]["message"] = headline;
    data["message"]["extraInfo"] = std::move(extra);
    const std::string contents = errors::detail::python_json_dumps(data);
    if (auto path = error_file_path()) {
      // A crash on another thread meanwhile wins: its record is what ends the process.
      errors::detail::ExceptionRecordScope scope;
      if (scope.may_write() && write_error_file(*path, contents)) {
        // file:line, by a helper process; one stopped at its time limit left the
        // record as it was, which then says so.
        if (errors::detail::symbolize_record(path->c_str()) == errors::detail::SymbolizerOutcome::timed_out) {
          auto& callstack = data["message"]["extraInfo"]["py_callstack"];
          callstack = callstack.get<std::string>() + "\n" + errors::detail::symbolizer_timeout_note();
          write_error_file(*path, errors::detail::python_json_dumps(data));
        }
        scope.written();
      }
    } else {
      log::info("{} raised {} ({} not set, no error file written)", entrypoint_or_default(), headline, error_file_env);
    }
  }

  // Atomic write; a failure is a warning. Returns whether the file was written.
  virtual bool write_error_file(const std::string& path, const std::string& contents) {
    std::string problem = errors::detail::write_file_atomically(path, contents);
    if (problem.empty()) return true;
    log::warning("Unable to write error to file {}: {}", path, problem);
    return false;
  }

  std::string entrypoint_or_default() const {
    return entrypoint_fn_name_.empty() ? std::string("the recorded function") : entrypoint_fn_name_;
  }

 private:
  // A file already at the destination is replaced; when it is an error file its
  // contents are logged first, so a record is not lost silently (the same error
  // file may be shared by mistake). Nothing else is echoed: a symlink is neither
  // followed nor read (it is replaced), and bytes that are not a valid error file,
  // or more than max_echoed_bytes of them, are not shown, so a planted path cannot
  // make the log disclose another file.
  static void warn_if_overwriting(const std::string& path) {
    namespace detail = errors::detail;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return;
    const std::string prefix = fmt::format("{} already exists and will be overwritten.", path);
    if (S_ISLNK(st.st_mode)) {
      log::warning("{} It is a symbolic link: replaced, not followed; its target is not read.", prefix);
      return;
    }
    if (!S_ISREG(st.st_mode)) return;
    if (static_cast<std::uint64_t>(st.st_size) > max_echoed_bytes) {
      log::warning("{} Original contents not shown: {} bytes, over the {} shown.", prefix, st.st_size,
                   max_echoed_bytes);
      return;
    }
    auto existing = detail::read_regular_file(path, max_echoed_bytes, /*follow_symlinks=*/false);
    if (existing.status != detail::ReadResult::Status::ok) {
      if (existing.status == detail::ReadResult::Status::error)
        log::warning("{} Original contents not shown: {}.", prefix, existing.reason);
      return;
    }
    if (!detail::json_limits_problem(existing.data).empty()) {
      log::warning("{} Original contents not shown: not an error file.", prefix);
      return;
    }
    const auto data = nlohmann::ordered_json::parse(existing.data, nullptr, /*allow_exceptions=*/false);
    if (!data.is_object() || !data.contains("message")) {
      log::warning("{} Original contents not shown: not an error file.", prefix);
      return;
    }
    log::warning("{} Original contents:\n{}", prefix, data.dump(2, ' ', /*ensure_ascii=*/true));
  }

  std::string entrypoint_fn_name_;
};

}  // namespace elastic
