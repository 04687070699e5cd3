// elastic-run: torchrun's command line over elastic::launch. Every option takes
// its dash or underscore spelling and a PET_<NAME> environment default.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <elastic/errors.hpp>
#include <elastic/launcher.hpp>
#include <elastic/launcher/cli.hpp>
#include <elastic/launcher/events.hpp>
#include <elastic/launcher/port.hpp>
#include <elastic/launcher/timer_server.hpp>
#include <elastic/launcher/torch_env.hpp>
#include <elastic/multiprocessing/numa.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <vector>

namespace {

using elastic::launcher::UsageError;

struct Args {
  std::string nnodes = "1:1";
  std::string nproc_per_node = "1";
  std::string rdzv_backend = "static";
  std::string rdzv_endpoint;
  std::string rdzv_id = "none";
  std::string rdzv_conf;
  bool standalone = false;
  int max_restarts = 0;
  double monitor_interval = 0.1;
  std::string start_method = "spawn";
  std::string role = "default";
  bool module = false;
  bool no_python = false;
  bool run_path = false;
  std::string log_dir;
  std::string redirects = "0";
  std::string tee = "0";
  std::string local_ranks_filter;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string local_addr;
  std::string log_line_prefix_template;
  bool virtual_local_rank = false;
  std::string signals_to_handle = "SIGTERM,SIGINT,SIGHUP,SIGQUIT";
  std::string logs_specs = "default";
  // Empty: not given (PET_TERM_TIMEOUT, TORCH_ELASTIC_SHUTDOWN_TIMEOUT, then 30 s).
  std::string shutdown_timeout;
  std::string event_log_handler = "null";
  std::string numa_binding;
  std::string duplicate_stdout_filters;
  std::string duplicate_stderr_filters;
  // Set by main from the parser: whether --master-port (or PET_MASTER_PORT) was given.
  bool master_port_given = false;
  bool rdzv_id_given = false;
};

// "--nproc-per-node,--nproc_per_node" with PET_NPROC_PER_NODE.
std::string names(const std::string& dashed, const std::string& short_name = "") {
  std::string underscored = dashed;
  for (auto& c : underscored)
    if (c == '-') c = '_';
  std::string result = short_name.empty() ? "" : short_name + ",";
  result += "--" + dashed;
  if (underscored != dashed) result += ",--" + underscored;
  return result;
}
std::string pet(const std::string& dashed) {
  std::string name = "PET_";
  for (char c : dashed) name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

template <typename T>
CLI::Option* option(CLI::App& app, const std::string& dashed, T& value, const std::string& help,
                    const std::string& short_name = "") {
  return app.add_option(names(dashed, short_name), value, help)->envname(pet(dashed))->capture_default_str();
}
CLI::Option* flag(CLI::App& app, const std::string& dashed, bool& value, const std::string& help,
                  const std::string& short_name = "") {
  return app.add_flag(names(dashed, short_name), value, help)->envname(pet(dashed));
}

std::string new_uuid() {
  std::ifstream in("/proc/sys/kernel/random/uuid");
  std::string id;
  std::getline(in, id);
  return id.empty() ? std::to_string(::getpid()) : id;
}

int parse_signal(std::string name) {
  for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (name.rfind("SIG", 0) != 0) name = "SIG" + name;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (elastic::signal_name(sig) != name) continue;
    // KILL and STOP cannot be caught; the launcher itself needs CHLD to watch its workers,
    // PIPE ignored to outlive a closed console, and a fault signal blocked in the launcher
    // would end it at its own first fault.
    for (int refused : {SIGKILL, SIGSTOP, SIGCHLD, SIGPIPE, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS})
      if (sig == refused) throw UsageError("--signals-to-handle: " + name + " cannot be forwarded to the workers");
    return sig;
  }
  throw UsageError("--signals-to-handle: unknown signal " + name);
}

// A usage error on one line, whatever the values it quotes hold.
void usage_error(const std::string& message) {
  std::fprintf(stderr, "elastic-run: error: %s\n", elastic::launcher::one_line(message).c_str());
}

struct Command {
  std::string entrypoint;
  std::vector<std::string> args;
  std::string name;
  bool direct = false;  // executed itself, not under Python
};

Command make_command(const Args& a, const std::string& script, const std::vector<std::string>& script_args) {
  if (a.module && a.no_python)
    throw UsageError("Don't use both the '--no-python' flag and the '--module' flag at the same time.");
  Command command;
  const bool is_python =
      a.module || a.run_path || (script.size() > 3 && script.compare(script.size() - 3, 3, ".py") == 0);
  // As in torchrun, --run-path takes precedence over --no-python.
  if (a.run_path || (!a.no_python && is_python)) {
    const char* python = std::getenv("PYTHON_EXEC");
    command.entrypoint = python != nullptr && *python ? python : "python3";
    command.args.push_back("-u");
    if (a.module) command.args.push_back("-m");
    command.args.push_back(script);
  } else {
    command.entrypoint = script;
    command.direct = true;
  }
  command.name = script;
  command.args.insert(command.args.end(), script_args.begin(), script_args.end());
  return command;
}

// --shutdown-timeout (alias --term-timeout), PET_SHUTDOWN_TIMEOUT, PET_TERM_TIMEOUT,
// TORCH_ELASTIC_SHUTDOWN_TIMEOUT, then 30 s: the time between the stop signal and SIGKILL.
std::chrono::milliseconds shutdown_timeout(std::string text) {
  std::string source = "--shutdown-timeout";
  for (const char* name : {"PET_TERM_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"}) {
    if (!text.empty()) break;
    if (const char* value = std::getenv(name); value != nullptr && *value != '\0') {
      text = value;
      source = name;
    }
  }
  if (text.empty()) return std::chrono::seconds(30);
  double seconds = -1;
  std::size_t used = 0;
  try {
    seconds = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  // Converting NaN, infinity or a huge value to an integer is undefined: refuse them.
  if (used != text.size() || !(seconds >= 0 && seconds <= 1e9))
    throw UsageError(source + " must be a number of seconds from 0 to 1e9 (--term-timeout is its alias), got " + text);
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

// "apple,orange" -> {apple, orange}; ",," is a literal comma; empty items are dropped.
std::vector<std::string> comma_separated_list(const std::string& text) {
  std::vector<std::string> items(1);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != ',') {
      items.back() += text[i];
    } else if (i + 1 < text.size() && text[i + 1] == ',') {
      items.back() += ',';
      ++i;
    } else {
      items.emplace_back();
    }
  }
  items.erase(std::remove(items.begin(), items.end(), std::string()), items.end());
  return items;
}

elastic::launcher::LaunchConfig make_config(Args& a) {
  using namespace elastic;
  launcher::LaunchConfig config;
  if (a.start_method != "spawn" && a.start_method != "fork" && a.start_method != "forkserver")
    throw UsageError("--start-method must be spawn, fork or forkserver");
  std::tie(config.min_nodes, config.max_nodes) = launcher::parse_min_max_nnodes(a.nnodes);
  config.nproc_per_node = launcher::determine_local_world_size(a.nproc_per_node);
  config.rdzv_backend = a.rdzv_backend;
  config.rdzv_endpoint = a.rdzv_endpoint;
  config.run_id = a.rdzv_id;
  config.rdzv_configs = launcher::parse_rendezvous_config(a.rdzv_conf);
  if (a.master_port_given && (a.master_port < 1 || a.master_port > 65535))
    throw UsageError("--master-port must be a port number from 1 to 65535, got " + std::to_string(a.master_port));
  if (!config.rdzv_endpoint.empty()) {
    auto colon = config.rdzv_endpoint.rfind(':');
    auto bracket = config.rdzv_endpoint.rfind(']');
    if (colon != std::string::npos && (bracket == std::string::npos || colon > bracket)) {
      const std::string port = config.rdzv_endpoint.substr(colon + 1);
      if (!launcher::all_digits(port) || std::stoi(port) < 1 || std::stoi(port) > 65535)
        throw UsageError("--rdzv-endpoint '" + config.rdzv_endpoint + "': the port must be a number from 1 to 65535");
    }
  }
  if (a.standalone) {
    if (config.max_nodes != 1) throw launcher::NotSupportedError("--standalone with more than one node");
    config.rdzv_backend = "static";
    config.rdzv_endpoint.clear();
    config.master_addr = "localhost";
    config.master_port = 0;  // main holds a free one
    config.run_id = new_uuid();
  } else if (config.rdzv_backend == "static" && config.rdzv_endpoint.empty() && !a.master_port_given &&
             config.max_nodes == 1) {
    // As newest torchrun: a single node given no port gets a free one and a run id of its
    // own, so that concurrent jobs on one host never join each other's group.
    config.master_addr = a.master_addr;
    config.master_port = 0;  // main holds a free one
    // torchrun replaces a given --rdzv-id here too; a name the user chose is kept.
    if (!a.rdzv_id_given) config.run_id = new_uuid();
  } else {
    config.master_addr = a.master_addr;
    config.master_port = a.master_port;
  }
  config.node_rank = a.node_rank;
  config.max_restarts = a.max_restarts;
  config.monitor_interval = a.monitor_interval;
  config.start_method = a.start_method;
  config.role = a.role;
  config.virtual_local_rank = a.virtual_local_rank;
  config.term_timeout = shutdown_timeout(a.shutdown_timeout);
  if (!a.log_line_prefix_template.empty()) config.log_line_prefix_template = a.log_line_prefix_template;
  config.signals_to_handle.clear();
  std::stringstream list(a.signals_to_handle);
  for (std::string item; std::getline(list, item, ',');)
    if (!item.empty()) config.signals_to_handle.push_back(parse_signal(item));

  std::optional<std::set<int>> filter;
  if (!a.local_ranks_filter.empty()) {
    filter.emplace();
    std::stringstream ranks(a.local_ranks_filter);
    for (std::string item; std::getline(ranks, item, ',');) {
      if (!launcher::all_digits(item))
        throw UsageError(
            "--local-ranks-filter must be a comma-separated list of integers e.g. --local-ranks-filter=0,1,2");
      filter->insert(std::stoi(item));
    }
  }
  multiprocessing::StdSpec redirects, tee;
  try {
    redirects = multiprocessing::parse_std(a.redirects);
    tee = multiprocessing::parse_std(a.tee);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  // A filter only says which teed ranks reach the console: without --tee it
  // would do nothing, so it implies --tee=3.
  if (filter && std::holds_alternative<multiprocessing::Std>(tee) &&
      std::get<multiprocessing::Std>(tee) == multiprocessing::Std::NONE)
    tee = multiprocessing::Std::ALL;
  std::optional<std::string> log_dir;
  if (!a.log_dir.empty()) log_dir = a.log_dir;
  try {
    config.logs_specs = multiprocessing::make_logs_specs(a.logs_specs, log_dir, redirects, tee, filter);
  } catch (const multiprocessing::UnknownLogsSpecsError& e) {
    throw UsageError(std::string("--logs-specs: ") + e.what());
  }
  config.duplicate_stdout_filters = comma_separated_list(a.duplicate_stdout_filters);
  config.duplicate_stderr_filters = comma_separated_list(a.duplicate_stderr_filters);
  config.own_process_tree = true;
  return config;
}

}  // namespace

int main(int argc, char** argv) {
  // A closed console must not kill the launcher while it still has workers to stop.
  std::signal(SIGPIPE, SIG_IGN);

  Args a;
  CLI::App app{
      "Starts N copies of ENTRY as a TorchElastic job (torchrun-compatible).\n"
      "Options come before ENTRY; everything after ENTRY is passed to the workers.",
      "elastic-run"};
  app.prefix_command();
  app.get_formatter()->column_width(40);
  app.set_version_flag("--version", "elastic-run " ELASTIC_VERSION_STRING);
  option(app, "nnodes", a.nnodes, "Number of nodes, or MIN:MAX (elastic; needs a dynamic rendezvous backend)");
  option(app, "nproc-per-node", a.nproc_per_node, "Workers per node: an integer, auto, cpu or gpu");
  option(app, "rdzv-backend", a.rdzv_backend, "Rendezvous backend: static, c10d, etcd or etcd-v2");
  option(app, "rdzv-endpoint", a.rdzv_endpoint, "Rendezvous endpoint host:port");
  option(app, "rdzv-id", a.rdzv_id, "Job id (TORCHELASTIC_RUN_ID)");
  option(app, "rdzv-conf", a.rdzv_conf, "Rendezvous configuration key1=value1,key2=value2");
  flag(app, "standalone", a.standalone, "Single node job: local address, free port and a new run id");
  option(app, "max-restarts", a.max_restarts, "Restarts of the worker group before failing");
  option(app, "monitor-interval", a.monitor_interval, "Accepted for compatibility: failures are seen at once");
  option(app, "start-method", a.start_method, "Accepted for compatibility (spawn, fork, forkserver)");
  option(app, "role", a.role, "Role name of the workers");
  flag(app, "module", a.module, "Run the entry as a Python module (python3 -m)", "-m");
  flag(app, "no-python", a.no_python, "Run the entry directly, even a .py file");
  flag(app, "run-path", a.run_path, "Run the entry as a Python script");
  option(app, "log-dir", a.log_dir, "Base directory for logs (default: a new temporary directory)");
  option(app, "redirects", a.redirects, "Redirect to log files: 0 none, 1 stdout, 2 stderr, 3 both, or 0:1,1:2", "-r");
  option(app, "tee", a.tee, "Log files and console (same values as --redirects)", "-t");
  option(app, "local-ranks-filter", a.local_ranks_filter, "Only these local ranks' teed output reaches the console");
  option(app, "node-rank", a.node_rank, "Rank of this node in a static multi-node job");
  option(app, "master-addr", a.master_addr, "Address of the master node (MASTER_ADDR)");
  option(app, "master-port", a.master_port, "Port on the master node (MASTER_PORT)");
  option(app, "local-addr", a.local_addr, "Address of this node (accepted for compatibility)");
  option(app, "log-line-prefix-template", a.log_line_prefix_template,
         "Prefix of teed lines, with ${rank}, ${local_rank}, ${role_name}")
      ->envname("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE");
  flag(app, "virtual-local-rank", a.virtual_local_rank, "Every worker sees LOCAL_RANK=0 and its own device");
  option(app, "signals-to-handle", a.signals_to_handle, "Signals forwarded to the workers");
  option(app, "logs-specs", a.logs_specs, "Name of a registered logs specs (built in: default)");
  app.add_option("--shutdown-timeout,--shutdown_timeout,--term-timeout,--term_timeout", a.shutdown_timeout,
                 "Seconds between the stop signal and SIGKILL when stopping workers (default: "
                 "TORCH_ELASTIC_SHUTDOWN_TIMEOUT, else 30)")
      ->envname("PET_SHUTDOWN_TIMEOUT");
  option(app, "duplicate-stdout-filters", a.duplicate_stdout_filters,
         "Teed stdout lines containing any of these (comma list, ',,' for a comma) also go to "
         "attempt_<n>/filtered_stdout.log");
  option(app, "duplicate-stderr-filters", a.duplicate_stderr_filters,
         "The same for stderr (attempt_<n>/filtered_stderr.log)");
  option(app, "numa-binding", a.numa_binding,
         "Bind each local rank to CPUs near its GPU: node, socket, exclusive or core-complex");
  option(app, "event-log-handler", a.event_log_handler,
         "Where worker status events go: null, or console (one JSON object per line on stderr)");

  // argparse's conveniences first: prefixes spelled out, typos and ambiguities reported.
  std::vector<elastic::launcher::OptionSpelling> spellings;
  for (const CLI::Option* option : app.get_options())
    spellings.push_back({option->get_lnames(), option->get_snames(), option->get_items_expected_max() > 0});
  std::vector<std::string> args;
  try {
    args = elastic::launcher::expand_option_prefixes(std::vector<std::string>(argv + 1, argv + argc), spellings);
  } catch (const UsageError& e) {
    usage_error(e.what());
    return 2;
  }
  std::vector<char*> expanded = {argv[0]};
  for (auto& arg : args) expanded.push_back(arg.data());
  expanded.push_back(nullptr);
  try {
    app.parse(static_cast<int>(expanded.size() - 1), expanded.data());
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    usage_error(e.what());
    return 2;
  }
  a.master_port_given = app.get_option("--master-port")->count() > 0;
  a.rdzv_id_given = app.get_option("--rdzv-id")->count() > 0;
  std::vector<std::string> rest = app.remaining();
  if (!rest.empty() && rest.front() == "--") rest.erase(rest.begin());
  if (rest.empty()) {
    usage_error("the following arguments are required: training_script");
    return 2;
  }
  if (!rest.front().empty() && rest.front()[0] == '-' && rest.front() != "-") {
    usage_error("unrecognized arguments: " + rest.front() + "; see elastic-run --help");
    return 2;
  }
  const std::string script = rest.front();
  const std::vector<std::string> script_args(rest.begin() + 1, rest.end());

  elastic::launcher::LaunchConfig config;
  Command command;
  try {
    config = make_config(a);
    command = make_command(a, script, script_args);
    config.legacy_nccl_async_error_handling =
        !command.direct && elastic::launcher::needs_legacy_nccl_name(command.entrypoint);
    elastic::launcher::validate(config);
  } catch (const UsageError& e) {
    usage_error(e.what());
    return 2;
  }

  if (a.event_log_handler != "null" && a.event_log_handler != "console" &&
      a.event_log_handler != "dynamic_rendezvous") {
    usage_error("--event-log-handler must be null or console, got " + a.event_log_handler);
    return 2;
  }

  std::optional<elastic::multiprocessing::numa::Mode> numa_mode;
  if (!a.numa_binding.empty()) {
    numa_mode = elastic::multiprocessing::numa::parse_mode(a.numa_binding);
    if (!numa_mode) {
      usage_error("--numa-binding must be node, socket, exclusive or core-complex, got " + a.numa_binding);
      return 2;
    }
  }
  // The CPUs of each local rank, found before any worker starts: a binding that cannot be
  // made fails the launch.
  std::map<int, std::set<int>> numa_cpus;
  if (numa_mode) {
    namespace numa = elastic::multiprocessing::numa;
    try {
      const auto gpus = elastic::multiprocessing::gpu_inventory();
      if (gpus.count > 0 && gpus.pci_bus_ids.empty())
        throw numa::NumaError("the GPUs' places need NVML (libnvidia-ml.so.1), which is not available");
      const numa::Topology topology = numa::this_machine(gpus);
      std::vector<int> devices;  // CUDA index -> NVML index
      if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"))
        devices = elastic::multiprocessing::visible_devices(visible, gpus);
      else
        for (int i = 0; i < gpus.count; ++i) devices.push_back(i);
      for (int local_rank = 0; local_rank < config.nproc_per_node; ++local_rank) {
        if (local_rank >= static_cast<int>(devices.size()) || devices[static_cast<std::size_t>(local_rank)] < 0)
          throw numa::NumaError("local rank " + std::to_string(local_rank) + " has no GPU of its own (" +
                                std::to_string(devices.size()) +
                                " visible): NUMA binding places each local rank near the GPU of its index");
        numa_cpus[local_rank] = numa::cpus_for_gpu(topology, *numa_mode, devices[static_cast<std::size_t>(local_rank)]);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "elastic-run: error: NUMA binding (--numa-binding %s): %s\n", a.numa_binding.c_str(),
                   e.what());
      return 1;
    }
  }

  // Node 0 runs rank 0, which hosts the store on the master port: hold the port for the
  // whole job, so that no other job on this host takes it (see port.hpp).
  elastic::launcher::PortReservation port;
  if (config.node_rank == 0 && config.rdzv_backend == "static") {
    try {
      if (config.master_port == 0) {
        port = elastic::launcher::PortReservation::any();
        config.master_port = port.port();
        elastic::log::info("single node without a master port: using port {} and run id {}", config.master_port,
                           config.run_id);
      } else {
        int wanted = config.master_port;
        if (!config.rdzv_endpoint.empty())
          wanted = elastic::launcher::detail::split_endpoint(config.rdzv_endpoint, config.master_port).second;
        port = elastic::launcher::PortReservation::hold(wanted);
      }
    } catch (const elastic::launcher::PortBusyError& e) {
      std::fprintf(stderr,
                   "elastic-run: error: master %s; give another --master-port, or none on a single node to get a free "
                   "one\n",
                   e.what());
      return 1;
    }
  }

  if (std::getenv("OMP_NUM_THREADS") == nullptr && config.nproc_per_node > 1) {
    elastic::log::warning(
        "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system "
        "being overloaded, please further tune the variable for optimal performance in your application as needed.");
    ::setenv("OMP_NUM_THREADS", "1", 1);
  }

  // Worker hang timers, as torchrun serves them when TORCHELASTIC_ENABLE_FILE_TIMER=1.
  std::unique_ptr<elastic::launcher::TimerServer> timers;
  if (const char* enabled = std::getenv("TORCHELASTIC_ENABLE_FILE_TIMER");
      enabled != nullptr && std::string(enabled) == "1") {
    const char* given = std::getenv("TORCHELASTIC_TIMER_FILE");
    const std::string path = given != nullptr && *given != '\0'
                                 ? std::string(given)
                                 : (std::filesystem::temp_directory_path() / ("watchdog_timer_" + new_uuid())).string();
    try {
      timers = std::make_unique<elastic::launcher::TimerServer>(path);
    } catch (const std::system_error& e) {
      std::fprintf(stderr, "elastic-run: error: %s\n", e.what());
      return 1;
    }
    ::setenv("TORCHELASTIC_TIMER_FILE", path.c_str(), 1);
  }
  std::map<int, pid_t> worker_pids;
  const auto started_at = std::chrono::steady_clock::now();
  const bool console_events = a.event_log_handler == "console";
  config.on_workers_started = [&](int, const std::map<int, pid_t>& pids) {
    worker_pids = pids;
    if (timers) timers->set_workers(pids);
    for (const auto& [local_rank, cpus] : numa_cpus)
      if (auto pid = pids.find(local_rank); pid != pids.end()) {
        elastic::multiprocessing::numa::bind_process(pid->second, cpus);
        elastic::log::info("local rank {} (pid {}) bound to CPUs {}", local_rank, pid->second,
                           elastic::multiprocessing::numa::format_ranges(cpus));
      }
  };
  config.on_workers_ended = [&](int restart_count, elastic::multiprocessing::RunProcsResult& result, bool final) {
    if (timers) timers->end_attempt();
    if (timers)
      for (auto& [local_rank, failure] : result.failures)
        if (auto why = timers->expired(failure.pid);
            why && failure.error_file == elastic::not_available && failure.message.is_string())
          failure.message = failure.message.get<std::string>() + ": " + *why;
    if (final && console_events) {
      const long seconds = static_cast<long>(
          std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_at).count());
      for (const auto& event :
           elastic::launcher::worker_status_events(config, command.name, result, worker_pids, restart_count, seconds)) {
        elastic::multiprocessing::Console::of(STDERR_FILENO).write(event.dump() + "\n");
      }
    }
  };

  // From here on the handled signals are only read (through launch's signalfd),
  // never acted on by default: one that comes late cannot cut the summary short.
  sigset_t handled;
  sigemptyset(&handled);
  for (int sig : config.signals_to_handle) sigaddset(&handled, sig);
  ::sigprocmask(SIG_BLOCK, &handled, nullptr);

  // Diagnostics and the summary go through the stderr console to the end (queued,
  // in order with teed output): a stalled reader cannot block what follows the run.
  using elastic::multiprocessing::Console;
  elastic::log::set_sink([](std::string_view line) { Console::of(STDERR_FILENO).write(line); });
  Console& console = Console::of(STDERR_FILENO);
  int code = 0;
  try {
    auto run = elastic::record(
        [&] { return elastic::launcher::launch(config, command.entrypoint, command.args, command.name); });
    run();
  } catch (const elastic::ChildFailedError& e) {
    // format_msg(), not what(): a C string would end the summary at a NUL in a message.
    console.write("elastic.ChildFailedError: " + e.format_msg() + "\n");
    code = 1;
  } catch (const elastic::launcher::SignalException& e) {
    code = 128 + e.signum();
  } catch (const elastic::rendezvous::RendezvousError& e) {
    // PyTorch's class name first, as torchrun's traceback ends with it.
    console.write(std::string("elastic-run: error: ") + e.class_name() + ": " + e.what() + "\n");
    code = 1;
  } catch (const std::system_error& e) {
    std::string hint;
    const int error = e.code().value();
    if (command.direct && (error == EACCES || error == ENOEXEC) &&
        std::string(e.what()).find("cannot start " + command.entrypoint) != std::string::npos)
      hint = " (it is run as a program: make it executable, or run a Python script with a .py name, --run-path or -m)";
    console.write(std::string("elastic-run: error: ") + e.what() + hint + "\n");
    code = 1;
  } catch (const std::exception& e) {
    console.write(std::string("elastic-run: error: ") + e.what() + "\n");
    code = 1;
  }
  // A console that takes nothing for this long is left behind.
  console.flush(elastic::multiprocessing::PContextOptions{}.console_stall_limit);
  return code;
}
