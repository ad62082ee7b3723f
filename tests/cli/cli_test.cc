// End-to-end tests of the `breakwater` binary: make-model, then generate from the model.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "support/test_support.h"

namespace bw {
namespace {

using test::CommandResult;

CommandResult run(const std::string& args) { return test::run_shell(std::string(BW_BREAKWATER_BIN) + " " + args); }

TEST(CliTest, MakeModelThenGenerateJson) {
  test::TempDir tmp;
  for (const char* format : {"safetensors", "gguf"}) {
    const std::string out = tmp.file(std::string("m.") + format);
    auto made =
        run(std::string("make-model --preset tiny-qwen2 --dtype f32 --seed 1 --format ") + format + " --out " + out);
    ASSERT_EQ(made.exit_code, 0) << made.output;
    auto gen = run("generate --model " + out + " --prompt-ids 1,2,3,4 --max-tokens 5 --ignore-eos --json");
    ASSERT_EQ(gen.exit_code, 0) << gen.output;
    auto j = nlohmann::json::parse(gen.output, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << gen.output;
    EXPECT_EQ(j["prompt_ids"], nlohmann::json({1, 2, 3, 4}));
    EXPECT_EQ(j["generated_ids"].size(), 5u);
    EXPECT_EQ(j["finish_reason"], "length");
    EXPECT_GT(j["timings"]["prefill_tokens_per_second"].get<double>(), 0.0);
    EXPECT_GT(j["timings"]["decode_tokens_per_second"].get<double>(), 0.0);
  }
}

TEST(CliTest, GenerateIsSeededAndReportsSpeed) {
  test::TempDir tmp;
  const std::string out = tmp.file("m");
  ASSERT_EQ(run("make-model --preset tiny-llama --dtype bf16 --out " + out).exit_code, 0);
  const std::string args = "generate --model " + out + " --prompt-ids 1,7,9 --max-tokens 8 --ignore-eos";
  auto a = run(args + " --temperature 1.5 --seed 11 --json");
  auto b = run(args + " --temperature 1.5 --seed 11 --json");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto ja = nlohmann::json::parse(a.output), jb = nlohmann::json::parse(b.output);
  EXPECT_EQ(ja["generated_ids"], jb["generated_ids"]);
  auto text = run(args);
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("generated ids:"), std::string::npos);
  EXPECT_NE(text.output.find("tokens/s"), std::string::npos);
}

TEST(CliTest, BadInputGivesAClearErrorAndNonZeroExit) {
  test::TempDir tmp;
  const std::string out = tmp.file("m");
  ASSERT_EQ(run("make-model --preset tiny-llama --out " + out).exit_code, 0);
  auto missing = run("generate --model " + tmp.file("nope") + " --prompt-ids 1");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("nope"), std::string::npos) << missing.output;
  auto bad_ids = run("generate --model " + out + " --prompt-ids 1,x,3");
  EXPECT_NE(bad_ids.exit_code, 0);
  EXPECT_NE(bad_ids.output.find("'x'"), std::string::npos) << bad_ids.output;
  auto out_of_vocab = run("generate --model " + out + " --prompt-ids 1,100000");
  EXPECT_NE(out_of_vocab.exit_code, 0);
  EXPECT_NE(out_of_vocab.output.find("outside the vocabulary"), std::string::npos) << out_of_vocab.output;
  auto kv = run("generate --model " + out + " --prompt-ids 1,2 --kv-dtype f8");
  EXPECT_NE(kv.exit_code, 0);
  EXPECT_NE(kv.output.find("--kv-dtype must be auto, f32, f16 or bf16"), std::string::npos) << kv.output;
  EXPECT_EQ(run("generate --model " + out + " --prompt-ids 1,2 --max-tokens 2 --kv-dtype auto").exit_code, 0);
  auto slow = run("generate --model " + out + " --prompt-ids 1,2 --log-slow-steps -1");
  EXPECT_NE(slow.exit_code, 0);
  EXPECT_NE(slow.output.find("--log-slow-steps must be >= 0"), std::string::npos) << slow.output;
  EXPECT_EQ(run("generate --model " + out + " --prompt-ids 1,2 --max-tokens 2 --log-slow-steps 1").exit_code, 0);
  auto preset = run("make-model --preset no-such-model --out " + tmp.file("x"));
  EXPECT_NE(preset.exit_code, 0);
  EXPECT_NE(preset.output.find("deepseek-r1-distill-qwen-7b"), std::string::npos) << preset.output;
  // A truncated model file.
  ASSERT_EQ(run("make-model --preset tiny-llama --format gguf --out " + tmp.file("t.gguf")).exit_code, 0);
  std::filesystem::resize_file(tmp.file("t.gguf"), 5000);
  auto truncated = run("generate --model " + tmp.file("t.gguf") + " --prompt-ids 1");
  EXPECT_NE(truncated.exit_code, 0);
  EXPECT_NE(truncated.output.find("t.gguf"), std::string::npos) << truncated.output;
  EXPECT_EQ(truncated.output.find("Sanitizer"), std::string::npos) << truncated.output;
}

TEST(CliTest, GenerateFromTextMatchesLlamaCpp) {
  BW_TESTDATA_OR_SKIP(model, "models/stories260K.gguf");
  auto gen = run("generate --model " + model.string() + " --prompt 'Once upon a time' --max-tokens 64 --json");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;
  auto j = nlohmann::json::parse(gen.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << gen.output;
  // testdata/models/stories260K.expected.txt: llama.cpp's greedy text for this prompt.
  EXPECT_EQ(j["prompt_ids"], nlohmann::json({1, 403, 407, 261, 378}));
  EXPECT_EQ(j["text"],
            ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, "
            "red ball. She wanted to play with it, but it was too high.\nLily's mom said");
}

TEST(CliTest, TokenizeIdsPiecesAndDecode) {
  BW_TESTDATA_OR_SKIP(vocab, "tokenizer/ggml-vocab-qwen2.gguf");
  auto ids = run("tokenize --model " + vocab.string() + " --text 'Hello world' --ids");
  ASSERT_EQ(ids.exit_code, 0) << ids.output;
  EXPECT_EQ(ids.output, "9707 1879\n");
  auto pieces = run("tokenize --model " + vocab.string() + " --text '<|im_start|>user'");
  ASSERT_EQ(pieces.exit_code, 0) << pieces.output;
  EXPECT_NE(pieces.output.find("151644 -> '<|im_start|>'"), std::string::npos) << pieces.output;
  auto plain = run("tokenize --model " + vocab.string() + " --text '<|im_start|>' --ids --no-parse-special");
  EXPECT_EQ(plain.output.find("151644"), std::string::npos) << plain.output;
  auto decoded = run("tokenize --model " + vocab.string() + " --decode 9707,1879");
  EXPECT_EQ(decoded.output, "Hello world\n");
  auto bad = run("tokenize --model " + vocab.string() + " --decode 1,999999999");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("outside the vocabulary"), std::string::npos) << bad.output;
}

TEST(CliTest, ChatNeedsATemplate) {
  BW_TESTDATA_OR_SKIP(model, "models/stories260K.gguf");
  BW_TESTDATA_OR_SKIP(tmpl, "chat-templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja");
  auto none = run("generate --model " + model.string() + " --prompt hi --chat");
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.output.find("--chat-template"), std::string::npos) << none.output;
  auto with = run("generate --model " + model.string() + " --prompt hi --chat --max-tokens 4 --json --chat-template " +
                  tmpl.string());
  ASSERT_EQ(with.exit_code, 0) << with.output;
  auto j = nlohmann::json::parse(with.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  // BOS, then the template's text around "hi".
  EXPECT_EQ(j["prompt_ids"][0], 1);
  EXPECT_GT(j["prompt_ids"].size(), 10u);
}

TEST(CliTest, PromptsFileRunsEveryPromptThroughOneEngine) {
  BW_TESTDATA_OR_SKIP(model, "models/stories260K.gguf");
  test::TempDir tmp;
  const std::string prompts = tmp.file("prompts.txt");
  {
    std::ofstream f(prompts);
    f << "Once upon a time\n1, 403, 407, 261\n\nThe little dog\n";
  }
  auto r = run("generate --model " + model.string() + " --prompts-file " + prompts + " --max-tokens 12 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<nlohmann::json> lines;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    lines.push_back(j);
  }
  ASSERT_EQ(lines.size(), 4u) << r.output;  // three prompts (the empty line is skipped), then stats
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(lines[i]["index"], i);
    EXPECT_EQ(lines[i]["generated_ids"].size(), 12u);
    EXPECT_EQ(lines[i]["finish_reason"], "length");
  }
  EXPECT_EQ(lines[1]["prompt_ids"], nlohmann::json({1, 403, 407, 261}));
  // Each prompt gives what it gives alone.
  auto alone = run("generate --model " + model.string() + " --prompt \"Once upon a time\" --max-tokens 12 --json");
  ASSERT_EQ(alone.exit_code, 0) << alone.output;
  auto a = nlohmann::json::parse(alone.output, nullptr, false);
  EXPECT_EQ(lines[0]["prompt_ids"], a["prompt_ids"]);
  EXPECT_EQ(lines[0]["generated_ids"], a["generated_ids"]);
  EXPECT_EQ(lines[0]["text"], a["text"]);
  const auto& stats = lines[3]["stats"];
  EXPECT_EQ(stats["requests_finished"], 3);
  EXPECT_EQ(stats["generated_tokens"], 36);
  EXPECT_EQ(stats["kv_used_blocks"], 0);

  auto bad = run("generate --model " + model.string() + " --prompts-file " + tmp.file("missing.txt"));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("missing.txt"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace bw
