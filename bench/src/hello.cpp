// The record happy-path figure: the same C++ hello-world (iostream, so both link
// libstdc++ as any C++ worker does), built once as a plain program and once with
// its main wrapped in elastic::record (ELASTIC_BENCH_RECORD).
#include <iostream>

#ifdef ELASTIC_BENCH_RECORD
#include <elastic/errors.hpp>
#endif

static int hello(int, char**) {
  std::cout << "hello" << std::endl;
  return 0;
}

#ifdef ELASTIC_BENCH_RECORD
ELASTIC_RECORD_MAIN(hello)
#else
int main(int argc, char** argv) { return hello(argc, argv); }
#endif
