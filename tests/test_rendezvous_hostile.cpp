// Hostile peers of the c10d store, as real attacks over loopback by a Python client
// of the wire protocol (tests/python/store_attacker.py): every bound of the server
// holds (frame size, per-frame deadline, counts against bytes, answer size,
// connections, running out of descriptors), the job secret shuts strangers out,
// and the dynamic rendezvous survives a deleted alive key and a garbage state.
// Memory figures are asserted loosely (the test process hosts the server).
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <elastic/rendezvous/backends.hpp>
#include <elastic/rendezvous/c10d_store.hpp>
#include <elastic/rendezvous/dynamic_rendezvous.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "support/in_memory_store.hpp"
#include "support/subprocess.hpp"

using namespace elastic::rendezvous;
using namespace std::chrono_literals;

namespace {

StoreOptions options_for(int port, std::string secret = {}) {
  StoreOptions o;
  o.host = "127.0.0.1";
  o.port = port;
  o.read_timeout = 10s;
  o.secret = std::move(secret);
  return o;
}

// `nofile`: the attacker's own descriptor limit (this process may have lowered its own).
nlohmann::json attack(const std::vector<std::string>& args, long nofile = 0) {
  std::vector<std::string> argv;
  if (nofile > 0) argv = {"/usr/bin/prlimit", "--nofile=" + std::to_string(nofile)};
  argv.push_back(elastic::testing::system_python());
  argv.push_back(ELASTIC_TEST_PYTHON_DIR "/store_attacker.py");
  argv.insert(argv.end(), args.begin(), args.end());
  auto result = elastic::testing::run(argv, elastic::testing::RunOptions().with_timeout(120s));
  INFO(result.out << result.err);
  REQUIRE(result.exitcode == 0);
  return nlohmann::json::parse(result.out);
}

// The peak resident set of this process so far (VmHWM): what an attack cost at its worst.
long rss_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

struct Logged {
  std::mutex mutex;
  std::vector<std::string> lines;
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mutex);
      lines.push_back(line);
    };
  }
  std::size_t count(const std::string& part) {
    std::lock_guard<std::mutex> lock(mutex);
    std::size_t n = 0;
    for (const auto& line : lines) n += line.find(part) != std::string::npos;
    return n;
  }
};

}  // namespace

TEST_CASE("hostile c10d peers: 10 announced 64 MiB requests are refused at their header, memory stays flat") {
  Logged logged;
  C10dServerOptions options;
  options.log = logged.sink();
  C10dStoreServer server(0, options);
  const long before = rss_kib();
  auto result = attack({"announce", std::to_string(server.port()), "10", std::to_string(64 << 20), "10"});
  const long grown = rss_kib() - before;
  WARN("peak RSS growth for 10 announced 64 MiB requests: " << grown << " KiB");
  CHECK(result["closed"] == 10);
  CHECK(server.refused("oversized") == 10);
  CHECK(logged.count("refused 127.0.0.1") == 1);  // once per peer and kind
  CHECK(grown < 32 * 1024);
  // Just under the limit and never sent: nothing is allocated for it, and the frame
  // deadline ends the connections.
  options.frame_timeout = 1s;
  C10dStoreServer patient(0, options);
  const long before_patient = rss_kib();
  auto held = attack({"announce", std::to_string(patient.port()), "10", std::to_string((4 << 20) - 1), "20"});
  WARN("peak RSS growth for 10 announced 4 MiB requests never sent: " << rss_kib() - before_patient << " KiB");
  CHECK(held["closed"] == 10);
  CHECK(patient.refused("slow-request") == 10);
  CHECK(rss_kib() - before_patient < 32 * 1024);
  C10dStoreClient client(options_for(patient.port()));
  client.set("still", "serving");
  CHECK(client.get("still"));
}

TEST_CASE("hostile c10d peers: a count larger than the bytes sent is an error answer, nothing allocated") {
  C10dStoreServer server(0);
  const long before = rss_kib();
  auto result = attack({"wait-count", std::to_string(server.port())});
  WARN("peak RSS growth for a WAIT naming 2^25 keys in 9 bytes: " << rss_kib() - before << " KiB");
  CHECK(result["status"] == 1);
  CHECK_THAT(result["message"].get<std::string>(), Catch::Contains("count larger than the bytes sent"));
  CHECK(result["usable"] == true);
  CHECK(rss_kib() - before < 32 * 1024);
}

TEST_CASE("hostile c10d peers: an answer above the limit is refused, not built") {
  C10dStoreServer server(0);
  const long before = rss_kib();
  auto result = attack({"get-many", std::to_string(server.port())});
  WARN("GET_MANY of " << result["request_bytes"] << " bytes: answer " << result["answer_bytes"]
                      << " bytes, peak RSS growth " << rss_kib() - before << " KiB");
  CHECK(result["status"] == 1);
  CHECK_THAT(result["message"].get<std::string>(), Catch::Contains("larger than the store's limit"));
  CHECK(result["answer_bytes"].get<int>() < 4096);
  CHECK(rss_kib() - before < 64 * 1024);
}

TEST_CASE("hostile c10d peers: a request dripped byte by byte is cut at the frame deadline") {
  C10dServerOptions options;
  options.frame_timeout = 2s;
  C10dStoreServer server(0, options);
  auto result = attack({"drip", std::to_string(server.port()), "0.5"});
  WARN("dripped request cut after " << result["seconds"] << " s (frame_timeout 2 s)");
  CHECK(result["sent"].get<int>() < 100);
  CHECK(result["seconds"].get<double>() < 30);
  CHECK(server.refused("slow-request") == 1);
}

TEST_CASE("hostile c10d peers: a flood past the descriptor limit pauses accepting and the store accepts again") {
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  Logged logged;
  C10dServerOptions options;
  options.log = logged.sink();
  C10dStoreServer server(0, options);
  // Room for a few dozen more descriptors in this process (the server's included).
  int open_now = 0;
  for (int fd = 0; fd < 4096; ++fd) open_now += ::fcntl(fd, F_GETFD) != -1;
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(open_now) + 40;
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  auto result = attack({"flood", std::to_string(server.port()), "300", "3"}, static_cast<long>(saved.rlim_cur));
  ::setrlimit(RLIMIT_NOFILE, &saved);
  CHECK(result["opened"].get<int>() >= 100);
  CHECK(server.refused("accept") > 0);
  CHECK(logged.count("accepting again") == 1);
  C10dStoreClient client(options_for(server.port()));
  client.set("after", "flood");
  CHECK(*client.get("after") == "flood");
}

TEST_CASE("hostile c10d peers: connections from one address beyond the limit are told busy") {
  C10dServerOptions options;
  options.max_connections_per_peer = 3;
  C10dStoreServer server(0, options);
  std::vector<std::unique_ptr<C10dStoreClient>> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(std::make_unique<C10dStoreClient>(options_for(server.port())));
  auto o = options_for(server.port());
  o.read_timeout = 2s;
  CHECK_THROWS_WITH(C10dStoreClient(o),
                    Catch::Contains("refused this connection") && Catch::Contains("connections from one address"));
  CHECK(server.refused("busy") >= 1);
  clients.pop_back();  // one leaves: a newcomer is served
  C10dStoreClient late(options_for(server.port()));
  CHECK_FALSE(late.get("k"));
}

TEST_CASE("hostile c10d peers: without the job secret a stranger gets nothing") {
  C10dServerOptions options;
  options.secret = "job secret";
  options.handshake_timeout = 2s;
  C10dStoreServer server(0, options);
  C10dStoreClient member(options_for(server.port(), "job secret"));
  member.set("k", "private");
  auto result = attack({"no-secret", std::to_string(server.port())});
  CHECK(result["answer"] == 2);
  CHECK(result["nonce_bytes"] == 32);
  CHECK(result["bytes_after"] == 0);
  auto wrong = attack({"wrong-secret", std::to_string(server.port())});
  CHECK(wrong["closed"] == true);
  CHECK(server.refused("secret") == 1);
  CHECK_THROWS_WITH(C10dStoreClient(options_for(server.port())), Catch::Contains("requires the job secret"));
  CHECK_THROWS_WITH(C10dStoreClient(options_for(server.port(), "another")), Catch::Contains("refused our job secret"));
  // A client holding a secret does not trust a store that asks for none.
  C10dStoreServer open_store(0);
  CHECK_THROWS_WITH(C10dStoreClient(options_for(open_store.port(), "job secret")),
                    Catch::Contains("asks for no job secret"));
  CHECK(*member.get("k") == "private");
}

TEST_CASE("job secret: from --rdzv-conf secret_file, ELASTIC_RDZV_SECRET_FILE or ELASTIC_RDZV_SECRET") {
  elastic::testing::TempDir dir;
  elastic::testing::write_file(dir.file("secret"), "from file\n");
  elastic::testing::write_file(dir.file("empty"), "\n");
  elastic::testing::ScopedEnv no_file("ELASTIC_RDZV_SECRET_FILE", std::nullopt);
  elastic::testing::ScopedEnv no_value("ELASTIC_RDZV_SECRET", std::nullopt);
  CHECK(job_secret({}).empty());
  CHECK(job_secret({{"secret_file", dir.file("secret")}}) == "from file");
  CHECK_THROWS_AS(job_secret({{"secret_file", dir.file("empty")}}), RendezvousConfigError);
  CHECK_THROWS_AS(job_secret({{"secret_file", dir.file("missing")}}), RendezvousConfigError);
  {
    elastic::testing::ScopedEnv value("ELASTIC_RDZV_SECRET", std::string("from env"));
    CHECK(job_secret({}) == "from env");
    elastic::testing::ScopedEnv file("ELASTIC_RDZV_SECRET_FILE", dir.file("secret"));
    CHECK(job_secret({}) == "from file");
  }
  // Two agents of one job through open_backend: the host's server asks for it.
  elastic::testing::ScopedEnv value("ELASTIC_RDZV_SECRET", std::string("shared"));
  int port = 0;
  {
    C10dStoreServer probe(0);
    port = probe.port();
  }
  auto settings = parse_settings("job", 1, 2, {{"read_timeout", "10"}});
  auto host = open_backend("c10d", "127.0.0.1:" + std::to_string(port), settings);
  REQUIRE(host.server);
  host.store->set("k", "v");
  CHECK_THROWS_WITH(C10dStoreClient(options_for(port)), Catch::Contains("requires the job secret"));
}

TEST_CASE("dynamic rendezvous: a deleted alive key is back at the next keep-alive") {
  auto store = std::make_shared<elastic::testing::InMemoryStore>();
  auto settings = parse_settings("job", 1, 1, {});
  std::shared_ptr<Store> session = store->session();
  DynamicRendezvous node(session, settings, NodeDesc{"h", 1, 0});
  auto info = node.next_rendezvous();
  auto stranger = store->session();
  REQUIRE(stranger->remove(node.alive_key(node.node())));
  CHECK_FALSE(stranger->get(node.alive_key(node.node())));
  node.keep_alive();
  CHECK(stranger->get(node.alive_key(node.node())));
  CHECK(node.check_round(info) == RoundHealth::healthy);
}

TEST_CASE("dynamic rendezvous: a garbage state is ignored and logged, not fatal") {
  auto store = std::make_shared<elastic::testing::InMemoryStore>();
  auto settings = parse_settings("job", 1, 1, {});
  DynamicRendezvous node(store->session(), settings, NodeDesc{"h", 1, 0});
  std::vector<std::string> logs;
  node.set_log([&](const std::string& line) { logs.push_back(line); });
  auto info = node.next_rendezvous();
  auto stranger = store->session();
  stranger->set(node.state_key(), "garbage");
  CHECK(node.check_round(info) == RoundHealth::healthy);
  CHECK(node.check_round(info) == RoundHealth::healthy);
  REQUIRE(logs.size() == 1);  // the same garbage is logged once
  CHECK_THAT(logs[0], Catch::Contains("ignoring the rendezvous state"));
  // A state nested past the JSON limit is garbage too, and the next round replaces it.
  stranger->set(node.state_key(), std::string(100000, '[') + std::string(100000, ']'));
  auto next = node.next_rendezvous();
  CHECK(next.round > info.round);
  CHECK(logs.size() == 2);
  CHECK(RendezvousState::decode(*stranger->get(node.state_key())).participants.count(node.node()) == 1);
}
