// The unit built with ELASTIC_THROW_TRACES on; see mixed_traces_off.cpp. Built as
// C++20 where the compiler has constinit, which then checks that the crash
// handler's state is constant-initialized.
#include <elastic/errors.hpp>

#if !ELASTIC_THROW_TRACES
#error "this unit must be built with ELASTIC_THROW_TRACES on"
#endif

int unit_built_with_traces() { return 1; }
