// The record happy-path figure: the same C++ hello-world (iostream, so both link
// libstdc++ as any C++ worker does), built once as a plain program and once with
// its main wrapped in elastic::record (ELASTIC_BENCH_RECORD), and once with record
// linked but not run (ELASTIC_BENCH_LINK_ONLY), to tell library loading apart.
#include <iostream>

#if defined(ELASTIC_BENCH_RECORD) || defined(ELASTIC_BENCH_LINK_ONLY)
#include <elastic/errors.hpp>
#endif

static int hello(int, char**) {
  std::cout << "hello" << std::endl;
  return 0;
}

#ifdef ELASTIC_BENCH_RECORD
ELASTIC_RECORD_MAIN(hello)
#elif defined(ELASTIC_BENCH_LINK_ONLY)
// record is linked in (same libraries loaded) but never runs: no program has 100 arguments here.
int main(int argc, char** argv) { return argc > 99 ? elastic::record(hello)(argc, argv) : hello(argc, argv); }
#else
int main(int argc, char** argv) { return hello(argc, argv); }
#endif
