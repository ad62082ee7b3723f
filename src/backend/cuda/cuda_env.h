// The CUDA backend's environment switches (measurement and A/B aids, documented in the
// README): read where each is used, usually once into a static.
#pragma once

#include <cstdlib>
#include <string_view>

namespace bw::cuda {

// The integer in environment variable `name`, or `unset` when it is not set.
inline int env_int(const char* name, int unset) {
  const char* env = std::getenv(name);
  return env != nullptr ? std::atoi(env) : unset;
}

// An on/off switch that is on unless set to "0" (e.g. BW_CUDA_FUSE=0).
inline bool env_switch_on(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::string_view(env) != "0";
}

}  // namespace bw::cuda
