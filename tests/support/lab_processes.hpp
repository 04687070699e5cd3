// Test support: the processes of a network lab (support/netlab.hpp): a program
// run on one host in the background (a launcher, torchrun), the members of an etcd
// cluster on the lab's hosts, and the certificates of one served over TLS. Every
// process dies with the test program (PR_SET_PDEATHSIG), so a test killed by its
// time limit leaves none behind.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "support/launcher.hpp"
#include "support/netlab.hpp"
#include "support/subprocess.hpp"

namespace elastic::testing {

// A program (argv[0] its path) run on one host of the lab in the background;
// stdout and stderr to `log_prefix`.out and .err.
class LabLaunch {
 public:
  LabLaunch(const NetLab& lab, int host, const std::vector<std::string>& argv, const std::string& log_prefix,
            const std::map<std::string, std::string>& env = {})
      : err_file_(log_prefix + ".err") {
    RunOptions options = quiet_launch_options();
    for (const auto& [k, v] : env) options.set_env[k] = v;
    ChildSetup setup;
    setup.die_with_parent = true;
    setup.out = ::open((log_prefix + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    setup.err = ::open(err_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    pid_ = start_child(lab.command(host, argv), make_environment(with_scratch_tmpdir(options)), setup);
    ::close(setup.out);
    ::close(setup.err);
  }
  // One the test did not see end is stopped (its workers with it).
  ~LabLaunch() {
    if (!exited()) stop();
  }
  LabLaunch(const LabLaunch&) = delete;
  LabLaunch& operator=(const LabLaunch&) = delete;

  pid_t pid() const { return pid_; }
  // Whether it has exited (reaped here).
  bool exited() {
    if (reaped_) return true;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) != pid_) return false;
    reaped_ = true;
    code_ = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
    return true;
  }
  // Exit code (negative: signal), or 1000 when it was stopped by stop() or wait().
  int code() const { return code_; }
  // Waits for the exit; past `timeout` it is SIGKILLed and 1000 returned.
  int wait(std::chrono::milliseconds timeout) {
    if (wait_until([&] { return exited(); }, timeout)) return code_;
    kill_now();
    return code_;
  }
  // SIGTERM (it stops its workers), SIGKILL 15 s later.
  void stop() {
    ::kill(pid_, SIGTERM);
    if (!wait_until([&] { return exited(); }, std::chrono::seconds(15))) kill_now();
    code_ = 1000;
  }
  std::string err() const { return read_file(err_file_); }
  // Its children now (a launcher's workers and helpers).
  std::set<pid_t> children() const {
    std::set<pid_t> pids;
    std::ifstream in("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) + "/children");
    for (pid_t p; in >> p;) pids.insert(p);
    return pids;
  }

 private:
  void kill_now() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    code_ = 1000;
  }

  std::string err_file_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int code_ = 0;
};

// Certificates for an etcd cluster on the lab's hosts, made with openssl(1): a CA,
// one server certificate for every member's address, one client certificate.
struct LabCertificates {
  explicit LabCertificates(const TempDir& dir, int members)
      : ca(dir.file("ca.pem")),
        server(dir.file("server.pem")),
        server_key(dir.file("server.key")),
        client(dir.file("client.pem")),
        client_key(dir.file("client.key")) {
    std::string names;
    for (int h = 1; h <= members; ++h) names += (h > 1 ? ",IP:" : "IP:") + NetLab::address(h);
    write_file(dir.file("server.ext"), "subjectAltName=" + names + "\nextendedKeyUsage=serverAuth,clientAuth\n");
    write_file(dir.file("client.ext"), "extendedKeyUsage=clientAuth\n");
    const std::vector<std::string> ec{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"};
    openssl({"req", "-x509", "-days", "2", "-subj", "/CN=lab-ca", "-keyout", dir.file("ca.key"), "-out", ca}, ec);
    for (const auto& [cert, key, ext] : {std::tuple{server, server_key, dir.file("server.ext")},
                                         std::tuple{client, client_key, dir.file("client.ext")}}) {
      openssl({"req", "-subj", "/CN=lab", "-keyout", key, "-out", cert + ".csr"}, ec);
      openssl({"x509", "-req", "-days", "2", "-in", cert + ".csr", "-CA", ca, "-CAkey", dir.file("ca.key"),
               "-CAcreateserial", "-extfile", ext, "-out", cert},
              {});
    }
  }
  std::string ca, server, server_key, client, client_key;

 private:
  static void openssl(std::vector<std::string> args, const std::vector<std::string>& more) {
    args.insert(args.begin(), "/usr/bin/openssl");
    args.insert(args.end(), more.begin(), more.end());
    auto r = run(args);
    if (r.exitcode != 0) throw std::runtime_error("openssl " + args[1] + " failed: " + r.err);
  }
};

// One member of an etcd cluster on a lab host, killed (and reaped) at the end;
// with `tls`, its clients are served over https and must show a client certificate.
class EtcdMember {
 public:
  EtcdMember(const NetLab& lab, int host, int members, const TempDir& dir, const LabCertificates* tls = nullptr) {
    auto url = [](const char* scheme, int h, int port) {
      return std::string(scheme) + "://" + NetLab::address(h) + ":" + std::to_string(port);
    };
    const char* client_scheme = tls ? "https" : "http";
    std::string cluster;
    for (int h = 1; h <= members; ++h) cluster += (h > 1 ? "," : "") + NetLab::name(h) + "=" + url("http", h, 2380);
    std::vector<std::string> argv{"/usr/bin/etcd",
                                  "--name=" + NetLab::name(host),
                                  "--data-dir=" + dir.file("etcd-" + NetLab::name(host)),
                                  "--listen-client-urls=" + url(client_scheme, host, 2379),
                                  "--advertise-client-urls=" + url(client_scheme, host, 2379),
                                  "--listen-peer-urls=" + url("http", host, 2380),
                                  "--initial-advertise-peer-urls=" + url("http", host, 2380),
                                  "--initial-cluster=" + cluster,
                                  "--initial-cluster-state=new"};
    if (tls)
      argv.insert(argv.end(), {"--cert-file=" + tls->server, "--key-file=" + tls->server_key,
                               "--trusted-ca-file=" + tls->ca, "--client-cert-auth"});
    ChildSetup setup;
    log_ = dir.file("etcd-" + NetLab::name(host) + ".log");
    setup.out = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    setup.err = setup.out;
    setup.die_with_parent = true;
    pid_ = start_child(lab.command(host, argv), make_environment(RunOptions{}), setup);
    ::close(setup.out);
  }
  ~EtcdMember() { kill(); }
  EtcdMember(const EtcdMember&) = delete;
  EtcdMember& operator=(const EtcdMember&) = delete;
  const std::string& log() const { return log_; }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

}  // namespace elastic::testing
