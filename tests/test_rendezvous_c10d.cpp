// The c10d rendezvous store over real TCP on loopback: every operation, sessions
// and their ephemeral keys, concurrent compare-and-set, deadlines, hosting with a
// taken port, and PyTorch's TCPStore on either side refused at once.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <elastic/rendezvous/backends.hpp>
#include <elastic/rendezvous/dynamic_rendezvous.hpp>
#include <fstream>
#include <future>
#include <thread>

#include "support/subprocess.hpp"

using namespace elastic::rendezvous;
using namespace std::chrono_literals;

namespace {

StoreOptions options_for(int port, std::chrono::milliseconds ttl = 15s, std::chrono::milliseconds read = 30s) {
  StoreOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.session_ttl = ttl;
  o.read_timeout = read;
  return o;
}

// A program in the background, killed and reaped at the end of the scope.
class Spawned {
 public:
  explicit Spawned(std::vector<std::string> argv) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (::posix_spawn(&pid_, args[0], nullptr, nullptr, args.data(), environ) != 0) pid_ = -1;
  }
  ~Spawned() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

 private:
  pid_t pid_ = -1;
};

}  // namespace

TEST_CASE("c10d store: every operation over TCP") {
  C10dStoreServer server(0);
  C10dStoreClient client(options_for(server.port()));
  CHECK_FALSE(client.get("a"));
  const std::string binary("x\0y\xff", 4);
  client.set("a", binary);
  CHECK(*client.get("a") == binary);
  auto many = client.get_many({"a", "missing"});
  REQUIRE(many.size() == 2);
  CHECK(*many[0] == binary);
  CHECK_FALSE(many[1]);
  CHECK(client.compare_set("c", std::nullopt, "1").swapped);
  auto refused = client.compare_set("c", std::string("0"), "2");
  CHECK_FALSE(refused.swapped);
  CHECK(*refused.current == "1");
  CHECK(client.compare_set("c", std::string("1"), "2").swapped);
  CHECK(client.add("n", 40) == 40);
  CHECK(client.add("n", -50) == -10);
  CHECK_THROWS_AS(client.add("a", 1), StoreError);
  CHECK(client.get("a"));  // an error answer leaves the connection usable
  CHECK(client.remove("a"));
  CHECK_FALSE(client.remove("a"));
  CHECK(client.wait({"c", "n"}, 10s));
  CHECK(*client.wait_change("c", std::string("1"), 10s) == "2");
  CHECK(client.keep_alive());
  client.set("p/b", "1");
  client.set_ephemeral("p/a", "2");
  client.set("p", "3");
  client.set("q/a", "4");
  CHECK(client.list_keys("p/") == std::vector<std::string>{"p/a", "p/b"});
  CHECK(client.list_keys("none/").empty());
}

TEST_CASE("c10d store: waits end at another client's write or at their deadline") {
  C10dStoreServer server(0);
  C10dStoreClient waiter(options_for(server.port()));
  C10dStoreClient writer(options_for(server.port()));
  std::thread later([&] {
    std::this_thread::sleep_for(300ms);
    writer.set("k", "v");
  });
  CHECK(waiter.wait({"k"}, 60s));
  later.join();
  CHECK_FALSE(waiter.wait({"k", "never"}, 600ms));
  CHECK(*waiter.wait_change("k", std::string("v"), 600ms) == "v");
  // A long wait does not hold up a keep-alive on the same client.
  std::thread blocked([&] { waiter.wait({"released"}, 60s); });
  CHECK(waiter.keep_alive());
  writer.set("released", "1");
  blocked.join();
}

TEST_CASE("c10d store: concurrent compare-and-set loses no update") {
  C10dStoreServer server(0);
  constexpr int clients = 4, increments = 50;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&] {
      try {
        C10dStoreClient client(options_for(server.port()));
        for (int n = 0; n < increments; ++n) {
          for (;;) {
            auto current = client.get("counter");
            int value = current ? std::stoi(*current) : 0;
            if (client.compare_set("counter", current, std::to_string(value + 1)).swapped) break;
          }
        }
      } catch (...) {
        ++failures;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  C10dStoreClient reader(options_for(server.port()));
  CHECK(*reader.get("counter") == std::to_string(clients * increments));
}

TEST_CASE("c10d store: a closed connection drops its ephemeral keys at once, a silent session after its TTL") {
  C10dStoreServer server(0);
  C10dStoreClient observer(options_for(server.port()));
  {
    C10dStoreClient doomed(options_for(server.port()));
    doomed.set_ephemeral("alive/doomed", "1");
    doomed.set("kept", "1");
    CHECK(observer.get("alive/doomed"));
  }
  CHECK_FALSE(observer.wait_change("alive/doomed", std::string("1"), 30s));
  CHECK(observer.get("kept"));

  C10dStoreClient silent(options_for(server.port(), 500ms));
  silent.set_ephemeral("alive/silent", "1");
  CHECK_FALSE(observer.wait_change("alive/silent", std::string("1"), 30s));  // gone after 0.5 s
  CHECK_FALSE(silent.keep_alive());                                          // it had expired; a new session begins
  silent.set_ephemeral("alive/silent", "2");
  CHECK(*observer.get("alive/silent") == "2");
}

TEST_CASE("c10d backend: the second agent on a taken port becomes a client of the first") {
  int port = 0;
  {
    C10dStoreServer probe(0);
    port = probe.port();
  }
  auto settings = parse_settings("job", 1, 2, {{"read_timeout", "30"}});
  std::vector<std::string> logs;
  auto first = open_backend("c10d", "localhost:" + std::to_string(port), settings);
  auto second = open_backend("c10d", "localhost:" + std::to_string(port), settings,
                             [&](const std::string& line) { logs.push_back(line); });
  CHECK(first.server);
  CHECK_FALSE(second.server);
  REQUIRE(logs.size() == 1);
  CHECK_THAT(logs[0], Catch::Contains("connecting as a client"));
  first.store->set("shared", "yes");
  CHECK(*second.store->get("shared") == "yes");
}

TEST_CASE("c10d backend: nobody hosting is RendezvousConnectionError after read_timeout") {
  int port = 0;
  {
    C10dStoreServer probe(0);
    port = probe.port();
  }
  auto settings = parse_settings("job", 1, 2, {{"read_timeout", "1"}, {"is_host", "0"}});
  CHECK_THROWS_AS(open_backend("c10d", "127.0.0.1:" + std::to_string(port), settings), RendezvousConnectionError);
  CHECK_THROWS_AS(open_backend("c10d", "127.0.0.1:99999", settings), RendezvousConfigError);
  CHECK_THROWS_AS(open_backend("zookeeper", "127.0.0.1:1", settings), RendezvousConfigError);
}

TEST_CASE("c10d store: a listener that never answers is a StoreError within read_timeout") {
  asio::io_context io;
  asio::ip::tcp::acceptor silent(io, asio::ip::tcp::endpoint(asio::ip::tcp::v4(), 0));
  const int port = silent.local_endpoint().port();
  CHECK_THROWS_WITH(C10dStoreClient(options_for(port, 15s, 1s)),
                    Catch::Contains("not an elastic-run rendezvous store"));
}

TEST_CASE("c10d store: PyTorch's TCPStore client is refused at once") {
  C10dStoreServer server(0);
  auto result = elastic::testing::run({elastic::testing::system_python(), ELASTIC_TEST_PYTHON_DIR "/tcpstore_peer.py",
                                       "client", std::to_string(server.port())});
  INFO(result.out << result.err);
  CHECK(result.exitcode == 3);
  CHECK_THAT(result.out, Catch::Contains("Connection reset by peer") || Catch::Contains("Broken pipe"));
  // The server still serves its own clients.
  C10dStoreClient client(options_for(server.port()));
  client.set("k", "v");
  CHECK(client.get("k"));
}

TEST_CASE("c10d store: a PyTorch TCPStore server is named as not ours") {
  elastic::testing::TempDir dir;
  const std::string port_file = dir.file("port");
  Spawned server({elastic::testing::system_python(), ELASTIC_TEST_PYTHON_DIR "/tcpstore_peer.py", "server", port_file});
  bool ready = false;
  for (int i = 0; i < 600 && !ready; ++i) {
    ready = std::ifstream(port_file).good();
    if (!ready) std::this_thread::sleep_for(100ms);
  }
  REQUIRE(ready);
  const int port = std::stoi(elastic::testing::read_file(port_file));
  CHECK_THROWS_WITH(C10dStoreClient(options_for(port, 15s, 30s)),
                    Catch::Contains("not an elastic-run rendezvous store") && Catch::Contains("PyTorch TCPStore"));
}

TEST_CASE("c10d rendezvous: two nodes form a round over TCP") {
  C10dStoreServer server(0);
  auto settings = parse_settings("job", 2, 2, {});
  DynamicRendezvous a(std::make_shared<C10dStoreClient>(options_for(server.port())), settings, NodeDesc{"h", 1, 0});
  DynamicRendezvous b(std::make_shared<C10dStoreClient>(options_for(server.port())), settings, NodeDesc{"h", 2, 0});
  auto joined = std::async(std::launch::async, [&] { return a.next_rendezvous(); });
  auto info_b = b.next_rendezvous();
  auto info_a = joined.get();
  CHECK(info_a.group_rank == 0);
  CHECK(info_b.group_rank == 1);
  CHECK(info_a.round == info_b.round);
}
