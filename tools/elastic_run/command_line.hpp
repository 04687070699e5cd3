// elastic-run's command line: torchrun's options, each in its dash and underscore
// spelling, as an unambiguous prefix, and with a PET_<NAME> environment default;
// turned into a LaunchConfig and the command the workers run.
#pragma once
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

#include "elastic_run/option_prefixes.hpp"
#include "elastic_run/torch_env.hpp"

namespace elastic_run {

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
  bool no_agent_store = false;
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
  std::fprintf(stderr, "elastic-run: error: %s\n", one_line(message).c_str());
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
      if (!launcher::all_digits(port) || std::stoi(port) > 65535)
        throw UsageError("--rdzv-endpoint '" + config.rdzv_endpoint + "': the port must be a number from 0 to 65535");
      // HOST:0, newest torchrun's form for one node: a free port. Static: as if no
      // master port were given (main holds a free one).
      if (std::stoi(port) == 0 && config.rdzv_backend == "static" && !a.standalone) {
        if (config.max_nodes != 1)
          throw UsageError("--rdzv-endpoint '" + config.rdzv_endpoint +
                           "': port 0 (a free port) is for a single node; the other nodes cannot know it");
        a.master_addr = config.rdzv_endpoint.substr(0, colon);
        if (a.master_addr.size() >= 2 && a.master_addr.front() == '[' && a.master_addr.back() == ']')
          a.master_addr = a.master_addr.substr(1, a.master_addr.size() - 2);
        config.rdzv_endpoint.clear();
        a.master_port_given = false;
      }
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
  config.local_addr = a.local_addr;
  config.agent_store = !a.no_agent_store;
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
  // A filter implies --tee=3 when no tee is given, so that the ranks it shows
  // come with their prefixes (torchrun shows them raw).
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

// The end of elastic-run before any launch: --help, --version, or a usage error
// (already printed).
struct ExitNow {
  int code;
};

// What the command line asks for.
struct Invocation {
  Args options;
  elastic::launcher::LaunchConfig config;
  Command command;
};

// Parses argv as torchrun does; throws ExitNow for --help, --version and usage errors
// (printed on one line, exit 2: nothing is started).
inline Invocation parse_command_line(int argc, char** argv) {
  Invocation result;
  Args& a = result.options;
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
  option(app, "local-ranks-filter", a.local_ranks_filter, "Only these local ranks' output reaches the console");
  option(app, "node-rank", a.node_rank, "Rank of this node in a static multi-node job");
  option(app, "master-addr", a.master_addr, "Address of the master node (MASTER_ADDR)");
  option(app, "master-port", a.master_port, "Port on the master node (MASTER_PORT)");
  option(app, "local-addr", a.local_addr,
         "Address of this node: its name in the rendezvous, and MASTER_ADDR where it hosts group rank 0");
  flag(app, "no-agent-store", a.no_agent_store,
       "Worker rank 0 hosts the workers' store (TORCHELASTIC_USE_AGENT_STORE=False) instead of the launcher");
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
  std::vector<OptionSpelling> spellings;
  for (const CLI::Option* option : app.get_options())
    spellings.push_back({option->get_lnames(), option->get_snames(), option->get_items_expected_max() > 0});
  std::vector<std::string> args;
  try {
    args = expand_option_prefixes(std::vector<std::string>(argv + 1, argv + argc), spellings);
  } catch (const UsageError& e) {
    usage_error(e.what());
    throw ExitNow{2};
  }
  std::vector<char*> expanded = {argv[0]};
  for (auto& arg : args) expanded.push_back(arg.data());
  expanded.push_back(nullptr);
  try {
    app.parse(static_cast<int>(expanded.size() - 1), expanded.data());
  } catch (const CLI::Success& e) {  // --help, --version
    throw ExitNow{app.exit(e)};
  } catch (const CLI::ParseError& e) {
    usage_error(e.what());
    throw ExitNow{2};
  }
  a.master_port_given = app.get_option("--master-port")->count() > 0;
  a.rdzv_id_given = app.get_option("--rdzv-id")->count() > 0;
  std::vector<std::string> rest = app.remaining();
  if (!rest.empty() && rest.front() == "--") rest.erase(rest.begin());
  if (rest.empty()) {
    usage_error("the following arguments are required: training_script");
    throw ExitNow{2};
  }
  if (!rest.front().empty() && rest.front()[0] == '-' && rest.front() != "-") {
    usage_error("unrecognized arguments: " + rest.front() + "; see elastic-run --help");
    throw ExitNow{2};
  }
  const std::string script = rest.front();
  const std::vector<std::string> script_args(rest.begin() + 1, rest.end());
  try {
    result.config = make_config(a);
    result.command = make_command(a, script, script_args);
    result.config.legacy_nccl_async_error_handling =
        !result.command.direct && needs_legacy_nccl_name(result.command.entrypoint);
    elastic::launcher::validate(result.config);
    if (a.event_log_handler != "null" && a.event_log_handler != "console" &&
        a.event_log_handler != "dynamic_rendezvous")
      throw UsageError("--event-log-handler must be null or console, got " + a.event_log_handler);
    if (!a.numa_binding.empty() && !elastic::multiprocessing::numa::parse_mode(a.numa_binding))
      throw UsageError("--numa-binding must be node, socket, exclusive or core-complex, got " + a.numa_binding);
  } catch (const UsageError& e) {
    usage_error(e.what());
    throw ExitNow{2};
  }
  return result;
}

}  // namespace elastic_run
