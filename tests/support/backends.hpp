// Test support: the rendezvous backends every launcher promise is checked on, each
// as a job of one node on this host:
//   static  nothing to add;
//   c10d    --nnodes=1:1 over a store the launcher hosts on a free port;
//   etcd    --nnodes=1:1 over one etcd member shared by the test program, each
//           launch with a run id of its own (builds with ELASTIC_WITH_ETCD only).
// A test case takes `const std::string backend = GENERATE(EVERY_BACKEND);` and puts
// `rendezvous_args(backend)` before its own arguments.
#pragma once

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "support/ports.hpp"
#if ELASTIC_WITH_ETCD
#include "support/etcd_server.hpp"
#endif

namespace elastic::testing {

#if ELASTIC_WITH_ETCD
#define EVERY_BACKEND as<std::string>{}, "static", "c10d", "etcd"
#else
#define EVERY_BACKEND as<std::string>{}, "static", "c10d"
#endif

#if ELASTIC_WITH_ETCD
// Started on first use, stopped when the test program ends.
inline EtcdServer& shared_etcd() {
  static EtcdServer server;
  return server;
}
#endif

// The options that make a one-node launch use `backend` (static: none).
inline std::vector<std::string> rendezvous_args(const std::string& backend) {
  static std::atomic<int> launches{0};
  const std::string run_id = "backend-test-" + std::to_string(::getpid()) + "-" + std::to_string(launches++);
  if (backend == "c10d")
    return {"--nnodes=1:1", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:" + std::to_string(free_port()),
            "--rdzv-id=" + run_id};
#if ELASTIC_WITH_ETCD
  if (backend == "etcd")
    return {"--nnodes=1:1", "--rdzv-backend=etcd", "--rdzv-endpoint=" + shared_etcd().endpoint(),
            "--rdzv-id=" + run_id};
#endif
  return {};
}

// `args` after the options of `backend` (a run id in `args` is kept).
inline std::vector<std::string> on_backend(const std::string& backend, const std::vector<std::string>& args) {
  std::vector<std::string> result = rendezvous_args(backend);
  for (const auto& arg : args)
    if (arg.rfind("--rdzv-id", 0) == 0)
      result.erase(std::remove_if(result.begin(), result.end(),
                                  [](const std::string& a) { return a.rfind("--rdzv-id=", 0) == 0; }),
                   result.end());
  result.insert(result.end(), args.begin(), args.end());
  return result;
}

}  // namespace elastic::testing
