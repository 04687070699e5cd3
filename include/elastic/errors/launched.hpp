#pragma once

#include <cstdlib>

namespace elastic {

// True when this process was started by a TorchElastic-compatible launcher
// (elastic-run or torchrun): exactly when TORCHELASTIC_RUN_ID is set.
inline bool is_torchelastic_launched() { return std::getenv("TORCHELASTIC_RUN_ID") != nullptr; }

}  // namespace elastic
