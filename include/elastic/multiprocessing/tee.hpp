// Tee of one worker stream: raw bytes to its log file, and whole lines, each
// with the rank's prefix, to the console. Every console write() carries only
// whole lines of one rank, so ranks never split or mix each other's lines; a
// last line without a newline is completed at the end.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <elastic/detail/write_all.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace elastic::multiprocessing {

namespace detail {
using ::elastic::detail::write_all;
}  // namespace detail

class LinePrefixer {
 public:
  // A line longer than this is cut so a stream without newlines cannot grow memory.
  static constexpr std::size_t max_line = 1u << 16;

  LinePrefixer() = default;
  LinePrefixer(int console_fd, std::string prefix) : fd_(console_fd), prefix_(std::move(prefix)) {}

  bool enabled() const { return fd_ >= 0; }

  // Lines containing any of `filters` (plain substrings) are also written, with their
  // prefix, to `fd` (shared by the ranks: each write() holds whole lines of one rank).
  void duplicate_to(int fd, const std::vector<std::string>* filters) {
    duplicate_fd_ = fd;
    filters_ = filters;
  }

  void feed(std::string_view data) {
    if (fd_ < 0 || data.empty()) return;
    std::size_t last_newline = data.rfind('\n');
    if (last_newline == std::string_view::npos) {
      partial_.append(data);
      if (partial_.size() >= max_line) flush();
      return;
    }
    out_.clear();
    std::string_view whole = data.substr(0, last_newline + 1);
    std::size_t start = 0;
    while (start < whole.size()) {
      std::size_t end = whole.find('\n', start);
      if (out_.empty() && !partial_.empty()) {
        out_ += prefix_;
        out_ += partial_;
        partial_.clear();
      } else {
        out_ += prefix_;
      }
      out_.append(whole.substr(start, end + 1 - start));
      start = end + 1;
    }
    partial_.assign(data.substr(last_newline + 1));
    emit();
    if (partial_.size() >= max_line) flush();
  }

  // Shows a pending partial line, completed with a newline.
  void flush() {
    if (fd_ < 0 || partial_.empty()) return;
    out_.clear();
    out_ += prefix_;
    out_ += partial_;
    out_ += '\n';
    partial_.clear();
    emit();
  }

 private:
  void emit() {
    if (duplicate_fd_ >= 0 && filters_ != nullptr && !filters_->empty()) duplicate_matching();
    if (!detail::write_all(fd_, out_.data(), out_.size())) fd_ = -1;  // console gone: keep the file only
    out_.clear();
  }

  void duplicate_matching() {
    std::string matching;
    for (std::size_t start = 0; start < out_.size();) {
      std::size_t end = out_.find('\n', start);
      end = end == std::string::npos ? out_.size() : end + 1;
      // The filters see the worker's line, not the prefix.
      const std::string_view line = std::string_view(out_).substr(start + prefix_.size(), end - start - prefix_.size());
      for (const auto& filter : *filters_)
        if (line.find(filter) != std::string_view::npos) {
          matching.append(out_, start, end - start);
          break;
        }
      start = end;
    }
    if (!matching.empty() && !detail::write_all(duplicate_fd_, matching.data(), matching.size())) duplicate_fd_ = -1;
  }

  int fd_ = -1;
  int duplicate_fd_ = -1;
  const std::vector<std::string>* filters_ = nullptr;
  std::string prefix_;
  std::string partial_;
  std::string out_;
};

}  // namespace elastic::multiprocessing
