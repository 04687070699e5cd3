// Test support: a real etcd server (Debian's etcd-server) of one member, on free
// loopback ports with a data directory of its own; stopped and removed at the end
// of the scope. It can be stopped and started again on the same ports and data
// (a restart under running clients) or frozen with SIGSTOP.
#pragma once

#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/ports.hpp"
#include "support/subprocess.hpp"

namespace elastic::testing {

inline const char* etcd_binary() { return "/usr/bin/etcd"; }

// GET /health answers {"health":"true"} once the member has a leader.
inline bool etcd_healthy(int client_port) {
  if (!tcp_port_open(client_port)) return false;
  httplib::Client client("127.0.0.1", client_port);
  client.set_connection_timeout(std::chrono::seconds(2));
  client.set_read_timeout(std::chrono::seconds(2));
  auto result = client.Get("/health");
  return result && result->status == 200 && result->body.find("\"true\"") != std::string::npos;
}

class EtcdServer {
 public:
  EtcdServer() { start(); }
  ~EtcdServer() { stop(); }
  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;

  int client_port() const { return client_port_; }
  std::string host() const { return "127.0.0.1"; }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  std::string url() const { return "http://" + endpoint(); }
  pid_t pid() const { return pid_; }
  std::string log() const {
    try {
      return read_file(dir_.file("etcd.log"));
    } catch (const std::exception&) {
      return {};
    }
  }

  // Starts it (again, on the same ports and data after stop()) and waits until
  // healthy. etcd is killed when the thread that started it ends (so it never
  // outlives a killed test): call from a thread that outlives the server.
  void start() {
    for (int attempt = 0; attempt < 3; ++attempt) {
      if (client_port_ == 0 || attempt > 0) {
        client_port_ = free_port();
        peer_port_ = free_port();
        if (peer_port_ == client_port_) continue;
      }
      spawn();
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (std::chrono::steady_clock::now() < deadline && exited() == false) {
        if (etcd_healthy(client_port_)) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      stop();  // it died (a port taken meanwhile) or never got healthy: new ports
      if (restarted_) break;
    }
    throw std::runtime_error("etcd did not become healthy; its log:\n" + log());
  }

  // Kills it (SIGKILL, as a crash) and reaps it; the data directory stays.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    restarted_ = true;
  }

  void freeze() { ::kill(pid_, SIGSTOP); }
  void thaw() { ::kill(pid_, SIGCONT); }

 private:
  bool exited() {
    int status = 0;
    if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return true;
    }
    return pid_ <= 0;
  }

  void spawn() {
    std::string client_url = "http://127.0.0.1:" + std::to_string(client_port_);
    std::string peer_url = "http://127.0.0.1:" + std::to_string(peer_port_);
    std::vector<std::string> argv = {etcd_binary(),
                                     "--name=test",
                                     "--data-dir=" + dir_.file("data"),
                                     "--listen-client-urls=" + client_url,
                                     "--advertise-client-urls=" + client_url,
                                     "--listen-peer-urls=" + peer_url,
                                     "--initial-advertise-peer-urls=" + peer_url,
                                     "--initial-cluster=test=" + peer_url,
                                     "--initial-cluster-state=new"};
    ChildSetup setup;
    setup.out = ::open(dir_.file("etcd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    setup.err = setup.out;
    setup.in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    // Dies with the test program, even when that is killed.
    setup.die_with_parent = true;
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    pid_ = start_child(argv, env, setup);
    ::close(setup.out);
    ::close(setup.in);
  }

  TempDir dir_;
  int client_port_ = 0;
  int peer_port_ = 0;
  pid_t pid_ = -1;
  bool restarted_ = false;
};

}  // namespace elastic::testing
