// Native crash capture; see crash/install.hpp for what each file of crash/ holds.
#pragma once

#include <elastic/errors/crash/install.hpp>
