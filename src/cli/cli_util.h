// Small helpers shared by the CLI subcommands.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace bw::cli {

// "1,2, 3" -> {1, 2, 3}; InvalidArgument naming the bad item otherwise.
Result<std::vector<int32_t>> parse_id_list(const std::string& text);

// Prints "error: <message>" to stderr and returns the exit code for a failed command.
int report_error(const Status& status);

}  // namespace bw::cli
