// elastic::launch: run `nproc_per_node` workers of one command on this node, as
// torchrun's elastic agent does with a static rendezvous: TorchElastic's worker
// environment, per-attempt logs, restarts, signal forwarding, and a
// ChildFailedError with every failed rank when the job fails.
#pragma once

#include <dirent.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <elastic/detail/helper_processes.hpp>
#include <elastic/errors/child_failed_error.hpp>
#include <elastic/errors/signals.hpp>
#include <elastic/launcher/config.hpp>
#include <elastic/launcher/static_barrier.hpp>
#include <elastic/log.hpp>
#include <elastic/multiprocessing.hpp>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace elastic::launcher {

// The launch was stopped by a signal to the launcher (forwarded to the workers).
class SignalException : public std::runtime_error {
 public:
  explicit SignalException(int signum)
      : std::runtime_error("Process " + std::to_string(::getpid()) + " got signal: " + std::to_string(signum)),
        signum_(signum) {}
  int signum() const { return signum_; }

 private:
  int signum_;
};

namespace detail {

inline multiprocessing::Env current_environment() {
  multiprocessing::Env env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) env.emplace(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return env;
}

inline std::string getenv_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : fallback;
}

// Python string.Template's ${name} and $name forms, for the names given; other
// text is kept. `dollar_escape`: "$$" becomes "$" (Template's escape). Worker
// arguments are substituted without it, so a shell worker's "$$" stays intact.
inline std::string substitute(const std::string& text, const std::map<std::string, std::string>& values,
                              bool dollar_escape = true) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    if (text[i] == '$' && i + 1 < text.size()) {
      if (text[i + 1] == '$' && dollar_escape) {
        out += '$';
        i += 2;
        continue;
      }
      bool braced = text[i + 1] == '{';
      std::size_t start = i + (braced ? 2 : 1);
      std::size_t end = start;
      while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_')) ++end;
      auto found = values.find(text.substr(start, end - start));
      if (found != values.end() && (!braced || (end < text.size() && text[end] == '}'))) {
        out += found->second;
        i = end + (braced ? 1 : 0);
        continue;
      }
    }
    out += text[i++];
  }
  return out;
}

inline std::pair<std::string, int> split_endpoint(const std::string& endpoint, int default_port) {
  auto colon = endpoint.rfind(':');
  if (colon == std::string::npos) return {endpoint, default_port};
  std::string port = endpoint.substr(colon + 1);
  if (!all_digits(port)) throw UsageError("invalid rendezvous endpoint: " + endpoint);
  std::string host = endpoint.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return {host, std::stoi(port)};
}

// MASTER_ADDR and MASTER_PORT of a static launch: --rdzv-endpoint when given, else
// --master-addr and --master-port.
inline std::pair<std::string, int> master_endpoint(const LaunchConfig& config) {
  if (config.rdzv_endpoint.empty()) return {config.master_addr, config.master_port};
  return split_endpoint(config.rdzv_endpoint, config.master_port);
}

using multiprocessing::detail::children_of_self;

// As a subreaper, descendants whose parents died come back to us: kill and reap
// them, so nothing the job started survives it.
// The library's own helpers (elastic::detail::HelperProcesses) are spared.
inline void kill_strays() {
  for (int round = 0; round < 100; ++round) {
    auto children = children_of_self();
    children.erase(std::remove_if(children.begin(), children.end(),
                                  [](pid_t pid) { return elastic::detail::HelperProcesses::instance().contains(pid); }),
                   children.end());
    if (children.empty()) return;
    for (pid_t pid : children) {
      ::kill(pid, SIGKILL);
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
}

// While it lives, the launcher's diagnostics are queued on the stderr console,
// in order with teed output, so a stalled reader never blocks the loop; at its
// end they get a bounded time to be written.
class ConsoleLog {
 public:
  explicit ConsoleLog(std::chrono::milliseconds stall_limit)
      : stall_limit_(stall_limit), previous_(log::set_sink(&to_console)) {}
  ~ConsoleLog() {
    log::set_sink(previous_);
    multiprocessing::Console::of(STDERR_FILENO).flush(stall_limit_);
  }
  ConsoleLog(const ConsoleLog&) = delete;
  ConsoleLog& operator=(const ConsoleLog&) = delete;

 private:
  static void to_console(std::string_view line) { multiprocessing::Console::of(STDERR_FILENO).write(line); }
  std::chrono::milliseconds stall_limit_;
  log::Sink previous_;
};

// Blocks `signals` and reads them from a signalfd for as long as it lives.
class SignalReader {
 public:
  explicit SignalReader(const std::vector<int>& signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : signals) sigaddset(&set, sig);
    ::sigprocmask(SIG_BLOCK, &set, &old_mask_);
    fd_ = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "signalfd");
  }
  ~SignalReader() {
    ::close(fd_);
    ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  SignalReader(const SignalReader&) = delete;
  SignalReader& operator=(const SignalReader&) = delete;
  int fd() const { return fd_; }
  // The next pending signal, or 0.
  int next() {
    signalfd_siginfo info{};
    ssize_t got = ::read(fd_, &info, sizeof(info));
    return got == static_cast<ssize_t>(sizeof(info)) ? static_cast<int>(info.ssi_signo) : 0;
  }

 private:
  int fd_ = -1;
  sigset_t old_mask_{};
};

}  // namespace detail

// Dynamic rendezvous backends (c10d, etcd, etcd-v2): elastic_agent.hpp.
inline bool is_dynamic_backend(const std::string& backend) {
  return backend == "c10d" || backend == "etcd" || backend == "etcd-v2";
}
inline void validate_dynamic(const LaunchConfig& config);
inline std::map<int, int> launch_elastic(const LaunchConfig& config, const std::string& entrypoint,
                                         const std::vector<std::string>& args, std::string name);

// Checks what this launcher can do; throws UsageError / NotSupportedError.
inline void validate(const LaunchConfig& config) {
  if (config.min_nodes <= 0 || config.min_nodes > config.max_nodes) throw UsageError("need 0 < min_nodes <= max_nodes");
  const bool dynamic = is_dynamic_backend(config.rdzv_backend);
  if (!dynamic && config.rdzv_backend != "static")
    throw UsageError("unknown rendezvous backend '" + config.rdzv_backend + "' (static, c10d, etcd, etcd-v2)");
  if (config.min_nodes != config.max_nodes && !dynamic)
    throw UsageError("--nnodes=" + std::to_string(config.min_nodes) + ":" + std::to_string(config.max_nodes) +
                     " needs a dynamic rendezvous backend (--rdzv-backend=c10d, etcd or etcd-v2)");
  if (config.nproc_per_node <= 0) throw UsageError("nproc_per_node must be positive");
  if (config.max_restarts < 0) throw UsageError("max_restarts must not be negative");
  if (dynamic) return validate_dynamic(config);  // --node-rank is ignored, as by PyTorch
  if (config.node_rank < 0 || config.node_rank >= config.max_nodes)
    throw UsageError("node_rank " + std::to_string(config.node_rank) + " is not in [0, " +
                     std::to_string(config.max_nodes) + ")");
  try {
    detail::static_join_timeout(config.rdzv_configs);
  } catch (const rendezvous::RendezvousConfigError& e) {
    throw UsageError(e.what());
  }
}

// The environment TorchElastic gives local rank `local_rank` of this node.
inline multiprocessing::Env worker_environment(const LaunchConfig& config, int local_rank, int restart_count,
                                               const multiprocessing::Env& base) {
  multiprocessing::Env env = base;
  const int nnodes = config.max_nodes;
  const int rank = config.node_rank * config.nproc_per_node + local_rank;
  const int world_size = nnodes * config.nproc_per_node;
  const auto [master_addr, master_port] = detail::master_endpoint(config);
  env["LOCAL_RANK"] = config.virtual_local_rank ? "0" : std::to_string(local_rank);
  env["RANK"] = std::to_string(rank);
  env["GROUP_RANK"] = std::to_string(config.node_rank);
  env["ROLE_RANK"] = std::to_string(rank);
  env["ROLE_NAME"] = config.role;
  env["LOCAL_WORLD_SIZE"] = std::to_string(config.nproc_per_node);
  env["WORLD_SIZE"] = std::to_string(world_size);
  env["GROUP_WORLD_SIZE"] = std::to_string(nnodes);
  env["ROLE_WORLD_SIZE"] = std::to_string(world_size);
  env["MASTER_ADDR"] = master_addr;
  env["MASTER_PORT"] = std::to_string(master_port);
  env["TORCHELASTIC_RESTART_COUNT"] = std::to_string(restart_count);
  env["TORCHELASTIC_MAX_RESTARTS"] = std::to_string(config.max_restarts);
  env["TORCHELASTIC_RUN_ID"] = config.run_id;
  // We host no c10d store: with True, PyTorch workers would wait for one forever.
  env["TORCHELASTIC_USE_AGENT_STORE"] = "False";
  // PyTorch 2.2's name, and the older one only for workers that read it (it makes 2.2+ warn);
  // a value the user set is kept.
  env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = detail::getenv_or("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1");
  if (config.legacy_nccl_async_error_handling)
    env["NCCL_ASYNC_ERROR_HANDLING"] = detail::getenv_or("NCCL_ASYNC_ERROR_HANDLING", "1");
  if (config.virtual_local_rank) {
    // Each worker sees only its own device; an existing list is narrowed, not replaced.
    std::string device = std::to_string(local_rank);
    if (auto visible = base.find("CUDA_VISIBLE_DEVICES"); visible != base.end()) {
      std::vector<std::string> items;
      std::stringstream list(visible->second);
      for (std::string item; std::getline(list, item, ',');) items.push_back(item);
      if (local_rank < static_cast<int>(items.size())) device = items[static_cast<std::size_t>(local_rank)];
    }
    env["CUDA_VISIBLE_DEVICES"] = device;
  }
  return env;
}

// The summary's name for a command: for an interpreter, the script or module.
inline std::string entrypoint_name(const std::string& entrypoint, const std::vector<std::string>& args) {
  const std::string python = detail::getenv_or("PYTHON_EXEC", "python3");
  auto base = [](const std::string& p) { return p.substr(p.rfind('/') == std::string::npos ? 0 : p.rfind('/') + 1); };
  if (entrypoint == python || base(entrypoint).rfind("python", 0) == 0)
    for (const auto& arg : args)
      if (!arg.empty() && arg[0] != '-') return arg;
  return entrypoint;
}

namespace detail {
// What every launch, static or elastic, settles before its first attempt.
struct LaunchSetup {
  std::string name;
  std::shared_ptr<multiprocessing::LogsSpecs> logs_specs;
  multiprocessing::Env base;  // the launcher's environment, the workers' starting point
  std::string prefix_template;
};

// One worker's log-line prefix, from --log-line-prefix-template.
inline std::string worker_prefix(const std::string& prefix_template, const std::string& role, int rank,
                                 int local_rank) {
  return substitute(prefix_template,
                    {{"rank", std::to_string(rank)}, {"local_rank", std::to_string(local_rank)}, {"role_name", role}});
}

// One worker's arguments, `{local_rank}` substituted as torchrun does.
inline std::vector<std::string> worker_arguments(const std::vector<std::string>& args, int local_rank) {
  std::vector<std::string> result;
  for (const auto& arg : args) result.push_back(substitute(arg, {{"local_rank", std::to_string(local_rank)}}, false));
  return result;
}

// What every attempt's PContext gets from the launch, static or elastic.
inline multiprocessing::PContextOptions attempt_options(const LaunchConfig& config) {
  multiprocessing::PContextOptions options;
  options.reap_orphans = config.own_process_tree;
  options.duplicate_stdout_filters = config.duplicate_stdout_filters;
  options.duplicate_stderr_filters = config.duplicate_stderr_filters;
  return options;
}

inline LaunchSetup prepare_launch(const LaunchConfig& config, const std::string& entrypoint,
                                  const std::vector<std::string>& args, std::string name) {
  LaunchSetup setup;
  setup.name = name.empty() ? entrypoint_name(entrypoint, args) : std::move(name);
  setup.logs_specs = config.logs_specs;
  if (!setup.logs_specs) setup.logs_specs = std::make_shared<multiprocessing::DefaultLogsSpecs>();
  if (config.own_process_tree) ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  setup.base = current_environment();
  setup.prefix_template = config.log_line_prefix_template.value_or(
      getenv_or("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "[${role_name}${local_rank}]:"));
  return setup;
}
}  // namespace detail

// Runs the job; returns each global rank's exit code (all 0). Throws
// ChildFailedError (failed ranks, by global rank) when the last attempt failed,
// SignalException when a handled signal stopped it, UsageError for a config
// this launcher cannot run.
inline std::map<int, int> launch(const LaunchConfig& config, const std::string& entrypoint,
                                 const std::vector<std::string>& args, std::string name = "") {
  validate(config);
  if (is_dynamic_backend(config.rdzv_backend)) return launch_elastic(config, entrypoint, args, std::move(name));
  auto setup = detail::prepare_launch(config, entrypoint, args, std::move(name));
  name = std::move(setup.name);
  const auto& logs_specs = setup.logs_specs;
  const auto& base = setup.base;
  const auto& prefix_template = setup.prefix_template;
  detail::SignalReader signals(config.signals_to_handle);
  const multiprocessing::PContextOptions options = detail::attempt_options(config);
  detail::ConsoleLog console_log(options.console_stall_limit);
  if (config.max_nodes > 1) {
    detail::StaticBarrierOptions barrier;
    std::tie(barrier.master_addr, barrier.master_port) = detail::master_endpoint(config);
    barrier.node_rank = config.node_rank;
    barrier.nnodes = config.max_nodes;
    barrier.run_id = config.run_id;
    barrier.timeout = detail::static_join_timeout(config.rdzv_configs);
    barrier.pending_signal = [&] { return signals.next(); };
    log::info("[{}] waiting for the other {} nodes at {}:{}", config.role, config.max_nodes - 1, barrier.master_addr,
              barrier.master_port);
    if (int sig = detail::static_barrier(barrier); sig != 0) {
      log::warning("Received {} death signal before the workers started", sig);
      throw SignalException(sig);
    }
  }

  for (int restart_count = 0;; ++restart_count) {
    std::map<int, multiprocessing::Env> envs;
    std::map<int, std::vector<std::string>> worker_args;
    std::map<int, std::string> prefixes;
    for (int local_rank = 0; local_rank < config.nproc_per_node; ++local_rank) {
      envs[local_rank] = worker_environment(config, local_rank, restart_count, base);
      const int rank = config.node_rank * config.nproc_per_node + local_rank;
      prefixes[local_rank] = detail::worker_prefix(prefix_template, config.role, rank, local_rank);
      worker_args[local_rank] = detail::worker_arguments(args, local_rank);
    }
    multiprocessing::PContext context(name, entrypoint, std::move(worker_args), std::move(envs), *logs_specs,
                                      std::move(prefixes), options);
    context.watch_fd(signals.fd());
    context.start();
    if (config.on_workers_started) config.on_workers_started(restart_count, context.pids());
    if (restart_count == 0)
      if (auto* defaults = dynamic_cast<multiprocessing::DefaultLogsSpecs*>(logs_specs.get()))
        log::info("log directory set to: {}", defaults->run_log_dir().value_or(""));

    std::optional<multiprocessing::RunProcsResult> result;
    while (!result) {
      result = context.wait(multiprocessing::PContext::forever, config.term_timeout);
      if (!result && context.watched_fd_ready()) {
        if (int sig = signals.next(); sig != 0) {
          log::warning("Received {} death signal, shutting down workers", sig);
          context.close(sig, config.term_timeout);
          // A second signal cut the grace period short (the workers were
          // SIGKILLed at once): it is the one the launcher ends with.
          if (context.stop_interrupted())
            if (int second = signals.next(); second != 0) {
              log::warning("Received {} death signal while shutting down, workers killed", second);
              sig = second;
            }
          if (config.own_process_tree) detail::kill_strays();
          throw SignalException(sig);
        }
      }
    }
    if (config.own_process_tree) detail::kill_strays();
    // A signal that came after a failure (it cut the grace period short, or came
    // since) stops the job, but the failure that happened is still reported.
    int late_signal = 0;
    for (int sig = signals.next(); sig != 0; sig = signals.next()) late_signal = sig;
    if (late_signal != 0 && result->is_failed())
      log::warning("Received {} death signal while stopping workers after a failure; not restarting", late_signal);
    if (config.on_workers_ended)
      config.on_workers_ended(restart_count, *result,
                              !result->is_failed() || restart_count >= config.max_restarts || late_signal != 0);
    if (!result->is_failed()) {
      std::map<int, int> values;
      for (const auto& [local_rank, code] : result->return_values)
        values[config.node_rank * config.nproc_per_node + local_rank] = code;
      return values;
    }
    if (restart_count < config.max_restarts && late_signal == 0) {
      log::warning("[{}] worker group failed; restarting ({} of {} restarts)", config.role, restart_count + 1,
                   config.max_restarts);
      continue;
    }
    ChildFailedError::Failures failures;
    for (auto& [local_rank, failure] : result->failures)
      failures.emplace(config.node_rank * config.nproc_per_node + local_rank, std::move(failure));
    throw ChildFailedError(name, std::move(failures));
  }
}

}  // namespace elastic::launcher

// The dynamic-rendezvous loop that launch() hands c10d and etcd jobs to.
#include <elastic/launcher/elastic_agent.hpp>
