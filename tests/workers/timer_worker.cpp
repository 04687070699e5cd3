// A native worker for the timer tests: elastic::expires_after around work that may hang.
//
//   timer_worker DIR hang RANK   rank RANK hangs (60 s) inside a 1 s timer; the others wait
//                                 inside a 60 s timer for DIR/release, then exit 0
//   timer_worker DIR release     a 1 s timer around quick work, released; then 2 s outside it
// Every worker writes DIR/<RANK>.active: whether its timer reached a server.
#include <chrono>
#include <elastic/timer.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string dir = argv[1], mode = argv[2];
  const char* rank_env = std::getenv("RANK");
  const std::string rank = rank_env != nullptr ? rank_env : "0";
  auto report = [&](bool active) { std::ofstream(dir + "/" + rank + ".active") << (active ? "1" : "0"); };
  using namespace std::chrono_literals;
  if (mode == "hang" && argc > 3) {
    if (rank == argv[3]) {
      auto timer = elastic::expires_after(1s, "hang");
      report(timer.active());
      std::this_thread::sleep_for(60s);
      return 0;
    }
    auto timer = elastic::expires_after(60s);
    report(timer.active());
    for (int i = 0; i < 600 && !std::filesystem::exists(dir + "/release"); ++i) std::this_thread::sleep_for(100ms);
    return 0;
  }
  if (mode == "release") {
    {
      auto timer = elastic::expires_after(1s);
      report(timer.active());
    }
    std::this_thread::sleep_for(2s);
    return 0;
  }
  return 2;
}
