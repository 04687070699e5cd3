// The attempt loop every launch runs, whatever its rendezvous backend: join a
// round (membership.hpp), start the round's workers, watch them, the launcher's
// signals and the round, then act:
//   - all succeeded: the membership's finish(), then each global rank's exit code;
//   - a worker failed: with restarts left (and no signal since), a counted restart;
//     else finish() and ChildFailedError with every failed rank;
//   - the round changed (nodes joined or left): an uncounted restart;
//   - a handled signal: it is forwarded to the workers, a second one SIGKILLs them
//     at once, and the launch ends with SignalException.
// The hooks of LaunchConfig (timer server, event log, NUMA binding) are called for
// every attempt on every backend.
#pragma once

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <elastic/errors/child_failed_error.hpp>
#include <elastic/launcher/agent_store.hpp>
#include <elastic/launcher/config.hpp>
#include <elastic/launcher/job_failures.hpp>
#include <elastic/launcher/membership.hpp>
#include <elastic/launcher/signals.hpp>
#include <elastic/launcher/worker_env.hpp>
#include <elastic/log.hpp>
#include <elastic/multiprocessing.hpp>
#include <elastic/rendezvous/errors.hpp>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace elastic::launcher {

namespace detail {

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

// What every attempt's PContext gets from the launch.
inline multiprocessing::PContextOptions attempt_options(const LaunchConfig& config) {
  multiprocessing::PContextOptions options;
  options.reap_orphans = config.own_process_tree;
  options.duplicate_stdout_filters = config.duplicate_stdout_filters;
  options.duplicate_stderr_filters = config.duplicate_stderr_filters;
  return options;
}

// The launch's command and what it settles before its first attempt.
struct Job {
  std::string name;  // the summary's name for the command
  std::string entrypoint;
  std::vector<std::string> args;
  std::shared_ptr<multiprocessing::LogsSpecs> logs_specs;
  multiprocessing::Env base;  // the launcher's environment, the workers' starting point
  std::string prefix_template;
};

inline Job prepare_job(const LaunchConfig& config, const std::string& entrypoint, const std::vector<std::string>& args,
                       std::string name) {
  Job job;
  job.name = name.empty() ? entrypoint_name(entrypoint, args) : std::move(name);
  job.entrypoint = entrypoint;
  job.args = args;
  job.logs_specs = config.logs_specs;
  if (!job.logs_specs) job.logs_specs = std::make_shared<multiprocessing::DefaultLogsSpecs>();
  if (config.own_process_tree) ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  job.base = current_environment();
  job.prefix_template = config.log_line_prefix_template.value_or(
      getenv_or("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "[${role_name}${local_rank}]:"));
  return job;
}

// One attempt's workers, started in the round `node` describes.
inline std::unique_ptr<multiprocessing::PContext> start_workers(const LaunchConfig& config, const Job& job,
                                                                const NodeAssignment& node, int restart_count,
                                                                int signal_fd) {
  std::map<int, multiprocessing::Env> envs;
  std::map<int, std::vector<std::string>> worker_args;
  std::map<int, std::string> prefixes;
  for (int local_rank = 0; local_rank < config.nproc_per_node; ++local_rank) {
    envs[local_rank] = worker_environment(config, node, local_rank, restart_count, job.base);
    prefixes[local_rank] = worker_prefix(job.prefix_template, config.role, node.rank_offset + local_rank, local_rank);
    worker_args[local_rank] = worker_arguments(job.args, local_rank);
  }
  auto context =
      std::make_unique<multiprocessing::PContext>(job.name, job.entrypoint, std::move(worker_args), std::move(envs),
                                                  *job.logs_specs, std::move(prefixes), attempt_options(config));
  context->watch_fd(signal_fd);
  context->start();
  return context;
}

// How one attempt's workers ended.
struct AttemptEnd {
  multiprocessing::RunProcsResult result;
  std::optional<std::string> round_changed;  // set: stopped by the launcher for a new round
  std::vector<FailureReport> remote;         // set: stopped by the launcher for another node's failure
};

// Watches the started workers until they end or the round changes. A handled
// signal stops them (a second one cuts the grace period short) and throws
// SignalException; a lost rendezvous stops them and rethrows.
inline AttemptEnd watch_workers(const LaunchConfig& config, multiprocessing::PContext& context, Membership& membership,
                                SignalReader& signals, int restart_count) {
  auto stop = [&](int sig) {
    context.close(sig, config.term_timeout);
    if (config.own_process_tree) multiprocessing::kill_strays();
  };
  try {
    for (;;) {
      if (auto result = context.wait(membership.poll_interval(), config.term_timeout))
        return {std::move(*result), {}, {}};
      if (context.watched_fd_ready()) {
        if (int sig = signals.next(); sig != 0) {
          log::warning("Received {} death signal, shutting down workers", sig);
          context.close(sig, config.term_timeout);
          // A second signal cut the grace period short (the workers were SIGKILLed
          // at once): it is the one the launcher ends with.
          if (context.stop_interrupted())
            if (int second = signals.next(); second != 0) {
              log::warning("Received {} death signal while shutting down, workers killed", second);
              sig = second;
            }
          if (config.own_process_tree) multiprocessing::kill_strays();
          throw SignalException(sig);
        }
      }
      // Another node's failure first: the job failed (or restarts, counted), it
      // does not merely change its members.
      if (auto remote = membership.job_failures(); !remote.empty()) {
        const FailureReport& first = earliest_report(remote);
        log::warning("[{}] rank {} failed on {}; stopping the workers", config.role, first.global_rank,
                     first.failure.host);
        stop(SIGTERM);
        return {*context.wait(std::chrono::milliseconds(0)), std::nullopt, std::move(remote)};
      }
      if (auto why = membership.round_changed()) {
        log::warning("[{}] {}; restarting the workers in a new round (restart count stays {})", config.role, *why,
                     restart_count);
        stop(SIGTERM);
        return {*context.wait(std::chrono::milliseconds(0)), why, {}};
      }
    }
  } catch (const rendezvous::RendezvousError& e) {
    log::warning("[{}] {}; stopping the workers", config.role, e.what());
    stop(SIGTERM);
    throw;
  }
}

}  // namespace detail

// Runs attempts of `job` until it succeeds, fails for good, or a signal stops it;
// returns each global rank's exit code. Throws ChildFailedError, SignalException
// and rendezvous::RendezvousError.
inline std::map<int, int> run_attempts(const LaunchConfig& config, const detail::Job& job, Membership& membership,
                                       SignalReader& signals) {
  bool logged_dir = false;
  std::unique_ptr<AgentStore> agent_store;
  for (int restart_count = 0;;) {
    std::optional<NodeAssignment> node = membership.join(restart_count, signals);
    if (!node) continue;
    detail::serve_agent_store(config, *node, agent_store);
    auto context = detail::start_workers(config, job, *node, restart_count, signals.fd());
    const WorkerGroupInfo group{restart_count,     node->round,      node->group_rank, node->group_world_size,
                                node->rank_offset, node->world_size, context->pids()};
    if (config.on_workers_started) config.on_workers_started(group);
    if (!logged_dir) {
      logged_dir = true;
      if (auto* defaults = dynamic_cast<multiprocessing::DefaultLogsSpecs*>(job.logs_specs.get()))
        log::info("log directory set to: {}", defaults->run_log_dir().value_or(""));
    }

    detail::AttemptEnd end = detail::watch_workers(config, *context, membership, signals, restart_count);
    multiprocessing::RunProcsResult& result = end.result;
    if (end.round_changed) {
      if (config.on_workers_ended) config.on_workers_ended(group, result, false);
      continue;
    }
    if (config.own_process_tree) multiprocessing::kill_strays();
    // A signal that came after a failure (it cut the grace period short, or came
    // since) stops the job, but the failure that happened is still reported.
    int late_signal = 0;
    for (int sig = signals.next(); sig != 0; sig = signals.next()) late_signal = sig;
    if (late_signal != 0 && result.is_failed())
      log::warning("Received {} death signal while stopping workers after a failure; not restarting", late_signal);
    const bool several_nodes = node->group_world_size > 1;
    std::vector<FailureReport> remote = std::move(end.remote);
    auto may_restart = [&] {
      return restart_count < config.max_restarts && late_signal == 0 &&
             std::none_of(remote.begin(), remote.end(), [](const FailureReport& r) { return r.final; });
    };
    if (result.is_failed() && remote.empty() && several_nodes) {
      // This node's failure: the other nodes learn of it at their next poll; one
      // of theirs may have come first.
      auto [local_rank, failure] = earliest_failure(result.failures);
      FailureReport report;
      report.global_rank = node->rank_offset + local_rank;
      report.failure = failure;
      report.final = !may_restart();
      membership.publish_failure(report);
      remote = membership.job_failures();
    }
    const bool failed = result.is_failed() || !remote.empty();
    const bool restart = failed && may_restart();
    if (config.on_workers_ended) config.on_workers_ended(group, result, !restart);
    if (restart) {
      ++restart_count;
      log::warning("[{}] worker group failed; restarting ({} of {} restarts)", config.role, restart_count,
                   config.max_restarts);
      continue;
    }
    membership.finish();
    if (!failed) {
      std::map<int, int> values;
      for (const auto& [local_rank, code] : result.return_values) values[node->rank_offset + local_rank] = code;
      return values;
    }
    ChildFailedError::Failures failures;
    for (auto& [local_rank, failure] : result.failures)
      failures.emplace(node->rank_offset + local_rank, std::move(failure));
    failures = merge_job_failures(std::move(failures), remote, several_nodes);
    if (several_nodes) {
      // In a job of several nodes, the workers this launcher stopped are shown too:
      // collateral of the job's first failure.
      const auto root = std::min_element(failures.begin(), failures.end(), [](const auto& a, const auto& b) {
        if (a.second.collateral.empty() != b.second.collateral.empty()) return a.second.collateral.empty();
        return earlier_failure(a.second, b.second);
      });
      const std::string cause = "rank " + std::to_string(root->first) + " failed on " +
                                (root->second.host.empty() ? elastic::fqdn() : root->second.host);
      for (const auto& [local_rank, pid] : group.pids) {
        if (result.failures.count(local_rank) > 0) continue;
        ProcessFailure stopped(local_rank, static_cast<int>(pid), -SIGTERM, std::string(not_available));
        stopped.collateral = "stopped by the launcher after " + cause;
        failures.emplace(node->rank_offset + local_rank, std::move(stopped));
      }
    }
    throw ChildFailedError(job.name, std::move(failures));
  }
}

}  // namespace elastic::launcher
