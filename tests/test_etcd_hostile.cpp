// A hostile etcd gateway on loopback (tests/python/hostile_etcd_gateway.py): an
// answer nested 100,000 deep, an endless answer, an answer dripped a byte a second.
// The client refuses each within its bounds, and cancel() ends a blocked request.
#include <catch2/catch.hpp>
#include <elastic/rendezvous/etcd_store.hpp>
#include <fstream>
#include <future>
#include <thread>

#include "support/hostile_etcd_gateway.hpp"
#include "support/subprocess.hpp"

using elastic::rendezvous::detail::EtcdClient;
using elastic::rendezvous::detail::EtcdClientOptions;
using elastic::rendezvous::detail::EtcdUnreachableError;
using elastic::testing::HostileEtcdGateway;
using namespace std::chrono_literals;

namespace {

EtcdClientOptions options_for(int port, std::chrono::milliseconds read_timeout) {
  EtcdClientOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.read_timeout = read_timeout;
  return o;
}

// The peak resident set of this process so far (VmHWM): what an attack cost at its worst.
long rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

}  // namespace

TEST_CASE("hostile etcd gateway: an answer nested 100,000 deep is refused, no crash") {
  HostileEtcdGateway gateway("deep");
  REQUIRE(gateway.port() != 0);
  EtcdClient client(options_for(gateway.port(), 5s));
  CHECK_THROWS_WITH(client.get("k"), Catch::Contains("nested deeper than"));
}

TEST_CASE("hostile etcd gateway: an endless answer is cut at the answer limit") {
  HostileEtcdGateway gateway("endless");
  REQUIRE(gateway.port() != 0);
  const long before = rss_kib();
  EtcdClient client(options_for(gateway.port(), 30s));
  CHECK_THROWS_WITH(client.get("k"), Catch::Contains("an answer larger than"));
  const long grown = rss_kib() - before;
  WARN("peak RSS growth for an endless etcd answer: " << grown << " KiB (limit 16 MiB of answer)");
  CHECK(grown < 128 * 1024);
}

TEST_CASE("hostile etcd gateway: an answer dripped a byte a second ends at read_timeout for the whole request") {
  HostileEtcdGateway gateway("drip");
  REQUIRE(gateway.port() != 0);
  EtcdClient client(options_for(gateway.port(), 3s));
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(client.get("k"), Catch::Contains("within read_timeout"));
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  WARN("dripped etcd answer ended after " << took.count() << " ms (read_timeout 3 s)");
  CHECK(took < 30s);  // unbounded, it runs 1000 s
}

TEST_CASE("hostile etcd gateway: cancel() ends a request blocked on a dripping answer") {
  HostileEtcdGateway gateway("drip");
  REQUIRE(gateway.port() != 0);
  EtcdClient client(options_for(gateway.port(), 60s));
  auto blocked = std::async(std::launch::async, [&] {
    try {
      client.get("k");
    } catch (const EtcdUnreachableError& e) {
      return std::string(e.what());
    }
    return std::string("answered");
  });
  std::this_thread::sleep_for(1s);
  const auto start = std::chrono::steady_clock::now();
  client.cancel();
  REQUIRE(blocked.wait_for(30s) == std::future_status::ready);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  WARN("cancel() ended the blocked request after " << took.count() << " ms");
  CHECK_THAT(blocked.get(), Catch::Contains("cancelled"));
}
