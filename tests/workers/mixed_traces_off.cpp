// Built with ELASTIC_THROW_TRACES=0 and linked with mixed_traces_on.cpp, which is
// built with it on: the program must trace throws whichever unit the linker reads
// first (no inline body may differ between the two).
#include <elastic/errors.hpp>
#include <stdexcept>

#if ELASTIC_THROW_TRACES
#error "this unit must be built with ELASTIC_THROW_TRACES=0"
#endif

int unit_built_with_traces();

__attribute__((noinline)) void throw_in_unit_without_traces() { throw std::runtime_error("thrown in the off unit"); }

int mixed_main() {
  if (unit_built_with_traces() != 1) return 2;
  throw_in_unit_without_traces();
  return 0;
}

ELASTIC_RECORD_MAIN(mixed_main)
