// record(): runs a function so that an exception escaping it is written to the
// error file before it propagates, as TorchElastic's @record does.
#pragma once

#include <elastic/errors/child_failed_error.hpp>
#include <elastic/errors/handlers.hpp>
#include <elastic/log.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

namespace elastic {

// Thrown by user code to leave through record() with an exit code, like Python's
// SystemExit: code 0 returns normally, any other code propagates unrecorded.
// Deliberately not a std::exception, so `catch (const std::exception&)` in user
// code does not swallow it.
struct SystemExit {
  int code = 0;
};

namespace errors::detail {

// Runs a handler step without letting its own failure replace the user's error.
template <typename Step>
void guarded(const char* what, Step&& step) noexcept {
  try {
    step();
  } catch (const std::exception& e) {
    log::warning("error handler failed in {}: {}", what, e.what());
  } catch (...) {
    log::warning("error handler failed in {}", what);
  }
}

template <typename F, typename... Args>
std::invoke_result_t<F&, Args...> invoke_recorded(F& fn, ErrorHandler& handler, Args&&... args) {
  using Result = std::invoke_result_t<F&, Args...>;
  guarded("initialize", [&] { handler.initialize(); });
  try {
    if constexpr (std::is_void_v<Result>) {
      std::invoke(fn, std::forward<Args>(args)...);
      guarded("record_success", [&] { handler.record_success(); });
    } else {
      Result result = std::invoke(fn, std::forward<Args>(args)...);
      guarded("record_success", [&] { handler.record_success(); });
      return result;
    }
  } catch (const SystemExit& exit) {
    if (exit.code != 0) throw;
    if constexpr (std::is_void_v<Result>) {
      return;
    } else if constexpr (std::is_default_constructible_v<Result>) {
      return Result{};
    } else {
      throw;  // nothing to return in its place
    }
  } catch (const ChildFailedError& error) {
    auto [rank, failure] = error.get_first_failure();
    if (!failure.host.empty() && failure.error_file != not_available) {
      // Reported by another node: its file is there, its contents came with the report.
      const nlohmann::json data = failure.error_file_data;
      const int child_exitcode = failure.exitcode;
      guarded("dump_error_data", [&] { handler.dump_error_data(data, child_exitcode); });
    } else if (failure.error_file != not_available) {
      // Copied out of the structured binding: lambdas may capture those only from C++20.
      const std::string child_file = failure.error_file;
      const int child_exitcode = failure.exitcode;
      guarded("dump_error_file", [&] { handler.dump_error_file(child_file, child_exitcode); });
    } else {
      log::info(
          "local_rank {} FAILED with no error file. Wrap the worker's entry point in elastic::record "
          "for a traceback.",
          rank);
    }
    throw;
  } catch (...) {
    auto error = std::current_exception();
    guarded("record_exception", [&] { handler.record_exception(error); });
    throw;
  }
}

}  // namespace errors::detail

// Returns a callable that takes fn's arguments and returns its result; failures
// are recorded through `handler` (the process-wide one, looked up at each call,
// when null).
template <typename F>
auto record(F fn, std::shared_ptr<ErrorHandler> handler) {
  return [fn = std::move(fn), handler = std::move(handler)](auto&&... args) mutable -> decltype(auto) {
    std::shared_ptr<ErrorHandler> active = handler ? handler : get_error_handler();
    return errors::detail::invoke_recorded(fn, *active, std::forward<decltype(args)>(args)...);
  };
}

template <typename F>
auto record(F fn) {
  return record(std::move(fn), nullptr);
}

namespace errors::detail {

inline void report_escaped(const std::string& entrypoint) {
  auto levels = describe_exception(std::current_exception());
  auto path = get_error_handler()->error_file_path();
  log::write_line(log::Level::error, fmt::format("{} failed: {}{}", entrypoint, levels.front().headline(),
                                                 path ? fmt::format(" (error file: {})", *path) : std::string()));
}

// main() for ELASTIC_RECORD_MAIN: fn may take (int, char**) or nothing and return
// int or void. An escaping exception is recorded, told in one line on stderr, and
// becomes exit code 1; SystemExit{code} becomes exit code `code`.
template <typename F>
int run_recorded_main(const char* entrypoint, F fn, int argc, char** argv) {
  auto handler = get_error_handler();
  handler->set_entrypoint_fn_name(entrypoint);
  try {
    auto recorded = record(std::move(fn), handler);
    if constexpr (std::is_invocable_v<F&, int, char**>) {
      if constexpr (std::is_void_v<std::invoke_result_t<F&, int, char**>>) {
        recorded(argc, argv);
        return 0;
      } else {
        return static_cast<int>(recorded(argc, argv));
      }
    } else {
      static_assert(std::is_invocable_v<F&>, "ELASTIC_RECORD_MAIN needs a function taking (int, char**) or ()");
      (void)argc;
      (void)argv;
      if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
        recorded();
        return 0;
      } else {
        return static_cast<int>(recorded());
      }
    }
  } catch (const SystemExit& exit) {
    return exit.code;
  } catch (const ChildFailedError& error) {
    log::write_line(log::Level::error, fmt::format("{} failed: {}", entrypoint, error.format_msg()));
    return 1;
  } catch (...) {
    report_escaped(entrypoint);
    return 1;
  }
}

}  // namespace errors::detail
}  // namespace elastic

// Defines main() to run `fn` under elastic::record with its name as entry point.
#define ELASTIC_RECORD_MAIN(fn) \
  int main(int argc, char** argv) { return ::elastic::errors::detail::run_recorded_main(#fn, fn, argc, argv); }
