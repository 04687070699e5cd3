// What elastic-run sets up around a launch: the master port held for the job, the
// workers' OMP_NUM_THREADS default, NUMA binding, the file-based timer server and
// the worker status events. Each is attached to the launch through LaunchConfig's
// hooks, so it works the same on every rendezvous backend.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <elastic/launcher.hpp>
#include <elastic/launcher/port.hpp>
#include <elastic/launcher/timer_server.hpp>
#include <elastic/log.hpp>
#include <elastic/multiprocessing/gpus.hpp>
#include <elastic/multiprocessing/numa.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "elastic_run/command_line.hpp"
#include "elastic_run/events.hpp"

namespace elastic_run {

// A service that cannot be set up: printed as "elastic-run: error: ...", exit 1,
// before any worker starts.
class SetupError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The CPUs of each local rank for --numa-binding, found before any worker starts.
inline std::map<int, std::set<int>> numa_binding_plan(const std::string& mode_name, int nproc_per_node) {
  namespace numa = elastic::multiprocessing::numa;
  std::map<int, std::set<int>> plan;
  try {
    const numa::Mode mode = *numa::parse_mode(mode_name);
    const auto gpus = elastic::multiprocessing::gpu_inventory();
    if (gpus.count > 0 && gpus.pci_bus_ids.empty())
      throw numa::NumaError("the GPUs' places need NVML (libnvidia-ml.so.1), which is not available");
    const numa::Topology topology = numa::this_machine(gpus);
    std::vector<int> devices;  // CUDA index -> NVML index
    if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"))
      devices = elastic::multiprocessing::visible_devices(visible, gpus);
    else
      for (int i = 0; i < gpus.count; ++i) devices.push_back(i);
    for (int local_rank = 0; local_rank < nproc_per_node; ++local_rank) {
      if (local_rank >= static_cast<int>(devices.size()) || devices[static_cast<std::size_t>(local_rank)] < 0)
        throw numa::NumaError("local rank " + std::to_string(local_rank) + " has no GPU of its own (" +
                              std::to_string(devices.size()) +
                              " visible): NUMA binding places each local rank near the GPU of its index");
      plan[local_rank] = numa::cpus_for_gpu(topology, mode, devices[static_cast<std::size_t>(local_rank)]);
    }
  } catch (const std::exception& e) {
    throw SetupError("NUMA binding (--numa-binding " + mode_name + "): " + e.what());
  }
  return plan;
}

// Node 0 of a static job serves the workers' store on the master port (or, with
// --no-agent-store, runs rank 0, which hosts it): the port is held for the whole
// job, so that no other job on this host takes it (see port.hpp). A single node
// given no port gets a free one here.
inline elastic::launcher::PortReservation hold_master_port(elastic::launcher::LaunchConfig& config) {
  using elastic::launcher::PortReservation;
  if (config.node_rank != 0 || config.rdzv_backend != "static") return {};
  if (config.master_port != 0) {
    try {
      return PortReservation::hold(elastic::launcher::master_endpoint(config).second);
    } catch (const elastic::launcher::PortBusyError& e) {
      throw SetupError(std::string("master ") + e.what() +
                       "; give another --master-port, or none on a single node to get a free one");
    }
  }
  PortReservation port;
  try {
    port = PortReservation::any();
  } catch (const elastic::launcher::PortBusyError& e) {
    throw SetupError(std::string("cannot pick a master port for a single node: ") + e.what() +
                     "; give one with --master-port");
  }
  config.master_port = port.port();
  elastic::log::info("single node without a master port: using port {} and run id {}", config.master_port,
                     config.run_id);
  return port;
}

// torchrun's default for several workers on one node, which it warns about.
inline void default_omp_threads(const elastic::launcher::LaunchConfig& config) {
  if (std::getenv("OMP_NUM_THREADS") != nullptr || config.nproc_per_node <= 1) return;
  elastic::log::warning(
      "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system "
      "being overloaded, please further tune the variable for optimal performance in your application as needed.");
  ::setenv("OMP_NUM_THREADS", "1", 1);
}

// Worker hang timers, served as torchrun serves them when
// TORCHELASTIC_ENABLE_FILE_TIMER=1; null otherwise.
inline std::unique_ptr<elastic::launcher::TimerServer> start_timer_server() {
  const char* enabled = std::getenv("TORCHELASTIC_ENABLE_FILE_TIMER");
  if (enabled == nullptr || std::string(enabled) != "1") return nullptr;
  const char* given = std::getenv("TORCHELASTIC_TIMER_FILE");
  const std::string path = given != nullptr && *given != '\0'
                               ? std::string(given)
                               : (std::filesystem::temp_directory_path() / ("watchdog_timer_" + new_uuid())).string();
  std::unique_ptr<elastic::launcher::TimerServer> timers;
  try {
    timers = std::make_unique<elastic::launcher::TimerServer>(path);
  } catch (const std::system_error& e) {
    throw SetupError(e.what());
  }
  ::setenv("TORCHELASTIC_TIMER_FILE", path.c_str(), 1);
  return timers;
}

// Everything that lives beside the launch, set up before it and attached to it.
class Services {
 public:
  // Sets the services up (throws SetupError) and hooks them into `run.config`.
  explicit Services(Invocation& run) : run_(run) {
    if (!run.options.numa_binding.empty())
      numa_cpus_ = numa_binding_plan(run.options.numa_binding, run.config.nproc_per_node);
    master_port_ = hold_master_port(run.config);
    default_omp_threads(run.config);
    timers_ = start_timer_server();
    console_events_ = run.options.event_log_handler == "console";
    run.config.on_workers_started = [this](const elastic::launcher::WorkerGroupInfo& group) { started(group); };
    run.config.on_workers_ended = [this](const elastic::launcher::WorkerGroupInfo& group,
                                         elastic::multiprocessing::RunProcsResult& result,
                                         bool final) { ended(group, result, final); };
  }
  Services(const Services&) = delete;
  Services& operator=(const Services&) = delete;

 private:
  void started(const elastic::launcher::WorkerGroupInfo& group) {
    if (timers_) timers_->set_workers(group.pids);
    for (const auto& [local_rank, cpus] : numa_cpus_)
      if (auto pid = group.pids.find(local_rank); pid != group.pids.end()) {
        elastic::multiprocessing::numa::bind_process(pid->second, cpus);
        elastic::log::info("local rank {} (pid {}) bound to CPUs {}", local_rank, pid->second,
                           elastic::multiprocessing::numa::format_ranges(cpus));
      }
  }

  void ended(const elastic::launcher::WorkerGroupInfo& group, elastic::multiprocessing::RunProcsResult& result,
             bool final) {
    if (timers_) {
      timers_->end_attempt();
      // A worker the timer server killed wrote no error file: say why it died.
      for (auto& [local_rank, failure] : result.failures)
        if (auto why = timers_->expired(failure.pid);
            why && failure.error_file == elastic::not_available && failure.message.is_string())
          failure.message = failure.message.get<std::string>() + ": " + *why;
    }
    if (final && console_events_) {
      const long seconds = static_cast<long>(
          std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_at_).count());
      for (const auto& event : worker_status_events(run_.config, run_.command.name, group, result, seconds))
        elastic::multiprocessing::Console::of(STDERR_FILENO).write(event.dump() + "\n");
    }
  }

  Invocation& run_;
  std::map<int, std::set<int>> numa_cpus_;
  elastic::launcher::PortReservation master_port_;
  std::unique_ptr<elastic::launcher::TimerServer> timers_;
  bool console_events_ = false;
  const std::chrono::steady_clock::time_point started_at_ = std::chrono::steady_clock::now();
};

}  // namespace elastic_run
