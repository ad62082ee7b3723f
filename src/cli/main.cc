// breakwater: the command-line entry point. Each subcommand lives in its own file.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"Breakwater: a self-hosted LLM inference server for DeepSeek-family models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "breakwater 0.1.0");
  struct Entry {
    CLI::App* sub;
    bw::cli::CommandRunner run;
  };
  std::vector<Entry> commands;
  auto add = [&](const char* name, const char* help, bw::cli::CommandRunner (*reg)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    commands.push_back({sub, reg(*sub)});
  };
  add("serve", "Serve a model over an OpenAI-compatible HTTP API", &bw::cli::register_serve);
  add("generate", "Generate tokens from a prompt with a model on this machine", &bw::cli::register_generate);
  add("tokenize", "Turn text into token ids (or ids into text) with a model's tokenizer", &bw::cli::register_tokenize);
  add("make-model", "Write a random-weight model with the exact shapes of a real one", &bw::cli::register_make_model);
  add("bench", "Benchmark a server over HTTP (bench serve) or the engine in-process (bench offline)",
      &bw::cli::register_bench);
  CLI11_PARSE(app, argc, argv);
  for (const auto& c : commands) {
    if (c.sub->parsed()) return c.run();
  }
  return 1;
}
