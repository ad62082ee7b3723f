// breakwater: the command-line entry point. Each subcommand lives in its own file.
#include <CLI/CLI.hpp>

int main(int argc, char** argv) {
  CLI::App app{"Breakwater: a self-hosted LLM inference server"};
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
