// A hostile stand-in for etcd's JSON gateway (tests/python/hostile_etcd_gateway.py)
// in the background on loopback, killed at the end of the scope.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "support/subprocess.hpp"

namespace elastic::testing {

class HostileEtcdGateway {
 public:
  // `upstream_port`: the etcd that mode "swallow" hands requests to.
  explicit HostileEtcdGateway(const std::string& mode, int upstream_port = 0) {
    const std::string port_file = dir_.file("port");
    std::vector<std::string> argv{elastic::testing::system_python(), ELASTIC_TEST_PYTHON_DIR "/hostile_etcd_gateway.py",
                                  mode, port_file};
    if (upstream_port > 0) argv.push_back(std::to_string(upstream_port));
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (::posix_spawn(&pid_, args[0], nullptr, nullptr, args.data(), environ) != 0) pid_ = -1;
    for (int i = 0; i < 300 && port_ == 0; ++i) {
      if (std::ifstream(port_file).good()) port_ = std::stoi(elastic::testing::read_file(port_file));
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~HostileEtcdGateway() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }

 private:
  elastic::testing::TempDir dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace elastic::testing
