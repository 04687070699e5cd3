// libFuzzer target: the c10d store server's request path, fed raw bytes as a
// peer would send them after the handshake: the frame parser cuts them into
// requests and the request handler runs each on a small key-value table. Any
// input must end in answers (error answers for nonsense); a crash, an exception
// out of the handler, an answer above the limit or a table above its bound is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <elastic/rendezvous/c10d/frame_parser.hpp>
#include <elastic/rendezvous/c10d/request_handler.hpp>
#include <elastic/rendezvous/key_value_table.hpp>
#include <string>

namespace {

void check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace elastic::rendezvous;
  constexpr std::uint32_t max_request = 4096, max_answer = 8192;
  constexpr std::size_t max_bytes = 16384;
  KeyValueTable table(max_bytes);
  c10d::RequestHandler handler(table, max_answer);
  c10d::FrameParser parser(max_request);
  c10d::Session session{1, false};
  const char* bytes = reinterpret_cast<const char*>(data);
  std::size_t offset = 0;
  while (offset < size) {
    std::size_t used = 0;
    auto result = parser.consume(bytes + offset, size - offset, used);
    check(used <= size - offset);
    offset += used;
    if (result == c10d::FrameParser::Result::too_large || result == c10d::FrameParser::Result::empty) break;
    if (result == c10d::FrameParser::Result::incomplete) {
      check(offset == size);
      break;
    }
    const std::string request = parser.take();
    check(request.size() <= max_request);
    auto handled = handler.handle(request, session);
    if (handled.parked) {
      // A parked wait is answered at its timeout.
      handled.answer = handled.parked->answer();
    }
    check(handled.answer.size() <= max_answer + 64);
    check(!handled.answer.empty() && (handled.answer[0] == 0 || handled.answer[0] == 1));
    check(table.bytes() <= max_bytes);
    if (size % 7 == 0) table.end_session(session.id);
  }
  return 0;
}
