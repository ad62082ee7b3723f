// The subcommands of `breakwater`: each registers its options on the CLI11 app and
// returns the function that runs it once the command line is parsed.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace bw::cli {

using CommandRunner = std::function<int()>;

CommandRunner register_generate(CLI::App& app);
CommandRunner register_make_model(CLI::App& app);
CommandRunner register_tokenize(CLI::App& app);
CommandRunner register_serve(CLI::App& app);
CommandRunner register_bench(CLI::App& app);

}  // namespace bw::cli
