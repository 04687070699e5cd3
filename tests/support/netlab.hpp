// Test support: a lab of hosts on one machine. Each host is a Linux network
// namespace with its own address (10.79.0.11, .12, ...) on a veth pair whose other
// end is in a bridge of a "switch" namespace; nothing is added to the machine's own
// namespace, so labs of concurrent tests never meet. A host's programs run through
// `ip netns exec` (which also puts /etc/netns/<ns>/hosts over /etc/hosts for them)
// and `unshare -u` with the host's name set, so gethostname() and name lookups see
// the host, not the machine. A link is cut by setting the host's interface down:
// its packets go nowhere, no connection is reset. This kernel has no netem qdisc:
// delay, loss and one-way cuts come from relay() (support/link_relay.hpp), a tap
// pair with a user-space relay in place of one host's veth pair.
//
// Everything is removed when the lab is destroyed; namespaces left by a test
// program that was killed are removed by the next lab (their names carry the pid).
// When namespaces cannot be made here, NetLab::unavailable() says why.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/link_relay.hpp"
#include "support/subprocess.hpp"

namespace elastic::testing {

class NetLab {
 public:
  // How the hosts' names resolve on the hosts themselves.
  enum class Names {
    addresses,  // every host name resolves to that host's lab address, everywhere
    loopback,   // a host's own name resolves to 127.0.0.1 on it (as in many images)
  };

  // Why no lab can be made here, or nothing when one can.
  static std::optional<std::string> unavailable() {
    if (::geteuid() != 0) return "network namespaces need root";
    if (!std::filesystem::exists("/usr/bin/unshare") && !std::filesystem::exists("/bin/unshare"))
      return "unshare(1) is not installed";
    const std::string probe = "elab-probe-" + std::to_string(::getpid());
    auto r = ip({"netns", "add", probe});
    if (r.exitcode != 0) return "cannot make a network namespace: " + r.err;
    auto veth = ip({"-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0"});
    ip({"netns", "del", probe});
    if (veth.exitcode != 0) return "cannot make a veth pair: " + veth.err;
    return std::nullopt;
  }

  explicit NetLab(int hosts, Names names = Names::addresses) {
    static int labs = 0;
    prefix_ = "elab-" + std::to_string(::getpid()) + "-" + std::to_string(labs++);
    sweep_stale();
    try {
      must({"netns", "add", switch_ns()});
      must({"-n", switch_ns(), "link", "add", "br0", "type", "bridge"});
      must({"-n", switch_ns(), "link", "set", "br0", "up"});
      for (int i = 1; i <= hosts; ++i) {
        const std::string ns = host_ns(i);
        must({"netns", "add", ns});
        made_.push_back(ns);
        const std::string port = "p" + std::to_string(i);
        must({"-n", switch_ns(), "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns});
        must({"-n", switch_ns(), "link", "set", port, "master", "br0"});
        must({"-n", switch_ns(), "link", "set", port, "up"});
        must({"-n", ns, "addr", "add", address(i) + "/24", "dev", "eth0"});
        must({"-n", ns, "link", "set", "eth0", "up"});
        must({"-n", ns, "link", "set", "lo", "up"});
      }
      for (int i = 1; i <= hosts; ++i) {
        std::string text = names == Names::loopback ? "127.0.0.1 localhost " + name(i) + "\n" : "127.0.0.1 localhost\n";
        for (int j = 1; j <= hosts; ++j)
          if (names == Names::addresses || j != i) text += address(j) + " " + name(j) + "\n";
        const auto dir = etc_dir(host_ns(i));
        std::filesystem::create_directories(dir);
        write_file(dir + "/hosts", text);
      }
      hosts_ = hosts;
    } catch (...) {
      remove();
      throw;
    }
  }
  ~NetLab() { remove(); }
  NetLab(const NetLab&) = delete;
  NetLab& operator=(const NetLab&) = delete;

  static std::string name(int host) { return "h" + std::to_string(host); }
  static std::string address(int host) { return "10.79.0." + std::to_string(10 + host); }
  std::string host_ns(int host) const { return prefix_ + "-" + name(host); }

  // `argv` as run on `host`: in its network namespace, with its /etc/hosts and name.
  std::vector<std::string> command(int host, const std::vector<std::string>& argv) const {
    std::vector<std::string> full{"ip",      "netns", "exec",    host_ns(host), "unshare",
                                  "-u",      "--",    "/bin/sh", "-c",          "hostname \"$0\" && exec \"$@\"",
                                  name(host)};
    full.insert(full.end(), argv.begin(), argv.end());
    return full;
  }

  // Cuts `host` off the switch (its interface goes down) or joins it again.
  void cut(int host) { must({"-n", host_ns(host), "link", "set", "eth0", "down"}); }
  void restore(int host) { must({"-n", host_ns(host), "link", "set", "eth0", "up"}); }

  // Why no relayed link (relay()) can be made here, or nothing when one can.
  static std::optional<std::string> relay_unavailable() {
    if (auto why = unavailable()) return why;
    if (!std::filesystem::exists("/dev/net/tun")) return "/dev/net/tun does not exist";
    const std::string probe = "elab-probe-" + std::to_string(::getpid());
    ip({"netns", "add", probe});
    auto tap = ip({"-n", probe, "tuntap", "add", "dev", "t0", "mode", "tap"});
    ip({"netns", "del", probe});
    if (tap.exitcode != 0) return "cannot make a tap device: " + tap.err;
    return std::nullopt;
  }

  // Replaces `host`'s veth link by two taps with a LinkRelay between them, which
  // then delays, drops or cuts its frames as set; the host keeps its address and
  // name. Destroy the relay before the lab (declare it after the lab).
  std::unique_ptr<LinkRelay> relay(int host) {
    const std::string ns = host_ns(host), port = "p" + std::to_string(host);
    must({"-n", switch_ns(), "link", "del", port});  // its peer, the host's eth0, goes too
    must({"-n", ns, "tuntap", "add", "dev", "eth0", "mode", "tap"});
    must({"-n", switch_ns(), "tuntap", "add", "dev", port, "mode", "tap"});
    must({"-n", switch_ns(), "link", "set", port, "master", "br0"});
    must({"-n", switch_ns(), "link", "set", port, "up"});
    must({"-n", ns, "addr", "add", address(host) + "/24", "dev", "eth0"});
    must({"-n", ns, "link", "set", "eth0", "up"});
    return std::make_unique<LinkRelay>(ns, "eth0", switch_ns(), port);
  }

 private:
  static RunResult ip(std::vector<std::string> args) {
    args.insert(args.begin(), "ip");
    RunOptions options;
    options.timeout = std::chrono::seconds(20);
    return run(args, options);
  }
  static void must(const std::vector<std::string>& args) {
    auto r = ip(args);
    if (r.exitcode != 0) {
      std::string line = "ip";
      for (const auto& a : args) line += " " + a;
      throw std::runtime_error(line + " failed: " + r.err);
    }
  }
  static std::string etc_dir(const std::string& ns) { return "/etc/netns/" + ns; }
  std::string switch_ns() const { return prefix_ + "-sw"; }

  static void delete_ns(const std::string& ns) {
    ip({"netns", "del", ns});
    std::error_code ec;
    std::filesystem::remove_all(etc_dir(ns), ec);
  }

  void remove() {
    for (const auto& ns : made_) delete_ns(ns);
    made_.clear();
    delete_ns(switch_ns());
  }

  // Namespaces of labs whose test program is gone (killed before it could clean up).
  static void sweep_stale() {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
      const std::string ns = entry.path().filename().string();
      if (ns.rfind("elab-", 0) != 0) continue;
      const long pid = std::atol(ns.c_str() + 5);
      if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) delete_ns(ns);
    }
  }

  std::string prefix_;
  std::vector<std::string> made_;
  int hosts_ = 0;
};

}  // namespace elastic::testing
