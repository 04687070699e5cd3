// The dynamic rendezvous: every transition of the join decision, the state's
// encoding, --rdzv-conf parsing, and whole joins of several nodes on one
// in-memory store driven by a manual clock.
#include <catch2/catch.hpp>
#include <elastic/rendezvous/dynamic_rendezvous.hpp>
#include <future>
#include <thread>

#include "support/in_memory_store.hpp"

using namespace elastic::rendezvous;
using elastic::testing::InMemorySession;
using elastic::testing::InMemoryStore;
using elastic::testing::ManualClock;
using namespace std::chrono_literals;

namespace {

NodeDesc node(const std::string& host, long pid) { return NodeDesc{host, pid, 0}; }

JoinContext context(const NodeDesc& n, int min_nodes, int max_nodes) {
  JoinContext c;
  c.node = n;
  c.min_nodes = min_nodes;
  c.max_nodes = max_nodes;
  return c;
}

// Polls (real time, generous bound) until `condition` holds.
template <typename Condition>
bool eventually(Condition&& condition) {
  for (int i = 0; i < 2000; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

RendezvousSettings settings(int min_nodes, int max_nodes, std::map<std::string, std::string> conf = {}) {
  return parse_settings("job", min_nodes, max_nodes, conf);
}

RendezvousState stored_state(InMemoryStore& store) {
  auto values = store.snapshot();
  auto it = values.find("rdzv/job/state");
  return it == values.end() ? RendezvousState{} : RendezvousState::decode(it->second);
}

// Moves the clock on in 5 s steps, the nodes keeping alive as their agents' threads do.
void pass_time(ManualClock& clock, std::chrono::seconds total, std::vector<DynamicRendezvous*> nodes) {
  for (auto left = total; left.count() > 0; left -= std::min(left, std::chrono::seconds(5))) {
    for (auto* n : nodes) n->keep_alive();
    clock.advance(std::min(left, std::chrono::seconds(5)));
  }
  for (auto* n : nodes) n->keep_alive();
}

// The result of a node's next_rendezvous(), the clock moving on a second at a time
// (the nodes keeping alive) while it is not there, up to a minute: a node that
// computed its wait from the time just before the last advance sees its deadline
// pass too, as it would with a real clock. A node waits at most until its deadline,
// so no result here that the tests expect can need more.
template <typename T>
T settle(ManualClock& clock, std::future<T>& result, std::vector<DynamicRendezvous*> nodes = {}) {
  for (int step = 0; step < 60 && result.wait_for(20ms) != std::future_status::ready; ++step) {
    for (auto* n : nodes) n->keep_alive();
    clock.advance(1s);
  }
  return result.get();
}

}  // namespace

TEST_CASE("join decision: closed, finished or timed out") {
  RendezvousState s;
  auto a = node("h", 1);
  s.closed = true;
  CHECK(next_join_action(s, context(a, 1, 2)) == JoinAction::error_closed);
  s.closed = false;
  s.participants[a] = 0;
  s.complete = true;
  CHECK(next_join_action(s, context(a, 1, 2)) == JoinAction::finish);
  s.complete = false;
  auto late = context(a, 1, 2);
  late.join_deadline_passed = true;
  CHECK(next_join_action(s, late) == JoinAction::remove_from_participants);
  s.participants.clear();
  s.wait_list.insert(a);
  CHECK(next_join_action(s, late) == JoinAction::remove_from_wait_list);
  late.join_grace_passed = true;
  CHECK(next_join_action(s, late) == JoinAction::error_timeout);
}

TEST_CASE("join decision: join, wait list, last call and complete") {
  RendezvousState s;
  auto a = node("h", 1), b = node("h", 2), c = node("h", 3);
  CHECK(next_join_action(s, context(a, 2, 3)) == JoinAction::add_to_participants);
  transitions::add_to_participants(s, a, 2, 3);
  CHECK(s.last_call == 0);
  CHECK(next_join_action(s, context(a, 2, 3)) == JoinAction::wait);  // below MIN
  transitions::add_to_participants(s, b, 2, 3);
  CHECK(s.last_call != 0);  // MIN reached: the last call runs
  CHECK_FALSE(s.complete);
  CHECK(next_join_action(s, context(a, 2, 3)) == JoinAction::wait);
  auto over = context(a, 2, 3);
  over.last_call_passed = true;
  CHECK(next_join_action(s, over) == JoinAction::mark_complete);
  transitions::mark_complete(s);
  CHECK(s.complete);
  CHECK(s.last_call == 0);
  // A complete round below MAX puts newcomers in the wait list.
  CHECK(next_join_action(s, context(c, 2, 3)) == JoinAction::add_to_wait_list);
  s.wait_list.insert(c);
  CHECK(next_join_action(s, context(c, 2, 3)) == JoinAction::wait);
  // At MAX there is no room to wait for.
  RendezvousState full;
  transitions::add_to_participants(full, a, 1, 1);
  CHECK(full.complete);
  CHECK(next_join_action(full, context(b, 1, 1)) == JoinAction::wait);
}

TEST_CASE("ranks: sorted nodes with the lower pid first on one host") {
  RendezvousState s;
  auto n0 = node("a", 900), n1 = node("a", 1000), n2 = node("b", 5);
  transitions::add_to_participants(s, n2, 1, 3);
  transitions::add_to_participants(s, n1, 1, 3);
  transitions::add_to_participants(s, n0, 1, 3);  // MAX: complete
  REQUIRE(s.complete);
  CHECK(s.participants[n0] == 0);
  CHECK(s.participants[n1] == 1);  // 1000 > 900 as numbers, though "1000" < "900" as text
  CHECK(s.participants[n2] == 2);
  CHECK(s.ranked() == std::vector<NodeDesc>{n0, n1, n2});
}

TEST_CASE("leaving: the last node out of a complete round starts the next and below MIN ends the last call") {
  RendezvousState s;
  auto a = node("h", 1), b = node("h", 2);
  transitions::add_to_participants(s, a, 1, 2);
  transitions::add_to_participants(s, b, 1, 2);
  REQUIRE(s.complete);
  transitions::remove_from_participants(s, a, 1);
  CHECK(s.complete);
  CHECK(s.round == 0);
  transitions::remove_from_participants(s, b, 1);
  CHECK_FALSE(s.complete);
  CHECK(s.round == 1);

  RendezvousState open;
  transitions::add_to_participants(open, a, 2, 3);
  transitions::add_to_participants(open, b, 2, 3);
  REQUIRE(open.last_call != 0);
  transitions::remove_from_participants(open, b, 2);
  CHECK(open.last_call == 0);
}

TEST_CASE("dead nodes leave the participants and the wait list") {
  RendezvousState s;
  auto a = node("h", 1), b = node("h", 2), c = node("h", 3);
  transitions::add_to_participants(s, a, 1, 3);
  transitions::add_to_participants(s, b, 1, 3);
  s.wait_list.insert(c);
  auto only_a = [&](const NodeDesc& n) { return n == a; };
  CHECK(transitions::remove_dead(s, only_a, 1));
  CHECK(s.participants.size() == 1);
  CHECK(s.wait_list.empty());
  CHECK_FALSE(transitions::remove_dead(s, only_a, 1));
}

TEST_CASE("survivors carried on: the next round, complete, of the live participants and waiting nodes") {
  auto a = node("h", 1), b = node("h", 2), c = node("h", 3), d = node("h", 4), e = node("h", 5);
  RendezvousState s;
  for (const auto& n : {a, b, c}) transitions::add_to_participants(s, n, 2, 3);
  REQUIRE(s.complete);
  s.wait_list = {d, e};
  auto all_alive = [](const NodeDesc&) { return true; };
  // Nobody lost: nothing to carry (a node leaving for a failure restart leaves as usual).
  CHECK_FALSE(transitions::carry_survivors(s, all_alive, 2, 3));
  CHECK(s.round == 0);
  // b lost: a, c and the waiting d (MAX 3) form round 1 at once; e waits on.
  auto not_b = [&](const NodeDesc& n) { return !(n == b); };
  REQUIRE(transitions::carry_survivors(s, not_b, 2, 3));
  CHECK(s.round == 1);
  CHECK(s.complete);
  CHECK(s.last_call == 0);
  CHECK(s.ranked() == std::vector<NodeDesc>{a, c, d});
  CHECK(s.wait_list == std::set<NodeDesc>{e});
  // Below MIN: nothing carried; the survivor joins anew.
  RendezvousState two;
  transitions::add_to_participants(two, a, 2, 2);
  transitions::add_to_participants(two, b, 2, 2);
  REQUIRE(two.complete);
  CHECK_FALSE(transitions::carry_survivors(two, not_b, 2, 2));
  CHECK(two.round == 0);
  CHECK(two.participants.size() == 2);
}

TEST_CASE("state: encoded and decoded whole and a foreign value refused") {
  RendezvousState s;
  s.round = 7;
  s.closed = true;
  s.last_call = 3;
  s.last_call_counter = 3;
  s.participants[node("host:with:colons", 12)] = 0;
  s.wait_list.insert(node("h", 5));
  auto back = RendezvousState::decode(s.encode());
  CHECK(back.encode() == s.encode());
  CHECK(back.participants.begin()->first.host == "host:with:colons");
  CHECK_THROWS_AS(RendezvousState::decode("gASVAAAA"), RendezvousStateError);
  CHECK_THROWS_AS(RendezvousState::decode("{\"version\":2}"), RendezvousStateError);
}

TEST_CASE("rdzv-conf: defaults and every key and bad values") {
  auto d = settings(1, 2);
  CHECK(d.join_timeout == 600s);
  CHECK(d.last_call_timeout == 30s);
  CHECK(d.close_timeout == 30s);
  CHECK(d.heartbeat_timeout == 5s);
  CHECK(d.keep_alive_interval == 5s);
  CHECK(d.keep_alive_max_attempt == 3);
  CHECK(d.session_ttl() == 15s);
  CHECK(d.read_timeout == 60s);
  CHECK(d.legacy_timeout == 900s);
  CHECK_FALSE(d.is_host);
  auto s = settings(1, 2,
                    {{"join_timeout", "7"},
                     {"last_call_timeout", "2"},
                     {"close_timeout", "3"},
                     {"heartbeat_timeout", "4"},
                     {"keep_alive_interval", "1"},
                     {"keep_alive_max_attempt", "2"},
                     {"read_timeout", "9"},
                     {"timeout", "5"},
                     {"is_host", "No"},
                     {"protocol", "https"},
                     {"unknown_key", "whatever"}});
  CHECK(s.join_timeout == 7s);
  CHECK(s.last_call_timeout == 2s);
  CHECK(s.close_timeout == 3s);
  CHECK(s.heartbeat_timeout == 4s);
  CHECK(s.session_ttl() == 2s);
  CHECK(s.read_timeout == 9s);
  CHECK(s.legacy_timeout == 5s);
  CHECK(s.is_host == false);
  CHECK(s.config.at("protocol") == "https");
  CHECK(settings(1, 1, {{"is_host", "TRUE"}}).is_host == true);
  for (const char* bad : {"0", "-1", "1.5", "", "x", "9999999999"})
    CHECK_THROWS_AS(settings(1, 1, {{"join_timeout", bad}}), RendezvousConfigError);
  CHECK_THROWS_AS(settings(1, 1, {{"keep_alive_max_attempt", "0"}}), RendezvousConfigError);
  CHECK_THROWS_AS(settings(1, 1, {{"is_host", "maybe"}}), RendezvousConfigError);
  CHECK_THROWS_AS(settings(1, 1, {{"store_type", "file"}}), RendezvousConfigError);
}

TEST_CASE("rendezvous: two nodes complete at MAX at once with ranks by node") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  DynamicRendezvous a(store->session(), settings(1, 2), node("h", 20), clock.as_function());
  DynamicRendezvous b(store->session(), settings(1, 2), node("h", 10), clock.as_function());
  auto first = std::async(std::launch::async, [&] { return a.next_rendezvous(); });
  auto second = b.next_rendezvous();  // the second to join completes the round
  auto info = first.get();
  CHECK(info.round == 0);
  CHECK(info.group_rank == 1);  // pid 20 after pid 10
  CHECK(second.group_rank == 0);
  CHECK(info.group_world_size() == 2);
  CHECK(a.check_round(info) == RoundHealth::healthy);
}

TEST_CASE("rendezvous: the first of the nodes waiting to join adds them all in one write") {
  auto store = std::make_shared<InMemoryStore>();
  // Two nodes that asked to join (alive and join keys) but have not acted yet.
  auto b = store->session();
  auto c = store->session();
  b->set_ephemeral("rdzv/job/alive/h:2:0", "1");
  b->set_ephemeral("rdzv/job/join/h:2:0", "1");
  c->set_ephemeral("rdzv/job/alive/h:3:0", "1");
  c->set_ephemeral("rdzv/job/join/h:3:0", "1");
  DynamicRendezvous a(store->session(), settings(3, 3), node("h", 1));
  auto info = a.next_rendezvous();
  CHECK(info.group_world_size() == 3);
  CHECK(info.group_rank == 0);
  CHECK(info.nodes[2] == node("h", 3));
  auto state = stored_state(*store);
  CHECK(state.complete);
  CHECK(state.participants.size() == 3);
}

TEST_CASE("rendezvous: a first waiting node that never acts holds the others up for fold_fallback at most") {
  auto store = std::make_shared<InMemoryStore>();
  auto stopped = store->session();
  stopped->set_ephemeral("rdzv/job/alive/h:1:0", "1");
  stopped->set_ephemeral("rdzv/job/join/h:1:0", "1");
  DynamicRendezvous b(store->session(), settings(2, 2), node("h", 2));
  auto joined = std::async(std::launch::async, [&] { return b.next_rendezvous(); });
  CHECK(joined.wait_for(std::chrono::milliseconds(DynamicRendezvous::fold_fallback) / 2) ==
        std::future_status::timeout);
  REQUIRE(joined.wait_for(30s) == std::future_status::ready);
  auto info = joined.get();
  CHECK(info.group_world_size() == 2);
  CHECK(info.group_rank == 1);
}

TEST_CASE("rendezvous: MIN nodes complete after the last call") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  DynamicRendezvous a(store->session(), settings(1, 2, {{"last_call_timeout", "30"}}), node("h", 1),
                      clock.as_function());
  auto joined = std::async(std::launch::async, [&] { return a.next_rendezvous(); });
  REQUIRE(eventually([&] { return stored_state(*store).participants.size() == 1; }));
  CHECK(joined.wait_for(50ms) == std::future_status::timeout);  // the last call runs
  clock.advance(31s);
  auto info = settle(clock, joined, {&a});
  CHECK(info.group_world_size() == 1);
  CHECK(stored_state(*store).complete);
}

TEST_CASE("rendezvous: no complete round by join_timeout is RendezvousTimeoutError and the node is removed") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  DynamicRendezvous a(store->session(), settings(2, 2, {{"join_timeout", "10"}}), node("h", 1), clock.as_function());
  auto joined = std::async(std::launch::async, [&] { return a.next_rendezvous(); });
  REQUIRE(eventually([&] { return stored_state(*store).participants.size() == 1; }));
  clock.advance(11s);
  CHECK_THROWS_AS(settle(clock, joined), RendezvousTimeoutError);
  CHECK(stored_state(*store).participants.empty());
  CHECK(store->snapshot().count("rdzv/job/join/h:1:0") == 0);  // no node adds it back
}

TEST_CASE("rendezvous: a closed rendezvous refuses nodes") {
  auto store = std::make_shared<InMemoryStore>();
  DynamicRendezvous a(store->session(), settings(1, 1), node("h", 1));
  auto info = a.next_rendezvous();
  CHECK(info.group_world_size() == 1);
  a.close();
  CHECK(a.check_round(info) == RoundHealth::closed);
  DynamicRendezvous late(store->session(), settings(1, 1), node("h", 2));
  CHECK_THROWS_AS(late.next_rendezvous(), RendezvousClosedError);
}

TEST_CASE("rendezvous: a late node waits in the wait list and the round reforms larger") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  auto conf = std::map<std::string, std::string>{{"last_call_timeout", "30"}};
  DynamicRendezvous a(store->session(), settings(1, 3, conf), node("h", 1), clock.as_function());
  DynamicRendezvous b(store->session(), settings(1, 3, conf), node("h", 2), clock.as_function());
  auto first = std::async(std::launch::async, [&] { return a.next_rendezvous(); });
  REQUIRE(eventually([&] { return stored_state(*store).participants.size() == 1; }));
  pass_time(clock, 31s, {&a, &b});
  auto round0 = settle(clock, first, {&a, &b});
  auto late = std::async(std::launch::async, [&] { return b.next_rendezvous(); });
  REQUIRE(eventually([&] { return stored_state(*store).wait_list.size() == 1; }));
  CHECK(a.check_round(round0) == RoundHealth::waiting_nodes);
  // a leaves its round (the last one out): the next round takes both.
  auto again = std::async(std::launch::async, [&] { return a.next_rendezvous(); });
  REQUIRE(eventually([&] { return stored_state(*store).participants.size() == 2; }));
  pass_time(clock, 31s, {&a, &b});
  auto round1 = settle(clock, again, {&a, &b});
  auto round1_b = settle(clock, late, {&a, &b});
  CHECK(round1.round == 1);
  CHECK(round1.group_world_size() == 2);
  CHECK(round1_b.group_rank == 1);
}

TEST_CASE("rendezvous: a disconnected node is lost at once and a silent one after the keep-alive TTL") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  auto conf = std::map<std::string, std::string>{{"keep_alive_interval", "5"}, {"keep_alive_max_attempt", "3"}};
  auto make = [&](long pid) {
    auto s = settings(1, 3, conf);
    std::shared_ptr<Store> session = store->session(s.session_ttl());
    return std::make_unique<DynamicRendezvous>(session, s, node("h", pid), clock.as_function());
  };
  auto a = make(1);
  auto c = make(3);
  std::shared_ptr<InMemorySession> b_session = store->session(15s);
  auto b = std::make_unique<DynamicRendezvous>(b_session, settings(1, 3, conf), node("h", 2), clock.as_function());
  auto ja = std::async(std::launch::async, [&] { return a->next_rendezvous(); });
  auto jb = std::async(std::launch::async, [&] { return b->next_rendezvous(); });
  auto round0 = c->next_rendezvous();  // the third: MAX
  auto round0_a = ja.get();
  jb.get();
  CHECK(round0.group_world_size() == 3);

  b_session->disconnect();  // as a SIGKILLed launcher's closed connection
  CHECK(a->check_round(round0_a) == RoundHealth::participant_lost);

  // c goes silent; a keeps alive: past the TTL only c is gone.
  clock.advance(10s);
  a->keep_alive();
  clock.advance(6s);
  CHECK(a->alive_nodes({c->node()}).count(c->node()) == 0);
  // The survivor rejoins alone: the dead leave the state, a new round of one forms.
  auto rejoin = std::async(std::launch::async, [&] { return a->next_rendezvous(); });
  REQUIRE(eventually([&] {
    auto s = stored_state(*store);
    return !s.complete && s.participants.size() == 1;
  }));
  pass_time(clock, 31s, {a.get()});
  auto round1 = settle(clock, rejoin, {a.get()});
  CHECK(round1.round == 1);
  CHECK(round1.group_world_size() == 1);
}

TEST_CASE("rendezvous: the survivors of a lost node are in a complete round at once, without a last call") {
  ManualClock clock;
  auto store = InMemoryStore::with_clock(clock);
  const std::map<std::string, std::string> conf{{"last_call_timeout", "30"}};
  auto make = [&](long pid) {
    auto s = settings(2, 3, conf);
    std::shared_ptr<InMemorySession> session = store->session(s.session_ttl());
    return std::make_pair(session,
                          std::make_unique<DynamicRendezvous>(session, s, node("h", pid), clock.as_function()));
  };
  // Not structured bindings: lambdas below capture them (C++20; clang 14 refuses).
  auto made_a = make(1);
  auto made_b = make(2);
  auto made_c = make(3);
  auto& sb = made_b.first;
  auto& a = made_a.second;
  auto& b = made_b.second;
  auto& c = made_c.second;
  auto ja = std::async(std::launch::async, [&] { return a->next_rendezvous(); });
  auto jb = std::async(std::launch::async, [&] { return b->next_rendezvous(); });
  auto round0 = c->next_rendezvous();  // MAX: complete at once
  auto round0_a = ja.get();
  jb.get();
  REQUIRE(round0.group_world_size() == 3);

  sb->disconnect();  // b's launcher is gone
  REQUIRE(a->check_round(round0_a) == RoundHealth::participant_lost);
  // The clock stands still: a last call of 30 s would never end.
  auto ra = std::async(std::launch::async, [&] { return a->next_rendezvous(round0_a.round); });
  REQUIRE(ra.wait_for(10s) == std::future_status::ready);
  auto round1_a = ra.get();
  CHECK(round1_a.round == 1);
  CHECK(round1_a.nodes == std::vector<NodeDesc>{a->node(), c->node()});
  // c, still in round 0, sees it left behind and finds itself in round 1.
  CHECK(c->check_round(round0) == RoundHealth::left_behind);
  auto rc = std::async(std::launch::async, [&] { return c->next_rendezvous(round0.round); });
  REQUIRE(rc.wait_for(10s) == std::future_status::ready);
  auto round1_c = rc.get();
  CHECK(round1_c.round == 1);
  CHECK(round1_c.group_rank == 1);
  CHECK(a->check_round(round1_a) == RoundHealth::healthy);
}
