// The C++ side of the conformance driver: reads a case (a JSON description of a
// failures map) and prints, as JSON, what our ProcessFailure and ChildFailedError
// make of it, field by field, so the driver can compare with PyTorch's classes.
//
//   summarize CASE.json     (or "-" for stdin)
//
// Case: {"name": "trainer", "enrich": "optional suffix",
//        "failures": [{"rank": 0, "local_rank": 0, "pid": 997, "exitcode": 1,
//                      "error_file": "/path/error.json"}, ...]}
// Output: {"fqdn", "failures": [{"rank", "ok", fields... | "error"}],
//          "root_rank", "summary" (format_msg()), "what" (only when every file was read),
//          "described_summary" (always: built with read_or_describe)}
#include <elastic/errors.hpp>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace {

// A handler whose hook appends a fixed text, to check when and where the
// enrichment of a signal failure is applied.
class EnrichingHandler : public elastic::ErrorHandler {
 public:
  explicit EnrichingHandler(std::string suffix) : suffix_(std::move(suffix)) {}
  std::string maybe_enrich_signal_failure_message(std::string message, const std::string& error_file) override {
    return message + suffix_ + " (" + error_file + ")";
  }

 private:
  std::string suffix_;
};

std::string read_input(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Every string we print is valid UTF-8 (the reader rejects anything else), but
// replace rather than throw should that ever change: the driver reports it.
std::string dump(const nlohmann::json& value) {
  return value.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: summarize CASE.json|-\n";
    return 2;
  }
  const nlohmann::json spec = nlohmann::json::parse(read_input(argv[1]));
  if (spec.contains("enrich"))
    elastic::set_error_handler(std::make_shared<EnrichingHandler>(spec["enrich"].get<std::string>()));

  const std::string name = spec.value("name", std::string("trainer"));
  nlohmann::json out;
  out["fqdn"] = elastic::fqdn();
  out["failures"] = nlohmann::json::array();
  elastic::ChildFailedError::Failures read, described;
  bool all_read = true;
  for (const auto& f : spec.at("failures")) {
    const int rank = f.at("rank").get<int>();
    const int local_rank = f.at("local_rank").get<int>();
    const int pid = f.at("pid").get<int>();
    const int exitcode = f.at("exitcode").get<int>();
    const std::string path = f.at("error_file").get<std::string>();
    nlohmann::json row;
    row["rank"] = rank;
    try {
      elastic::ProcessFailure failure(local_rank, pid, exitcode, path);
      row["ok"] = true;
      row["message"] = failure.message;
      row["timestamp"] = failure.timestamp;
      row["signal_name"] = failure.signal_name();
      row["timestamp_isoformat"] = failure.timestamp_isoformat();
      row["error_file"] = failure.error_file;
      row["error_file_data"] = failure.error_file_data;
      read.emplace(rank, std::move(failure));
    } catch (const elastic::ErrorFileError& e) {
      row["ok"] = false;
      row["error"] = e.what();
      all_read = false;
    }
    described.emplace(rank, elastic::ProcessFailure::read_or_describe(local_rank, pid, exitcode, path));
    out["failures"].push_back(std::move(row));
  }
  if (all_read && !read.empty()) {
    elastic::ChildFailedError error(name, std::move(read));
    out["root_rank"] = error.get_first_failure().first;
    out["summary"] = error.format_msg();
    // what() is a C string: the same text, cut at an embedded NUL if there is one.
    out["what"] = std::string(error.what());
  }
  if (!described.empty()) out["described_summary"] = elastic::ChildFailedError(name, std::move(described)).format_msg();
  std::cout << dump(out) << '\n';
  return 0;
}
