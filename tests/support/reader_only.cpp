// What a launcher includes to read its children's failures. Compiled with -H by a
// test that fails when crash capture (the worker side) or abseil comes along.
#include <elastic/errors/child_failed_error.hpp>
#include <elastic/errors/hostname.hpp>
#include <elastic/errors/process_failure.hpp>
#include <elastic/launcher/launch.hpp>
#include <elastic/log.hpp>
#include <elastic/write_all.hpp>
