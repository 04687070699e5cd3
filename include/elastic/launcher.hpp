// Launching a job's workers on this node, torchrun-style.
#pragma once

#include <elastic/launcher/config.hpp>
#include <elastic/launcher/launch.hpp>
