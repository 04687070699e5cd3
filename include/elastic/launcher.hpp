// Launching a job's workers on this node, torchrun-style.
#pragma once

#include <elastic/launcher/config.hpp>
#include <elastic/launcher/launch.hpp>

namespace elastic {
// elastic::launch(config, entrypoint, args), as PyTorch's elastic_launch.
using launcher::launch;
using launcher::LaunchConfig;
}  // namespace elastic
