// Cuts a byte stream into request frames (u32 length, then the body) as bytes
// arrive: a frame's body grows with the bytes actually received, never with the
// length announced, and a length above the limit is refused before any byte of
// the body is stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace elastic::rendezvous::c10d {

class FrameParser {
 public:
  enum class Result { incomplete, complete, too_large, empty };

  explicit FrameParser(std::uint32_t max_frame) : max_frame_(max_frame) {}

  // Takes bytes from data[0..size) up to the end of one frame; `used` says how many.
  Result consume(const char* data, std::size_t size, std::size_t& used) {
    used = 0;
    while (used < size && header_.size() < 4) header_.push_back(data[used++]);
    if (header_.size() < 4) return Result::incomplete;
    if (length_ == 0) {
      for (int i = 3; i >= 0; --i)
        length_ = (length_ << 8) | static_cast<unsigned char>(header_[static_cast<std::size_t>(i)]);
      if (length_ == 0) return Result::empty;
      if (length_ > max_frame_) return Result::too_large;
    }
    const std::size_t wanted = std::min<std::size_t>(length_ - body_.size(), size - used);
    body_.append(data + used, wanted);
    used += wanted;
    return body_.size() == length_ ? Result::complete : Result::incomplete;
  }
  // Whether a frame has begun (its deadline runs).
  bool started() const { return !header_.empty(); }
  std::uint32_t announced() const { return length_; }
  // The complete frame's body; the parser starts over.
  std::string take() {
    std::string body = std::move(body_);
    reset();
    return body;
  }
  void reset() {
    header_.clear();
    body_.clear();
    length_ = 0;
  }

 private:
  std::uint32_t max_frame_;
  std::string header_;
  std::string body_;
  std::uint32_t length_ = 0;
};

}  // namespace elastic::rendezvous::c10d
