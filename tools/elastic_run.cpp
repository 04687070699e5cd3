// elastic-run: torchrun's command line over elastic::launch. Every option takes
// its dash or underscore spelling and a PET_<NAME> environment default.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <elastic/errors.hpp>
#include <elastic/launcher.hpp>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
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
  double term_timeout = 30;
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

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 29500;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 29500;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
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
  for (int sig = 1; sig < NSIG; ++sig)
    if (elastic::signal_name(sig) == name) return sig;
  throw UsageError("--signals-to-handle: unknown signal " + name);
}

struct Command {
  std::string entrypoint;
  std::vector<std::string> args;
  std::string name;
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
  }
  command.name = script;
  command.args.insert(command.args.end(), script_args.begin(), script_args.end());
  return command;
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
  if (a.standalone) {
    if (config.max_nodes != 1) throw launcher::NotSupportedError("--standalone with more than one node");
    config.rdzv_backend = "static";
    config.rdzv_endpoint.clear();
    config.master_addr = "localhost";
    config.master_port = free_port();
    config.run_id = new_uuid();
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
  // Converting NaN, infinity or a huge value to an integer is undefined: refuse them.
  if (!(a.term_timeout >= 0 && a.term_timeout <= 1e9))
    throw UsageError("--term-timeout must be a number of seconds between 0 and 1e9");
  config.term_timeout = std::chrono::milliseconds(static_cast<long long>(a.term_timeout * 1000));
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
  option(app, "term-timeout", a.term_timeout, "Seconds between SIGTERM and SIGKILL when stopping workers");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "elastic-run: error: %s\n", e.what());
    return 2;
  }
  std::vector<std::string> rest = app.remaining();
  if (!rest.empty() && rest.front() == "--") rest.erase(rest.begin());
  if (rest.empty()) {
    std::fprintf(stderr, "elastic-run: error: the following arguments are required: training_script\n");
    return 2;
  }
  if (!rest.front().empty() && rest.front()[0] == '-' && rest.front() != "-") {
    std::fprintf(stderr, "elastic-run: error: unrecognized arguments: %s\n", rest.front().c_str());
    return 2;
  }
  const std::string script = rest.front();
  const std::vector<std::string> script_args(rest.begin() + 1, rest.end());

  elastic::launcher::LaunchConfig config;
  Command command;
  try {
    config = make_config(a);
    command = make_command(a, script, script_args);
    elastic::launcher::validate(config);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "elastic-run: error: %s\n", e.what());
    return 2;
  }

  if (std::getenv("OMP_NUM_THREADS") == nullptr && config.nproc_per_node > 1) {
    elastic::log::detail::write_line(
        elastic::log::Level::warning,
        "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system "
        "being overloaded, please further tune the variable for optimal performance in your application as needed.");
    ::setenv("OMP_NUM_THREADS", "1", 1);
  }

  // From here on the handled signals are only read (through launch's signalfd),
  // never acted on by default: one that comes late cannot cut the summary short.
  sigset_t handled;
  sigemptyset(&handled);
  for (int sig : config.signals_to_handle) sigaddset(&handled, sig);
  ::sigprocmask(SIG_BLOCK, &handled, nullptr);

  // Diagnostics and the summary go through the stderr console to the end (queued,
  // in order with teed output): a stalled reader cannot block what follows the run.
  using elastic::multiprocessing::Console;
  elastic::log::detail::sink.store([](std::string_view line) { Console::of(STDERR_FILENO).write(line); });
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
  } catch (const std::exception& e) {
    console.write(std::string("elastic-run: error: ") + e.what() + "\n");
    code = 1;
  }
  // A console that takes nothing for this long is left behind.
  console.flush(elastic::multiprocessing::PContextOptions{}.console_stall_limit);
  return code;
}
