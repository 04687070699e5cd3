// The in-memory store: every operation, sessions and their ephemeral keys on a manual clock.
#include <atomic>
#include <catch2/catch.hpp>
#include <elastic/rendezvous/key_value_table.hpp>
#include <limits>
#include <thread>

#include "support/in_memory_store.hpp"

using namespace elastic::rendezvous;
using elastic::testing::InMemoryStore;
using elastic::testing::ManualClock;
using namespace std::chrono_literals;

TEST_CASE("in-memory store: get, set, get_many, remove, add") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  auto client = store->session();
  CHECK_FALSE(client->get("a"));
  client->set("a", std::string("x\0y", 3));
  CHECK(*client->get("a") == std::string("x\0y", 3));
  auto many = client->get_many({"a", "b"});
  REQUIRE(many.size() == 2);
  CHECK(many[0]);
  CHECK_FALSE(many[1]);
  CHECK(client->add("n", 5) == 5);
  CHECK(client->add("n", -7) == -2);
  CHECK_THROWS_AS(client->add("a", 1), StoreError);
  CHECK(client->remove("a"));
  CHECK_FALSE(client->remove("a"));
  client->set("p/b", "1");
  client->set_ephemeral("p/a", "2");
  client->set("p", "3");
  CHECK(client->list_keys("p/") == std::vector<std::string>{"p/a", "p/b"});
  CHECK(client->list_keys("q").empty());
}

TEST_CASE("in-memory store: compare_set on absent and present keys") {
  auto store = std::make_shared<InMemoryStore>();
  auto client = store->session();
  auto first = client->compare_set("k", std::nullopt, "1");
  CHECK(first.swapped);
  auto again = client->compare_set("k", std::nullopt, "2");
  CHECK_FALSE(again.swapped);
  CHECK(*again.current == "1");
  CHECK(client->compare_set("k", std::string("1"), "3").swapped);
  CHECK(*client->get("k") == "3");
}

TEST_CASE("in-memory store: wait and wait_change end at a write or at the deadline") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  auto waiter = store->session();
  auto writer = store->session();
  std::thread later([&] {
    std::this_thread::sleep_for(20ms);
    writer->set("k", "v");
  });
  CHECK(waiter->wait({"k"}, 10s));
  later.join();
  CHECK(*waiter->wait_change("k", std::nullopt, 10s) == "v");
  // The clock moves on until the wait returns: an advance that came before the wait
  // took its deadline would otherwise leave it waiting for ever.
  std::atomic<bool> returned{false};
  std::thread tick([&] {
    while (!returned.load()) {
      std::this_thread::sleep_for(20ms);
      clock.advance(11s);
    }
  });
  CHECK_FALSE(waiter->wait({"k", "missing"}, 10s));
  returned.store(true);
  tick.join();
}

TEST_CASE("in-memory store: ephemeral keys die with their session") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  auto a = store->session(15s);
  auto b = store->session(15s);
  a->set_ephemeral("alive/a", "1");
  b->set_ephemeral("alive/b", "1");
  clock.advance(10s);
  CHECK(a->keep_alive());
  clock.advance(10s);  // b: 20 s without a keep-alive
  CHECK(a->get("alive/a"));
  CHECK_FALSE(a->get("alive/b"));
  CHECK_FALSE(b->keep_alive());  // expired, a new session begins
  b->set_ephemeral("alive/b", "2");
  CHECK(*a->get("alive/b") == "2");
  a->disconnect();
  CHECK_FALSE(b->get("alive/a"));
}

TEST_CASE(
    "key-value table: a write past max_bytes is refused and changes nothing, and rewritten keys leave their session") {
  KeyValueTable table(100);
  table.set("a", std::string(50, 'x'));
  CHECK_THROWS_WITH(table.set("b", std::string(60, 'y')), Catch::Contains("the rendezvous store is full"));
  CHECK_FALSE(table.get("b"));
  CHECK(table.bytes() == 51);
  table.set("a", std::string(90, 'z'));  // replacing counts the new size only
  CHECK(table.bytes() == 91);
  CHECK_THROWS_AS(table.add("a", 1), StoreError);
  CHECK(table.remove("a"));
  CHECK(table.bytes() == 0);
  table.set_ephemeral(7, "alive", "1");
  table.set_ephemeral(7, "moved", "1");
  table.set("moved", "2");  // written again by anyone: no longer the session's
  CHECK(table.end_session(7));
  CHECK_FALSE(table.get("alive"));
  CHECK(*table.get("moved") == "2");
  CHECK_FALSE(table.end_session(7));
  CHECK(table.bytes() == 6);
  CHECK(table.add("n", std::numeric_limits<std::int64_t>::max()) == std::numeric_limits<std::int64_t>::max());
}
