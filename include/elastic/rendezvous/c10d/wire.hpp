// The c10d store's wire format: framing, field encoding, the handshake and its
// optional proof of the job secret. Shared by the server and the client.
//
// The protocol is ours, not PyTorch's TCPStore: PyTorch's rendezvous state is a
// pickled Python object, so torchrun and elastic-run agents can never share a
// rendezvous, and mixing them must fail at once rather than hang.
//   handshake  client -> server: "ELASTIC-RDZV\n" u32 version, u64 session TTL (ms)
//              server -> client: "ELASTIC-RDZV\n" u32 version, u8 answer
//                answer 0: version refused; 1: accepted;
//                       2: a job secret is required, followed by a 32-byte server nonce;
//                       3: busy (connection limits), followed by a reason string.
//              after answer 2:
//              client -> server: 32-byte client nonce, HMAC-SHA256(secret, "client" Ns Nc)
//              server -> client: HMAC-SHA256(secret, "server" Ns Nc); a wrong proof is
//                                answered by closing the connection
//   request    u32 length, then u8 op and its fields
//   response   u32 length, then u8 status (0 ok, 1 error + message) and fields
// Integers are little-endian, strings a u32 length and bytes. Anything else that
// connects is disconnected at its first bytes that differ from the magic.
#pragma once

#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <elastic/rendezvous/store.hpp>
#include <optional>
#include <string>

namespace elastic::rendezvous::c10d {

inline constexpr char magic[] = "ELASTIC-RDZV\n";
inline constexpr std::size_t magic_size = sizeof(magic) - 1;
inline constexpr std::uint32_t protocol_version = 1;
// The client's hello after the magic: u32 version, u64 TTL.
inline constexpr std::size_t hello_size = magic_size + 12;
// Requests and answers above these are refused. Rendezvous values are small (a
// round's state is about 100 bytes per node, an alive key about 60): 4 MiB of
// request holds tens of thousands of nodes; an answer may gather many values.
inline constexpr std::uint32_t default_max_request = 4u << 20;
inline constexpr std::uint32_t default_max_answer = 16u << 20;
// The longest single server-side wait of one request: a long wait is sent as short
// ones so that keep-alives on the same client are never held up for long.
inline constexpr std::chrono::milliseconds wait_slice{250};

enum class Op : std::uint8_t {
  get = 1,
  get_many,
  set,
  compare_set,
  add,
  remove,
  wait,
  wait_change,
  set_ephemeral,
  keep_alive,
  list_keys,
};

enum class HandshakeAnswer : std::uint8_t { refused = 0, accepted = 1, secret_required = 2, busy = 3 };

inline constexpr std::size_t nonce_size = 32;
inline constexpr std::size_t proof_size = 32;
using Nonce = std::array<unsigned char, nonce_size>;
using Proof = std::array<unsigned char, proof_size>;

class Writer {
 public:
  Writer& u8(std::uint8_t v) {
    data_.push_back(static_cast<char>(v));
    return *this;
  }
  Writer& u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) data_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  Writer& u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) data_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  Writer& str(const std::string& s) {
    u32(static_cast<std::uint32_t>(s.size()));
    data_ += s;
    return *this;
  }
  Writer& opt(const std::optional<std::string>& s) {
    u8(s ? 1 : 0);
    if (s) str(*s);
    return *this;
  }
  Writer& raw(const unsigned char* bytes, std::size_t n) {
    data_.append(reinterpret_cast<const char*>(bytes), n);
    return *this;
  }
  // The message with its length in front.
  std::string framed() const {
    Writer frame;
    frame.u32(static_cast<std::uint32_t>(data_.size()));
    return frame.data_ + data_;
  }
  const std::string& data() const { return data_; }
  std::size_t size() const { return data_.size(); }

 private:
  std::string data_;
};

// Reads fields; a field past the end is a StoreError ("malformed"), so no length or
// count sent by a peer is trusted beyond the bytes it actually sent.
class Reader {
 public:
  explicit Reader(const std::string& data) : data_(data) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)[0]); }
  std::uint32_t u32() {
    auto b = take(4);
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<std::size_t>(i)]);
    return v;
  }
  std::uint64_t u64() {
    auto b = take(8);
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[static_cast<std::size_t>(i)]);
    return v;
  }
  std::string str() { return take(u32()); }
  std::optional<std::string> opt() {
    if (u8() == 0) return std::nullopt;
    return str();
  }
  // A count of items that take at least `min_item_size` bytes each, checked against
  // the bytes left before anyone allocates for it.
  std::size_t count(std::size_t min_item_size) {
    const std::uint32_t n = u32();
    if (static_cast<std::uint64_t>(n) * min_item_size > left())
      throw StoreError("malformed rendezvous store message (a count larger than the bytes sent)");
    return n;
  }
  template <std::size_t N>
  std::array<unsigned char, N> bytes() {
    auto b = take(N);
    std::array<unsigned char, N> out{};
    for (std::size_t i = 0; i < N; ++i) out[i] = static_cast<unsigned char>(b[i]);
    return out;
  }
  std::size_t left() const { return data_.size() - pos_; }

 private:
  std::string take(std::size_t n) {
    if (left() < n) throw StoreError("malformed rendezvous store message");
    std::string out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  const std::string& data_;
  std::size_t pos_ = 0;
};

inline std::string hello(std::uint32_t version, std::uint64_t ttl_ms) {
  Writer w;
  w.u32(version).u64(ttl_ms);
  return std::string(magic, magic_size) + w.data();
}

inline std::string handshake_answer(HandshakeAnswer answer) {
  Writer w;
  w.u32(protocol_version).u8(static_cast<std::uint8_t>(answer));
  return std::string(magic, magic_size) + w.data();
}

inline Nonce random_nonce() {
  Nonce nonce{};
  if (RAND_bytes(nonce.data(), static_cast<int>(nonce.size())) != 1) throw StoreError("no random bytes for a nonce");
  return nonce;
}

// HMAC-SHA256(secret, role || server nonce || client nonce).
inline Proof prove(const std::string& secret, const std::string& role, const Nonce& server, const Nonce& client) {
  std::string message = role;
  message.append(reinterpret_cast<const char*>(server.data()), server.size());
  message.append(reinterpret_cast<const char*>(client.data()), client.size());
  Proof proof{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), proof.data(), &length);
  return proof;
}

// Compares in time independent of where the proofs differ.
inline bool same_proof(const Proof& a, const Proof& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

}  // namespace elastic::rendezvous::c10d
