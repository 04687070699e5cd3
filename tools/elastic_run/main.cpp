// elastic-run: torchrun's command line over elastic::launch.
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <elastic/errors.hpp>
#include <elastic/launcher.hpp>
#include <elastic/log.hpp>
#include <string>
#include <system_error>

#include "elastic_run/command_line.hpp"
#include "elastic_run/services.hpp"

namespace {

using elastic::multiprocessing::Console;

// From here on the handled signals are only read (through launch's signalfd), never
// acted on by default: one that comes late cannot cut the summary short.
void block_handled_signals(const elastic::launcher::LaunchConfig& config) {
  sigset_t handled;
  sigemptyset(&handled);
  for (int sig : config.signals_to_handle) sigaddset(&handled, sig);
  ::sigprocmask(SIG_BLOCK, &handled, nullptr);
}

// Diagnostics and the summary go through the stderr console to the end (queued, in
// order with teed output): a stalled reader cannot block what follows the run.
void log_to_console() {
  elastic::log::set_sink([](std::string_view line) { Console::of(STDERR_FILENO).write(line); });
}

// Runs the launch inside record() (so that TORCHELASTIC_ERROR_FILE, when set for the
// launcher, gets the job's failure) and turns its end into an exit code.
int run_job(const elastic_run::Invocation& run) {
  Console& console = Console::of(STDERR_FILENO);
  try {
    auto job = elastic::record([&] {
      return elastic::launcher::launch(run.config, run.command.entrypoint, run.command.args, run.command.name);
    });
    job();
    return 0;
  } catch (const elastic::ChildFailedError& e) {
    // format_msg(), not what(): a C string would end the summary at a NUL in a message.
    console.write("elastic.ChildFailedError: " + e.format_msg() + "\n");
  } catch (const elastic::launcher::SignalException& e) {
    return 128 + e.signum();
  } catch (const elastic::rendezvous::RendezvousError& e) {
    // PyTorch's class name first, as torchrun's traceback ends with it.
    console.write(std::string("elastic-run: error: ") + e.class_name() + ": " + e.what() + "\n");
  } catch (const std::system_error& e) {
    std::string hint;
    const int error = e.code().value();
    if (run.command.direct && (error == EACCES || error == ENOEXEC) &&
        std::string(e.what()).find("cannot start " + run.command.entrypoint) != std::string::npos)
      hint = " (it is run as a program: make it executable, or run a Python script with a .py name, --run-path or -m)";
    console.write(std::string("elastic-run: error: ") + e.what() + hint + "\n");
  } catch (const std::exception& e) {
    console.write(std::string("elastic-run: error: ") + e.what() + "\n");
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // A closed console must not kill the launcher while it still has workers to stop.
  std::signal(SIGPIPE, SIG_IGN);
  elastic_run::Invocation run;
  try {
    run = elastic_run::parse_command_line(argc, argv);
  } catch (const elastic_run::ExitNow& exit) {
    return exit.code;
  }
  std::optional<elastic_run::Services> services;
  try {
    services.emplace(run);
  } catch (const elastic_run::SetupError& e) {
    std::fprintf(stderr, "elastic-run: error: %s\n", e.what());
    return 1;
  }
  block_handled_signals(run.config);
  log_to_console();
  const int code = run_job(run);
  // A console that takes nothing for this long is left behind.
  Console::of(STDERR_FILENO).flush(elastic::multiprocessing::PContextOptions{}.console_stall_limit);
  return code;
}
