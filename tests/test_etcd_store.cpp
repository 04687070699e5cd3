// The rendezvous store on a real etcd-server started per test: every operation,
// concurrent compare-and-set from threads and processes, sessions on leases,
// two jobs on one etcd, etcd restarted or gone under a client.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <elastic/rendezvous/etcd_store.hpp>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "support/etcd_server.hpp"
#include "support/hostile_etcd_gateway.hpp"
#include "support/ports.hpp"

using namespace elastic::rendezvous;
using elastic::testing::EtcdServer;
using namespace std::chrono_literals;

namespace {

StoreOptions store_options(const EtcdServer& server, std::map<std::string, std::string> config = {},
                           std::chrono::milliseconds session_ttl = 15s) {
  StoreOptions options;
  options.host = server.host();
  options.port = server.client_port();
  options.read_timeout = 10s;
  options.session_ttl = session_ttl;
  options.config = std::move(config);
  return options;
}

}  // namespace

TEST_CASE("etcd store: get, set, get_many, remove, add") {
  EtcdServer server;
  EtcdStore store(store_options(server));
  CHECK_FALSE(store.get("a"));
  store.set("a", std::string("x\0y", 3));
  CHECK(*store.get("a") == std::string("x\0y", 3));
  auto many = store.get_many({"a", "b", "a"});
  REQUIRE(many.size() == 3);
  CHECK(many[0] == std::string("x\0y", 3));
  CHECK_FALSE(many[1]);
  CHECK(many[2] == many[0]);
  CHECK(store.add("n", 5) == 5);
  CHECK(store.add("n", -7) == -2);
  CHECK(*store.get("n") == "-2");
  CHECK_THROWS_AS(store.add("a", 1), StoreError);
  CHECK(store.remove("a"));
  CHECK_FALSE(store.remove("a"));
  // The keys live under the prefix in etcd itself.
  elastic::rendezvous::detail::EtcdClient raw(elastic::rendezvous::detail::etcd_client_options(store_options(server)));
  CHECK(raw.get("/elastic/rendezvous/n")->value == "-2");
}

TEST_CASE("etcd store: compare_set on absent and present keys") {
  EtcdServer server;
  EtcdStore store(store_options(server));
  auto first = store.compare_set("k", std::nullopt, "1");
  CHECK(first.swapped);
  CHECK(first.current == "1");
  auto again = store.compare_set("k", std::nullopt, "2");
  CHECK_FALSE(again.swapped);
  CHECK(again.current == "1");
  auto wrong = store.compare_set("k", std::string("9"), "2");
  CHECK_FALSE(wrong.swapped);
  CHECK(wrong.current == "1");
  CHECK(store.compare_set("k", std::string("1"), "3").swapped);
  CHECK(*store.get("k") == "3");
  store.remove("k");
  auto gone = store.compare_set("k", std::string("3"), "4");
  CHECK_FALSE(gone.swapped);
  CHECK_FALSE(gone.current);
}

TEST_CASE("etcd store: concurrent add and compare_set from threads lose nothing") {
  EtcdServer server;
  constexpr int threads = 4, rounds = 15;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      EtcdStore store(store_options(server));
      for (int i = 0; i < rounds; ++i) {
        store.add("sum", 1);
        // A list appended to by compare_set, as the rendezvous state is written.
        for (;;) {
          auto seen = store.get("list");
          std::string next = seen.value_or("") + std::to_string(t) + ",";
          if (store.compare_set("list", seen, next).swapped) break;
        }
      }
    });
  for (auto& worker : workers) worker.join();
  EtcdStore store(store_options(server));
  CHECK(*store.get("sum") == std::to_string(threads * rounds));
  auto list = *store.get("list");
  CHECK(std::count(list.begin(), list.end(), ',') == threads * rounds);
}

TEST_CASE("etcd store: concurrent add from separate processes loses nothing") {
  EtcdServer server;
  constexpr int processes = 4, rounds = 10;
  std::vector<pid_t> children;
  for (int p = 0; p < processes; ++p) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        EtcdStore store(store_options(server));
        for (int i = 0; i < rounds; ++i) store.add("sum", 1);
      } catch (...) {
        code = 1;
      }
      _exit(code);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  EtcdStore store(store_options(server));
  CHECK(*store.get("sum") == std::to_string(processes * rounds));
}

TEST_CASE("etcd store: wait and wait_change end at another client's write, or at the deadline") {
  EtcdServer server;
  EtcdStore waiter(store_options(server));
  EtcdStore writer(store_options(server));
  std::thread later([&] {
    std::this_thread::sleep_for(200ms);
    writer.set("k1", "v");
    std::this_thread::sleep_for(100ms);
    writer.set("k2", "w");
  });
  CHECK(waiter.wait({"k1", "k2"}, 60s));
  later.join();
  CHECK(waiter.wait({"k1"}, 0ms));
  auto started = std::chrono::steady_clock::now();
  CHECK_FALSE(waiter.wait({"k1", "missing"}, 300ms));
  CHECK(std::chrono::steady_clock::now() - started >= 300ms);

  CHECK(waiter.wait_change("k1", std::nullopt, 60s) == "v");
  CHECK(waiter.wait_change("k1", std::string("v"), 200ms) == "v");  // no change: the value at the deadline
  std::thread change([&] {
    std::this_thread::sleep_for(200ms);
    writer.set("k1", "v");  // the same value again is no change
    writer.set("k1", "v2");
  });
  CHECK(waiter.wait_change("k1", std::string("v"), 60s) == "v2");
  change.join();
  std::thread removal([&] {
    std::this_thread::sleep_for(200ms);
    writer.remove("k1");
  });
  CHECK_FALSE(waiter.wait_change("k1", std::string("v2"), 60s));  // a deletion is a change
  removal.join();
}

TEST_CASE("etcd store: wait over many keys: any order, a deleted key is waited for again, neighbours do not count") {
  EtcdServer server;
  EtcdStore waiter(store_options(server));
  EtcdStore writer(store_options(server));
  std::vector<std::string> keys;
  for (int i = 0; i < 12; ++i) keys.push_back("round/0/nproc/" + std::to_string(i));
  writer.set(keys[3], "1");
  std::atomic<bool> last_written{false};
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    writer.set("round/0/nproc/1x", "1");  // inside the watched range, but not a key waited for
    for (auto it = keys.rbegin(); it != keys.rend(); ++it)
      if (*it != keys[3] && *it != keys[7]) writer.set(*it, "1");
    writer.remove(keys[3]);  // present when the wait began, gone before it ends
    std::this_thread::sleep_for(200ms);
    writer.set(keys[7], "1");
    std::this_thread::sleep_for(200ms);
    last_written = true;
    writer.set(keys[3], "1");
  });
  const bool all = waiter.wait(keys, 60s);
  const bool after_last = last_written.load();
  later.join();
  CHECK(all);
  CHECK(after_last);
  for (const auto& value : waiter.get_many(keys)) CHECK(value);
}

// etcd takes at most 128 operations in a transaction (--max-txn-ops): a round of
// 256 nodes reads more alive keys than that at once.
TEST_CASE("etcd store: get_many and wait over more keys than etcd takes in one transaction") {
  EtcdServer server;
  EtcdStore store(store_options(server));
  std::vector<std::string> keys;
  for (int i = 0; i < 300; ++i) keys.push_back("k" + std::to_string(i));
  for (int i = 0; i < 300; i += 2) store.set(keys[static_cast<std::size_t>(i)], std::to_string(i));
  auto values = store.get_many(keys);
  REQUIRE(values.size() == 300);
  for (std::size_t i = 0; i < 300; ++i) {
    INFO(i);
    if (i % 2 == 0)
      CHECK(values[i] == std::to_string(i));
    else
      CHECK_FALSE(values[i]);
  }
  CHECK_FALSE(store.wait(keys, 200ms));
  for (int i = 1; i < 300; i += 2) store.set(keys[static_cast<std::size_t>(i)], "late");
  CHECK(store.wait(keys, 10s));
}

TEST_CASE("etcd store: an ephemeral key dies with its expired lease, and a waiter sees it at once") {
  EtcdServer server;
  EtcdStore observer(store_options(server));
  auto node = std::make_unique<EtcdStore>(store_options(server, {}, 2s));
  node->set_ephemeral("alive/node", "1");
  CHECK(node->keep_alive());
  CHECK(*observer.get("alive/node") == "1");
  // No more keep-alives: the lease runs out and etcd deletes the key; the watch sees it.
  CHECK_FALSE(observer.wait_change("alive/node", std::string("1"), 60s));
  CHECK_FALSE(node->keep_alive());         // the session had expired
  node->set_ephemeral("alive/node", "2");  // a new session
  CHECK(*observer.get("alive/node") == "2");
  // Ending the session (the store destroyed) deletes its keys at once.
  node.reset();
  CHECK_FALSE(observer.get("alive/node"));
}

namespace {
bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto close_paren = text.rfind(')');
  return text.empty() ||
         (close_paren != std::string::npos && close_paren + 2 < text.size() && text[close_paren + 2] == 'Z');
}
}  // namespace

namespace {

// A node in a child process: it opens a store with `options`, puts alive/node =
// `value` on its lease, runs `then` (which returns the sentinel's pid to report;
// -1: none), and is SIGKILLed once it has reported. `before`: the key as the
// observer read it before the kill.
struct KilledNode {
  pid_t sentinel = -1;
  std::optional<std::string> before;
};

KilledNode kill_node(const StoreOptions& options, const std::string& value, EtcdStore& observer,
                     const std::function<pid_t(EtcdStore&)>& then) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(fds[0]);
    pid_t sentinel = -1;
    try {
      // Stays up, its lease with it, until killed.
      auto* node = new EtcdStore(options);
      node->set_ephemeral("alive/node", value);
      sentinel = then(*node);
    } catch (...) {
    }
    ssize_t ignored = ::write(fds[1], &sentinel, sizeof(sentinel));
    (void)ignored;
    for (;;) ::pause();
  }
  ::close(fds[1]);
  KilledNode killed;
  if (::read(fds[0], &killed.sentinel, sizeof(killed.sentinel)) != sizeof(killed.sentinel)) killed.sentinel = -1;
  ::close(fds[0]);
  killed.before = observer.get("alive/node");
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  return killed;
}

}  // namespace

TEST_CASE("etcd store: a SIGKILLed client's ephemeral keys go at once, long before its lease's TTL") {
  EtcdServer server;
  EtcdStore observer(store_options(server));
  auto killed = kill_node(store_options(server, {}, 120s), "2", observer, [](EtcdStore& node) -> pid_t {
    // Its first sentinel killed (as elastic-run kills the processes left after a
    // round): the next keep-alive starts another.
    pid_t first = node.sentinel_pid();
    ::kill(first, SIGKILL);
    while (::kill(first, 0) == 0 && !process_gone(first)) ::usleep(1000);
    node.keep_alive();
    return node.sentinel_pid() == first ? -1 : node.sentinel_pid();
  });
  REQUIRE(killed.sentinel > 0);
  CHECK(killed.before == "2");
  // The lease's TTL is 120 s; a wait of 60 s sees the key go only through the sentinel.
  CHECK_FALSE(observer.wait_change("alive/node", std::string("2"), 60s));
  // The sentinel has exited after its work.
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!process_gone(killed.sentinel) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  CHECK(process_gone(killed.sentinel));
}

TEST_CASE(
    "etcd store: the sentinel of a SIGKILLed client revokes its lease at the next member when the first is lost") {
  EtcdServer server;
  EtcdStore observer(store_options(server));
  // The first member given: gone (refused), or cut off (takes the request, never answers).
  const bool silent = GENERATE(false, true);
  CAPTURE(silent);
  std::optional<elastic::testing::HostileEtcdGateway> gateway;
  if (silent) gateway.emplace("silent");
  StoreOptions options = store_options(server, {}, 120s);
  options.port = silent ? gateway->port() : elastic::testing::free_port();
  options.more_endpoints = {{server.host(), server.client_port()}};
  REQUIRE(options.port > 0);
  auto killed = kill_node(options, "3", observer, [](EtcdStore& node) { return node.sentinel_pid(); });
  REQUIRE(killed.sentinel > 0);
  CHECK(killed.before == "3");
  // The lease's TTL is 120 s: the key goes within 60 s only through the sentinel.
  CHECK_FALSE(observer.wait_change("alive/node", std::string("3"), 60s));
}

TEST_CASE("etcd store: a compare_set whose answer is lost with a member is judged by the value stored") {
  EtcdServer server;
  // The first member hands the request to etcd, which applies it, and drops the answer.
  elastic::testing::HostileEtcdGateway swallowing("swallow", server.client_port());
  REQUIRE(swallowing.port() > 0);
  StoreOptions options = store_options(server);
  options.port = swallowing.port();
  options.more_endpoints = {{server.host(), server.client_port()}};
  options.session_ttl = 3s;  // members left after 1 s unanswered
  EtcdStore store(options);
  EtcdStore observer(store_options(server));
  auto created = store.compare_set("state", std::nullopt, "round 1");
  CHECK(created.swapped);
  CHECK(created.current == "round 1");
  CHECK(observer.get("state") == "round 1");
  // The client stays on the member that answers; a conflict is still a conflict.
  observer.set("state", "round 2");
  auto conflict = store.compare_set("state", std::string("round 1"), "round 3");
  CHECK_FALSE(conflict.swapped);
  CHECK(conflict.current == "round 2");
}

TEST_CASE("etcd store: a store that ends cleanly revokes its lease and stops its sentinel") {
  EtcdServer server;
  EtcdStore observer(store_options(server));
  pid_t sentinel = -1;
  {
    EtcdStore node(store_options(server, {}, 120s));
    node.set_ephemeral("alive/node", "1");
    sentinel = node.sentinel_pid();
    REQUIRE(sentinel > 0);
  }
  CHECK(process_gone(sentinel));            // reaped by the store's destructor
  CHECK_FALSE(observer.get("alive/node"));  // revoked by the store itself
}

TEST_CASE("etcd store: keep_alive holds ephemeral keys past the lease's TTL") {
  EtcdServer server;
  EtcdStore observer(store_options(server));
  EtcdStore node(store_options(server, {}, 2s));
  node.set_ephemeral("alive/node", "1");
  for (int i = 0; i < 8; ++i) {  // 4 s, twice the TTL
    std::this_thread::sleep_for(500ms);
    CHECK(node.keep_alive());
  }
  CHECK(*observer.get("alive/node") == "1");
  // Plain writes to the key take it off the lease: it then outlives the session.
  node.set("alive/node", "plain");
  CHECK(node.keep_alive());
}

TEST_CASE("etcd store: two jobs on one etcd do not see each other's keys") {
  EtcdServer server;
  EtcdStore job_a(store_options(server, {{"run_id", "job-a"}}));
  EtcdStore job_b(store_options(server, {{"run_id", "job-b"}}));
  EtcdStore custom(store_options(server, {{"etcd_prefix", "/mine"}}));
  job_a.set("state", "a");
  job_b.set("state", "b");
  custom.set("state", "c");
  CHECK(*job_a.get("state") == "a");
  CHECK(*job_b.get("state") == "b");
  CHECK(*custom.get("state") == "c");
  CHECK(job_a.key_prefix() == "/elastic/rendezvous/job-a/");
  CHECK(custom.key_prefix() == "/mine/");
  CHECK(job_a.add("count", 1) == 1);
  CHECK(job_b.add("count", 1) == 1);
  job_a.set("join/x", "1");
  job_b.set_ephemeral("join/y", "1");
  job_b.set("joins", "1");
  CHECK(job_a.list_keys("join/") == std::vector<std::string>{"join/x"});
  CHECK(job_b.list_keys("join/") == std::vector<std::string>{"join/y"});
  CHECK(custom.list_keys("join/").empty());
}

TEST_CASE("etcd store: etcd restarted under a client: it rides the restart out, waits included") {
  EtcdServer server;
  EtcdStore waiter(store_options(server));
  EtcdStore node(store_options(server));
  node.set_ephemeral("alive", "1");
  std::optional<bool> seen;
  std::string error;
  std::thread waiting([&] {
    try {
      seen = waiter.wait({"after-restart"}, 60s);
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(300ms);
  server.stop();
  std::this_thread::sleep_for(300ms);
  server.start();
  node.set("after-restart", "1");
  waiting.join();
  CHECK(error == "");
  CHECK(seen == true);
  // The lease survived the restart: the session and its key are still there.
  CHECK(node.keep_alive());
  CHECK(*waiter.get("alive") == "1");
}

TEST_CASE("etcd store: etcd gone: every operation fails with a StoreError within the read timeout") {
  EtcdServer server;
  auto options = store_options(server);
  options.read_timeout = 1s;
  EtcdStore store(options);
  store.set_ephemeral("alive", "1");
  server.stop();
  auto started = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(store.get("k"), Catch::Contains("etcd at http://127.0.0.1:") && Catch::Contains("unreachable"));
  CHECK_THROWS_AS(store.set("k", "v"), StoreError);
  CHECK_THROWS_AS(store.compare_set("k", std::nullopt, "v"), StoreError);
  CHECK_THROWS_AS(store.add("k", 1), StoreError);
  CHECK_THROWS_AS(store.wait({"k"}, 60s), StoreError);
  CHECK_THROWS_AS(store.wait_change("k", std::nullopt, 60s), StoreError);
  CHECK_THROWS_AS(store.keep_alive(), StoreError);
  CHECK(std::chrono::steady_clock::now() - started < 60s);  // bounded, never a hang
}

TEST_CASE("etcd store: TLS options are checked, https asked of a plain etcd fails clearly") {
  EtcdServer server;
  CHECK_THROWS_AS(EtcdStore(store_options(server, {{"protocol", "ftp"}})), RendezvousConfigError);
  CHECK_THROWS_WITH(EtcdStore(store_options(server, {{"ssl_cert", "/nonexistent.pem"}})),
                    Catch::Contains("go together"));
  auto options = store_options(server, {{"protocol", "https"}});
  options.read_timeout = 2s;
  EtcdStore store(options);
  CHECK_THROWS_WITH(store.get("k"), Catch::Contains("etcd at https://127.0.0.1:"));
}
