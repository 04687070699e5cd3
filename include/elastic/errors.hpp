// elastic: structured failure propagation for native distributed workers,
// file-compatible with PyTorch's TorchElastic.
//
//   #include <elastic/errors.hpp>
//   int train(int argc, char** argv);
//   ELASTIC_RECORD_MAIN(train)
#pragma once

#include <elastic/errors/child_failed_error.hpp>
#include <elastic/errors/crash_handler.hpp>
#include <elastic/errors/error_handler.hpp>
#include <elastic/errors/handlers.hpp>
#include <elastic/errors/launched.hpp>
#include <elastic/errors/process_failure.hpp>
#include <elastic/errors/record.hpp>
#include <elastic/errors/signals.hpp>
#include <elastic/errors/stacktrace.hpp>
#include <elastic/errors/throw_trace.hpp>
#include <elastic/version.hpp>
