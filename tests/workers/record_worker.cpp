// A worker for the tests: `record_worker MODE [ARG]` fails (or not) in the way
// MODE names, under ELASTIC_RECORD_MAIN like a user's worker.
#include <csignal>
#include <cstdio>
#include <elastic/errors.hpp>
#include <map>
#include <stdexcept>
#include <string>

namespace {

struct SentinelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct NotAnException {
  int code;
};

[[noreturn]] void throw_nested() {
  try {
    throw std::invalid_argument("learning rate must be positive");
  } catch (...) {
    std::throw_with_nested(std::runtime_error("optimizer setup failed"));
  }
}

}  // namespace

int worker_main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "ok";
  if (mode == "ok") return 0;
  if (mode == "return") return argc > 2 ? std::stoi(argv[2]) : 0;
  if (mode == "throw") throw SentinelError("foobar");
  if (mode == "nested") throw_nested();
  if (mode == "throw_int") throw 42;
  if (mode == "throw_cstr") throw "plain C string";
  if (mode == "throw_struct") throw NotAnException{7};
  if (mode == "system_exit") throw elastic::SystemExit{argc > 2 ? std::stoi(argv[2]) : 0};
  if (mode == "signal") std::raise(argc > 2 ? std::stoi(argv[2]) : SIGSEGV);
  if (mode == "child_failure") {
    // argv[2]: a child's error file; argv[3]: its exit code.
    std::map<int, elastic::ProcessFailure> failures;
    failures.emplace(0, elastic::ProcessFailure(0, 1234, std::stoi(argv[3]), argv[2]));
    throw elastic::ChildFailedError("trainer", std::move(failures));
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}

ELASTIC_RECORD_MAIN(worker_main)
