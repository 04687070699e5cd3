// Starting, watching and stopping groups of worker processes.
#pragma once

#include <elastic/multiprocessing/job_cgroup.hpp>
#include <elastic/multiprocessing/logs_specs.hpp>
#include <elastic/multiprocessing/logs_specs_registry.hpp>
#include <elastic/multiprocessing/pcontext.hpp>
#include <elastic/multiprocessing/spawn.hpp>
#include <elastic/multiprocessing/std.hpp>
#include <elastic/multiprocessing/tee.hpp>
#include <elastic/multiprocessing/watchdog.hpp>
