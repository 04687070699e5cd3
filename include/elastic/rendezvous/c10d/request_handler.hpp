// Decodes one request, runs it on the key-value table and encodes its answer.
// Waits that cannot be answered yet come back as a Parked request for the server
// to answer when the table changes or the wait's time is up.
#pragma once

#include <chrono>
#include <cstdint>
#include <elastic/rendezvous/c10d/wire.hpp>
#include <elastic/rendezvous/key_value_table.hpp>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace elastic::rendezvous::c10d {

// The requesting connection's session.
struct Session {
  KeyValueTable::SessionId id = 0;
  bool expired = false;  // no keep-alive within the TTL: its keys are gone
};

struct Parked {
  std::function<bool()> satisfied;
  std::function<std::string()> answer;
  std::chrono::milliseconds timeout{0};
};

struct Handled {
  std::string answer;            // when not parked
  std::optional<Parked> parked;  // a wait to answer later
  bool renew_session = false;    // a keep-alive
};

class RequestHandler {
 public:
  RequestHandler(KeyValueTable& table, std::uint32_t max_answer) : table_(table), max_answer_(max_answer) {}

  // Never throws: a malformed or failing request gets an error answer.
  Handled handle(const std::string& request, Session& session) {
    try {
      return run(request, session);
    } catch (const std::exception& e) {
      return {error(e.what()), std::nullopt, false};
    }
  }

  static std::string error(const std::string& message) { return Writer().u8(1).str(message).data(); }

 private:
  Handled run(const std::string& request, Session& session) {
    Reader in(request);
    const auto op = static_cast<Op>(in.u8());
    Writer out;
    out.u8(0);
    Handled handled;
    switch (op) {
      case Op::get: out.opt(table_.get(in.str())); break;
      case Op::get_many: {
        const std::size_t n = in.count(4);
        out.u32(static_cast<std::uint32_t>(n));
        for (std::size_t i = 0; i < n; ++i) {
          out.opt(table_.get(in.str()));
          if (out.size() > max_answer_) throw StoreError(too_large());
        }
        break;
      }
      case Op::list_keys: {
        auto keys = table_.keys_with_prefix(in.str());
        out.u32(static_cast<std::uint32_t>(keys.size()));
        for (const auto& key : keys) {
          out.str(key);
          if (out.size() > max_answer_) throw StoreError(too_large());
        }
        break;
      }
      case Op::set: {
        auto key = in.str();
        table_.set(key, in.str());
        break;
      }
      case Op::compare_set: {
        auto key = in.str();
        auto expected = in.opt();
        auto result = table_.compare_set(key, expected, in.str());
        out.u8(result.swapped ? 1 : 0).opt(result.current);
        break;
      }
      case Op::add: {
        auto key = in.str();
        out.u64(static_cast<std::uint64_t>(table_.add(key, static_cast<std::int64_t>(in.u64()))));
        break;
      }
      case Op::remove: out.u8(table_.remove(in.str()) ? 1 : 0); break;
      case Op::wait: {
        std::vector<std::string> keys(in.count(4));
        for (auto& key : keys) key = in.str();
        const auto timeout = std::chrono::milliseconds(in.u64());
        auto& table = table_;
        auto all = [&table, keys] { return table.contains_all(keys); };
        handled.parked = Parked{all, [all] { return Writer().u8(0).u8(all() ? 1 : 0).data(); }, timeout};
        return handled;
      }
      case Op::wait_change: {
        auto key = in.str();
        auto seen = in.opt();
        const auto timeout = std::chrono::milliseconds(in.u64());
        auto& table = table_;
        const std::uint32_t cap = max_answer_;
        handled.parked = Parked{[&table, key, seen] { return table.get(key) != seen; },
                                [&table, key, cap] {
                                  auto out = Writer().u8(0).opt(table.get(key));
                                  if (out.size() > cap) return error(too_large());
                                  return out.data();
                                },
                                timeout};
        return handled;
      }
      case Op::set_ephemeral: {
        auto key = in.str();
        auto value = in.str();
        if (session.expired) throw StoreError("set_ephemeral: the session has expired");
        table_.set_ephemeral(session.id, key, value);
        break;
      }
      case Op::keep_alive: {
        out.u8(session.expired ? 0 : 1);
        session.expired = false;
        handled.renew_session = true;
        break;
      }
      default: throw StoreError("unknown rendezvous store request " + std::to_string(static_cast<int>(op)));
    }
    if (out.size() > max_answer_) throw StoreError(too_large());
    handled.answer = out.data();
    return handled;
  }

  static std::string too_large() { return "the answer would be larger than the store's limit"; }

  KeyValueTable& table_;
  std::uint32_t max_answer_;
};

}  // namespace elastic::rendezvous::c10d
