// `breakwater make-model`: write a random-weight model with the exact shapes of a preset.
#include <cstdio>
#include <memory>
#include <string>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "common/thread_pool.h"
#include "model/presets.h"
#include "model/random_model.h"

namespace bw::cli {

namespace {

struct MakeModelArgs {
  std::string preset;
  std::string out;
  std::string format = "safetensors";
  std::string dtype = "bf16";
  uint64_t seed = 0;
  std::string tokenizer_from;
  bool list = false;
};

Status run_make_model(const MakeModelArgs& args) {
  if (args.list) {
    for (const auto& p : model_presets())
      std::printf("%-32s %s\n", p.name.c_str(), p.description.c_str());
    return OkStatus();
  }
  if (args.preset.empty() || args.out.empty())
    return InvalidArgument("make-model needs --preset and --out (or --list)");
  ASSIGN_OR_RETURN(ModelConfig config, find_model_preset(args.preset));
  RandomModelOptions options;
  if (args.format == "gguf") {
    options.format = RandomModelOptions::Format::kGguf;
  } else if (args.format != "safetensors") {
    return InvalidArgument("--format must be safetensors or gguf, got '{}'", args.format);
  }
  auto dtype = dtype_from_name(args.dtype);
  if (!dtype || !is_float(*dtype)) return InvalidArgument("--dtype must be bf16, f16 or f32, got '{}'", args.dtype);
  options.dtype = *dtype;
  options.seed = args.seed;
  options.out_path = args.out;
  options.tokenizer_from = args.tokenizer_from;
  ThreadPool pool(0);
  ASSIGN_OR_RETURN(uint64_t params, write_random_model(config, options, pool));
  std::printf("wrote %s: preset %s, %llu parameters, %s, %s\n", args.out.c_str(), args.preset.c_str(),
              static_cast<unsigned long long>(params), args.format.c_str(), args.dtype.c_str());
  return OkStatus();
}

}  // namespace

CommandRunner register_make_model(CLI::App& app) {
  auto args = std::make_shared<MakeModelArgs>();
  app.add_option("--preset", args->preset, "Shape preset (see --list)");
  app.add_option("--out", args->out, "Output: a folder (safetensors) or a .gguf file");
  app.add_option("--format", args->format, "safetensors or gguf")->capture_default_str();
  app.add_option("--dtype", args->dtype, "bf16, f16 or f32")->capture_default_str();
  app.add_option("--seed", args->seed, "Seed of the random weights")->capture_default_str();
  app.add_option("--tokenizer-from", args->tokenizer_from, "GGUF file whose tokenizer.* keys are copied (gguf only)");
  app.add_flag("--list", args->list, "List the presets");
  return [args]() {
    Status s = run_make_model(*args);
    if (!s.ok()) return report_error(s);
    return 0;
  };
}

}  // namespace bw::cli
