#include <elastic/errors.hpp>
#include <stdexcept>

int run(int argc, char**) {
  if (argc > 1) throw std::runtime_error("consumer failed on purpose");
  return 0;
}

ELASTIC_RECORD_MAIN(run)
