// The etcd v3 JSON-gateway client against a real etcd-server started per test.
#include <atomic>
#include <catch2/catch.hpp>
#include <elastic/rendezvous/detail/etcd_client.hpp>
#include <thread>

#include "support/etcd_server.hpp"
#include "support/hostile_etcd_gateway.hpp"

using elastic::rendezvous::detail::base64_decode;
using elastic::rendezvous::detail::base64_encode;
using elastic::rendezvous::detail::etcd_prefix_end;
using elastic::rendezvous::detail::EtcdClient;
using elastic::rendezvous::detail::EtcdClientOptions;
using elastic::rendezvous::detail::EtcdEvent;
using elastic::rendezvous::detail::EtcdOutcomeUnknownError;
using elastic::rendezvous::detail::EtcdUnreachableError;
using elastic::rendezvous::detail::EtcdWatchEnd;
using elastic::testing::EtcdServer;
using namespace std::chrono_literals;

namespace {

EtcdClientOptions options_for(const EtcdServer& server, std::chrono::milliseconds read_timeout = 10s) {
  EtcdClientOptions options;
  options.host = server.host();
  options.port = server.client_port();
  options.read_timeout = read_timeout;
  return options;
}

// A cluster of two: the gateway `first` in front (tried first), then `server`.
EtcdClientOptions behind(const elastic::testing::HostileEtcdGateway& first, const EtcdServer& server,
                         std::chrono::milliseconds member_timeout) {
  EtcdClientOptions options = options_for(server, 30s);
  options.port = first.port();
  options.more_endpoints = {{server.host(), server.client_port()}};
  options.member_timeout = member_timeout;
  return options;
}

}  // namespace

TEST_CASE("base64 round-trips every byte and pads as RFC 4648") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(base64_encode("foob") == "Zm9vYg==");
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  CHECK(base64_decode(base64_encode(all)) == all);
  CHECK_THROWS_AS(base64_decode("a*b="), std::invalid_argument);
  CHECK(etcd_prefix_end("/a/") == "/a0");
  CHECK(etcd_prefix_end(std::string("a\xff", 2)) == "b");
}

TEST_CASE("etcd client: put, range, prefix range, delete") {
  EtcdServer server;
  EtcdClient client(options_for(server));
  CHECK_FALSE(client.get("/k").has_value());
  auto revision = client.put("/k", std::string("v\0w", 3));
  CHECK(revision > 0);
  auto kv = client.get("/k");
  REQUIRE(kv);
  CHECK(kv->value == std::string("v\0w", 3));
  CHECK(kv->mod_revision == revision);
  CHECK(kv->create_revision == revision);
  CHECK(kv->version == 1);
  client.put("/k2", "x");
  client.put("/l", "y");
  auto under_k = client.range("/k", etcd_prefix_end("/k"));
  REQUIRE(under_k.kvs.size() == 2);
  CHECK(under_k.kvs[0].key == "/k");
  CHECK(under_k.kvs[1].key == "/k2");
  CHECK(client.delete_range("/k", etcd_prefix_end("/k")) == 2);
  CHECK(client.delete_range("/k") == 0);
  CHECK(client.get("/l")->value == "y");
  CHECK(client.healthy());
}

TEST_CASE("etcd client: compare-and-put on mod_revision and on absence") {
  EtcdServer server;
  EtcdClient client(options_for(server));
  auto created = client.put_if_mod_revision("/cas", "one", 0);
  CHECK(created.succeeded);
  auto again = client.put_if_mod_revision("/cas", "two", 0);
  CHECK_FALSE(again.succeeded);
  REQUIRE(again.current);
  CHECK(again.current->value == "one");
  auto stale = client.put_if_mod_revision("/cas", "two", created.revision - 1);
  CHECK_FALSE(stale.succeeded);
  auto fresh = client.put_if_mod_revision("/cas", "two", created.revision);
  CHECK(fresh.succeeded);
  CHECK(client.get("/cas")->value == "two");
  CHECK_FALSE(client.put_if_value("/cas", "three", "one").succeeded);
  CHECK(client.put_if_value("/cas", "three", "two").succeeded);
  CHECK_FALSE(client.delete_if_mod_revision("/cas", fresh.revision));
  CHECK(client.delete_if_mod_revision("/cas", client.get("/cas")->mod_revision));
  CHECK_FALSE(client.get("/cas"));
}

TEST_CASE("etcd client: concurrent compare-and-put from threads loses no increment") {
  EtcdServer server;
  constexpr int threads = 4, increments = 25;
  std::vector<std::thread> workers;
  std::atomic<int> conflicts{0};
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&] {
      EtcdClient client(options_for(server));
      for (int i = 0; i < increments; ++i) {
        for (;;) {
          auto current = client.get("/counter");
          std::int64_t value = current ? std::stoll(current->value) : 0;
          auto result =
              client.put_if_mod_revision("/counter", std::to_string(value + 1), current ? current->mod_revision : 0);
          if (result.succeeded) break;
          ++conflicts;
        }
      }
    });
  for (auto& worker : workers) worker.join();
  EtcdClient client(options_for(server));
  CHECK(client.get("/counter")->value == std::to_string(threads * increments));
}

TEST_CASE("etcd client: a key on a lease dies with it, and a watcher sees the deletion") {
  EtcdServer server;
  EtcdClient client(options_for(server));
  auto lease = client.lease_grant(2);
  client.put("/node", "alive", lease);
  CHECK(client.lease_keepalive(lease));
  auto start = client.range("/node").revision + 1;
  std::vector<EtcdEvent> seen;
  // The lease is no longer renewed: etcd deletes the key when it expires.
  auto end = client.watch("/node", "", start, std::chrono::steady_clock::now() + 60s, [&](const auto& events) {
    seen.insert(seen.end(), events.begin(), events.end());
    return !seen.back().deleted;
  });
  CHECK(end == EtcdWatchEnd::stopped);
  REQUIRE_FALSE(seen.empty());
  CHECK(seen.back().deleted);
  CHECK(seen.back().kv.key == "/node");
  CHECK_FALSE(client.get("/node"));
  CHECK_FALSE(client.lease_keepalive(lease));  // expired: no TTL in the answer
  CHECK(client.lease_time_to_live(lease) == -1);
  client.lease_revoke(lease);  // already gone: no error
}

TEST_CASE("etcd client: revoking a lease deletes its keys") {
  EtcdServer server;
  EtcdClient client(options_for(server));
  auto lease = client.lease_grant(60);
  client.put("/a", "1", lease);
  client.put("/b", "2", lease);
  CHECK(client.lease_time_to_live(lease) > 0);
  client.lease_revoke(lease);
  CHECK_FALSE(client.get("/a"));
  CHECK_FALSE(client.get("/b"));
}

TEST_CASE("etcd client: a watch sees puts of other clients at once and ends at its deadline") {
  EtcdServer server;
  EtcdClient client(options_for(server));
  auto start = client.range("/w").revision + 1;
  std::thread writer([&] {
    EtcdClient other(options_for(server));
    std::this_thread::sleep_for(200ms);
    other.put("/w/1", "a");
    other.put("/w/2", "b");
  });
  std::vector<std::string> keys;
  auto end = client.watch("/w/", etcd_prefix_end("/w/"), start, std::chrono::steady_clock::now() + 60s,
                          [&](const auto& events) {
                            for (const auto& event : events) keys.push_back(event.kv.key + "=" + event.kv.value);
                            return keys.size() < 2;
                          });
  writer.join();
  CHECK(end == EtcdWatchEnd::stopped);
  CHECK(keys == std::vector<std::string>{"/w/1=a", "/w/2=b"});
  // Nothing changes: the watch returns at its deadline.
  auto quiet =
      client.watch("/nothing", "", 0, std::chrono::steady_clock::now() + 300ms, [](const auto&) { return true; });
  CHECK(quiet == EtcdWatchEnd::deadline);
}

TEST_CASE("etcd client: a server that is gone fails within the read timeout with a clear error") {
  int port = 0;
  {
    EtcdServer server;
    port = server.client_port();
  }
  EtcdClientOptions options;
  options.port = port;
  options.read_timeout = 1s;
  EtcdClient client(options);
  auto started = std::chrono::steady_clock::now();
  try {
    client.put("/k", "v");
    FAIL("no error");
  } catch (const EtcdUnreachableError& error) {
    CHECK_THAT(error.what(), Catch::Contains("etcd at http://127.0.0.1:" + std::to_string(port) + " is unreachable"));
  }
  CHECK(std::chrono::steady_clock::now() - started < 30s);  // bounded, never a hang
  // A watch refused is interrupted, not an error: its caller reads again, and that
  // read waits for etcd within the read timeout.
  auto end = client.watch("/k", "", 0, std::chrono::steady_clock::now() + 30s, [](const auto&) { return true; });
  CHECK(end == EtcdWatchEnd::interrupted);
}

TEST_CASE("etcd client: a client rides out an etcd restart shorter than its read timeout") {
  EtcdServer server;
  EtcdClient client(options_for(server, 60s));
  client.put("/persist", "1");
  server.stop();
  // Refused connections are tried again until the read timeout: the request lands once it is back.
  std::optional<std::string> value;
  std::string error;
  std::thread reader([&] {
    try {
      value = client.get("/persist")->value;
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(500ms);
  server.start();  // on this thread: etcd dies with the thread that started it
  reader.join();
  CHECK(error == "");
  CHECK(value == "1");
}

TEST_CASE("etcd client: a member that takes requests and never answers is left for the next within member_timeout") {
  EtcdServer server;
  elastic::testing::HostileEtcdGateway silent("silent");
  REQUIRE(silent.port() > 0);
  EtcdClient client(behind(silent, server, 300ms));
  // Without the bound each request would wait its whole read timeout there and fail.
  client.put("/k", "v");
  CHECK(client.get("/k")->value == "v");
  CHECK_THAT(client.endpoint(), Catch::Contains(std::to_string(server.client_port())));
}

TEST_CASE("etcd client: a lease grant whose answer is lost is sent again and grants one lease, not two") {
  EtcdServer server;
  elastic::testing::HostileEtcdGateway swallowing("swallow", server.client_port());
  REQUIRE(swallowing.port() > 0);
  EtcdClient client(behind(swallowing, server, 500ms));
  const auto id = client.lease_grant(60);
  CHECK(id > 0);
  CHECK(client.lease_time_to_live(id) > 0);
  auto leases = client.call("/v3/lease/leases", nlohmann::json::object());
  REQUIRE(leases.contains("leases"));
  CHECK(leases["leases"].size() == 1);
}

TEST_CASE("etcd client: a compare-and-put whose answer is lost says that its outcome is unknown") {
  EtcdServer server;
  elastic::testing::HostileEtcdGateway swallowing("swallow", server.client_port());
  REQUIRE(swallowing.port() > 0);
  EtcdClient client(behind(swallowing, server, 1s));
  // Not sent again (it may have been applied, and was): the caller is told so.
  CHECK_THROWS_AS(client.put_if_mod_revision("/cas", "mine", 0), EtcdOutcomeUnknownError);
  EtcdClient direct(options_for(server));
  std::optional<std::string> stored;
  for (int i = 0; i < 100 && !stored; ++i) {
    if (auto kv = direct.get("/cas")) stored = kv->value;
    if (!stored) std::this_thread::sleep_for(100ms);
  }
  CHECK(stored == "mine");
}

TEST_CASE("etcd client: options are checked") {
  EtcdClientOptions options;
  options.protocol = "gopher";
  CHECK_THROWS_WITH(EtcdClient(options), Catch::Contains("http or https"));
  options.protocol = "http";
  options.read_timeout = 0ms;
  CHECK_THROWS_AS(EtcdClient(options), std::invalid_argument);
}
