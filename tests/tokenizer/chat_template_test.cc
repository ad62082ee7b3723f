// ChatTemplate against Python jinja2: every template in the shared test data
// (testdata/chat-templates/*.jinja) is rendered for a fixed set of conversations by ours and
// by tests/tokenizer/render_reference.py (jinja2 set up as Hugging Face transformers sets it
// up), and the outputs must be byte-identical, or both must fail; when the template raises,
// the messages must be the same. Plus API-level tests that need no Python.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <sys/wait.h>

#include "support/test_support.h"

namespace bw {
namespace {

using nlohmann::json;

// The fixed date strftime_now() returns on both sides: 2025-02-20 12:00:00.
std::tm fixed_now() {
  std::tm tm{};
  tm.tm_year = 2025 - 1900;
  tm.tm_mon = 1;
  tm.tm_mday = 20;
  tm.tm_hour = 12;
  tm.tm_wday = 4;
  tm.tm_yday = 50;
  return tm;
}
constexpr const char* kFixedNow = "2025-02-20T12:00:00";

struct Case {
  std::string name;
  json messages;
  bool add_generation_prompt = false;
  json tools;  // null: not passed
  json extra_context = json::object();
};

json msg(const char* role, json content) { return json{{"role", role}, {"content", std::move(content)}}; }

json weather_tool() {
  return json::array({json{{"type", "function"},
                           {"function",
                            {{"name", "get_weather"},
                             {"description", "Get the current weather in a city"},
                             {"parameters",
                              {{"type", "object"},
                               {"properties", {{"city", {{"type", "string"}, {"description", "The city name"}}}}},
                               {"required", json::array({"city"})}}}}}}});
}

json tool_call_conversation(json content, json arguments) {
  json call = {
      {"id", "call_1"}, {"type", "function"}, {"function", {{"name", "get_weather"}, {"arguments", arguments}}}};
  json assistant = {{"role", "assistant"}, {"content", std::move(content)}, {"tool_calls", json::array({call})}};
  json tool = {{"role", "tool"}, {"tool_call_id", "call_1"}, {"name", "get_weather"}, {"content", "{\"temp\": 20}"}};
  return json::array(
      {msg("user", "What's the weather in Paris?"), assistant, tool, msg("user", "Thanks! And tomorrow?")});
}

std::vector<Case> conversations() {
  const json system = msg("system", "You are a helpful assistant. Answer in \"plain\" text.");
  const json user1 = msg("user", "Hello! What's 2+2? «Ça va?» 😀\n  ");
  const json assistant1 = msg("assistant", "  2+2 = 4.\nAnything else?");
  const json user2 = msg("user", "Tell me a joke about <tags> & 'quotes'.");
  std::vector<Case> cases;
  for (bool agp : {false, true}) {
    const std::string suffix = agp ? "+gen" : "";
    cases.push_back({"a_one_user" + suffix, json::array({msg("user", "Hello!")}), agp, nullptr});
    cases.push_back({"b_system_multi" + suffix, json::array({system, user1, assistant1, user2}), agp, nullptr});
    cases.push_back({"c_multi" + suffix, json::array({user1, assistant1, user2}), agp, nullptr});
  }
  cases.push_back({"d_tool_call_null", tool_call_conversation(nullptr, json{{"city", "Paris"}}), true, weather_tool()});
  cases.push_back({"d_tool_call_empty", tool_call_conversation("", json{{"city", "Paris"}}), true, weather_tool()});
  cases.push_back(
      {"d_tool_call_string_args", tool_call_conversation("", "{\"city\": \"Paris\"}"), true, weather_tool()});
  // A call the Mistral template accepts (9-character id), ending with the tool result.
  json call9 = tool_call_conversation("", "{\"city\": \"Paris\"}");
  call9[1]["tool_calls"][0]["id"] = "abc123xyz";
  call9[2]["tool_call_id"] = "abc123xyz";
  call9.erase(3);
  cases.push_back({"d_tool_call_result_last", call9, true, weather_tool()});
  cases.push_back({"e_think",
                   json::array({msg("user", "Why is the sky blue?"), msg("assistant", "<think>reasoning</think>answer"),
                                msg("user", "Are you sure?")}),
                   true, nullptr});
  cases.push_back({"f_extra_context", json::array({system, msg("user", "Hi")}), true, nullptr,
                   json{{"date_string", "01 Jan 2025"},
                        {"enable_thinking", false},
                        {"tools_in_user_message", false},
                        {"functions", "[{\"name\": \"get_weather\"}]"},
                        {"datetime", "2025-02-20"}}});
  return cases;
}

// bos/eos tokens as the models' tokenizers define them (the templates print them).
std::pair<std::string, std::string> special_tokens(const std::string& name) {
  if (name.find("Llama-3") != std::string::npos || name.find("llama-3") != std::string::npos) {
    return {"<|begin_of_text|>", "<|eot_id|>"};
  }
  if (name.find("DeepSeek") != std::string::npos || name.find("deepseek") != std::string::npos) {
    return {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"};
  }
  if (name.find("Qwen") != std::string::npos || name.find("Hermes") != std::string::npos) {
    return {"", "<|im_end|>"};
  }
  if (name.find("gemma") != std::string::npos) return {"<bos>", "<eos>"};
  if (name.find("Cohere") != std::string::npos) return {"<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"};
  if (name.find("Phi-3") != std::string::npos) return {"<s>", "<|endoftext|>"};
  return {"<s>", "</s>"};
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> template_names() {
  std::vector<std::string> names;
  if (auto dir = test::testdata_dir()) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(*dir / "chat-templates", ec)) {
      if (entry.path().extension() == ".jinja") names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  if (names.empty()) names.push_back("none");  // the test skips
  return names;
}

// Runs render_reference.py. nullopt with *skip set when Python or jinja2 is missing (the test
// skips); nullopt with *skip clear when the script fails otherwise (the test fails).
std::optional<json> python_reference(const json& input, const test::TempDir& tmp, std::string* why, bool* skip) {
  const std::string in_path = tmp.file("input.json");
  const std::string out_path = tmp.file("output.json");
  std::ofstream(in_path, std::ios::binary) << input.dump();
  const std::string script = (test::source_dir() / "tests" / "tokenizer" / "render_reference.py").string();
  const std::string cmd =
      "python3 '" + script + "' '" + in_path + "' '" + out_path + "' 2>'" + tmp.file("err.txt") + "'";
  const int status = std::system(cmd.c_str());
  const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  *skip = rc == 3 || rc == 127;  // no jinja2 / no python3
  if (rc != 0) {
    *why = "python3 render_reference.py failed (exit " + std::to_string(rc) + "): " + read_file(tmp.file("err.txt"));
    if (*skip) *why += " -- install python3 and python3-jinja2 to run this test";
    return std::nullopt;
  }
  json out = json::parse(read_file(out_path), nullptr, false);
  if (out.is_discarded() || !out.contains("results")) {
    *why = "render_reference.py wrote no results";
    return std::nullopt;
  }
  return out["results"];
}

class ChatTemplateReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateReferenceTest, MatchesJinja2) {
  BW_TESTDATA_OR_SKIP(path, "chat-templates/" + GetParam());
  const auto [bos, eos] = special_tokens(GetParam());
  const std::vector<Case> cases = conversations();

  json input = {{"template_path", path.string()}, {"bos_token", bos}, {"eos_token", eos}, {"now", kFixedNow}};
  for (const Case& c : cases) {
    input["cases"].push_back({{"messages", c.messages},
                              {"add_generation_prompt", c.add_generation_prompt},
                              {"tools", c.tools},
                              {"extra_context", c.extra_context}});
  }
  test::TempDir tmp;
  std::string why;
  bool skip = false;
  auto reference = python_reference(input, tmp, &why, &skip);
  if (!reference && skip) {
    GTEST_SKIP() << why;
  }
  ASSERT_TRUE(reference) << why;
  ASSERT_EQ(reference->size(), cases.size());

  auto tmpl = ChatTemplate::create(read_file(path));
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const json& ref = (*reference)[i];
    SCOPED_TRACE(GetParam() + " / " + c.name);
    std::string verdict;
    if (!tmpl.ok()) {
      EXPECT_FALSE(ref["ok"].get<bool>()) << "ours fails to parse: " << tmpl.status().message();
      verdict = ref["ok"].get<bool>() ? "MISMATCH" : "both-reject";
    } else {
      ChatTemplateOptions options;
      options.add_generation_prompt = c.add_generation_prompt;
      options.bos_token = bos;
      options.eos_token = eos;
      options.tools = c.tools;
      options.extra_context = c.extra_context;
      options.now = fixed_now();
      auto ours = tmpl->render(c.messages, options);
      if (ref["ok"].get<bool>()) {
        EXPECT_TRUE(ours.ok()) << "jinja2 renders, ours fails: " << ours.status().message();
        if (ours.ok()) {
          EXPECT_EQ(*ours, ref["output"].get<std::string>());
        }
        verdict = (ours.ok() && *ours == ref["output"].get<std::string>()) ? "match" : "MISMATCH";
      } else {
        EXPECT_FALSE(ours.ok()) << "jinja2 fails (" << ref["error"].get<std::string>() << "), ours renders:\n" << *ours;
        verdict = ours.ok() ? "MISMATCH" : "both-reject";
        if (!ours.ok() && ref["raised"].get<bool>()) {
          // The template's own message must come through unchanged.
          EXPECT_EQ(ours.status().message(), "chat template: raise_exception: " + ref["error"].get<std::string>());
          if (ours.status().message() != "chat template: raise_exception: " + ref["error"].get<std::string>()) {
            verdict = "MISMATCH";
          }
        }
        if (!ours.ok()) verdict += " (" + ref["error"].get<std::string>().substr(0, 70) + ")";
      }
    }
    std::cout << "[chat-template] " << GetParam() << " | " << c.name << " | " << verdict << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatTemplateReferenceTest, ::testing::ValuesIn(template_names()),
                         test::StringParamName());

// ---- API behaviour (no Python needed) -------------------------------------------------

TEST(ChatTemplateTest, PassesTheHuggingFaceVariables) {
  auto t = ChatTemplate::create(
      "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
      "{% if add_generation_prompt %}<gen>{% endif %}{{ eos_token }}|{{ tools is defined }}|{{ date_string }}");
  ASSERT_TRUE(t.ok()) << t.status().message();
  ChatTemplateOptions options;
  options.bos_token = "<s>";
  options.eos_token = "</s>";
  options.add_generation_prompt = true;
  options.extra_context = {{"date_string", "today"}};
  auto out = t->render(json::array({msg("user", "hi")}), options);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(*out, "<s>[user:hi]<gen></s>|False|today");
  options.tools = json::array();
  out = t->render(json::array({msg("user", "hi")}), options);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<s>[user:hi]<gen></s>|True|today");
}

TEST(ChatTemplateTest, OrderedJsonKeepsKeyOrder) {
  auto t = ChatTemplate::create("{{ tools|tojson }}|{{ messages[0]|tojson }}");
  ASSERT_TRUE(t.ok());
  const auto messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  const auto tools = nlohmann::ordered_json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  auto out = t->render(messages, tools, {});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(*out, R"([{"type": "function", "function": {"name": "f"}}]|{"role": "user", "content": "hi"})");
  // nlohmann::json sorts keys.
  ChatTemplateOptions options;
  options.tools = json::parse(tools.dump());
  out = t->render(json::parse(messages.dump()), options);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, R"([{"function": {"name": "f"}, "type": "function"}]|{"content": "hi", "role": "user"})");
}

TEST(ChatTemplateTest, RaiseExceptionMessage) {
  auto t = ChatTemplate::create(
      "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/"
      "user/assistant/...') }}{% endif %}ok");
  ASSERT_TRUE(t.ok());
  auto out = t->render(json::array({msg("assistant", "x")}), {});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out.status().message(),
            "chat template: raise_exception: Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(ChatTemplateTest, ErrorsNameTheLine) {
  auto bad = ChatTemplate::create("line 1\n{{ x | foo }}");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "chat template line 2: unknown filter 'foo'");
  auto unclosed = ChatTemplate::create("{% for m in messages %}\n{{ m }}");
  ASSERT_FALSE(unclosed.ok());
  EXPECT_NE(unclosed.status().message().find("chat template line 2: unexpected end of template"), std::string::npos)
      << unclosed.status().message();
  auto t = ChatTemplate::create("a\nb\n{{ messages[0].content + 1 }}");
  ASSERT_TRUE(t.ok());
  auto out = t->render(json::array({msg("user", "x")}), {});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "chat template line 3: can only concatenate str (not \"int\") to str");
}

TEST(ChatTemplateTest, RejectsBadInput) {
  auto t = ChatTemplate::create("{{ messages }}");
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t->render(json::object(), {}).ok());
  ChatTemplateOptions options;
  options.extra_context = json::array();
  EXPECT_FALSE(t->render(json::array(), options).ok());
}

TEST(ChatTemplateTest, StrftimeNowUsesTheInjectedClock) {
  auto t = ChatTemplate::create("{{ strftime_now('%d %b %Y') }}");
  ASSERT_TRUE(t.ok());
  ChatTemplateOptions options;
  options.now = fixed_now();
  auto out = t->render(json::array(), options);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "20 Feb 2025");
  options.now.reset();
  out = t->render(json::array(), options);  // the real clock
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->size(), 11u);
}

TEST(ChatTemplateTest, BoundedOutputAndWork) {
  auto loop = ChatTemplate::create("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}");
  ASSERT_TRUE(loop.ok());
  auto out = loop->render(json::array(), {});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("exceed"), std::string::npos) << out.status().message();

  auto grow = ChatTemplate::create(
      "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}");
  ASSERT_TRUE(grow.ok());
  out = grow->render(json::array(), {});
  ASSERT_FALSE(out.ok());

  auto recurse = ChatTemplate::create("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_TRUE(recurse.ok());
  out = recurse->render(json::array(), {});
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("nested deeper"), std::string::npos) << out.status().message();
}

TEST(ChatTemplateTest, ConcurrentRenders) {
  auto t = ChatTemplate::create(
      "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
      "{{ m.content|upper }}{% endfor %}{{ ns.n }}");
  ASSERT_TRUE(t.ok());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int k = 0; k < 8; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 200; ++i) {
        json messages = json::array();
        for (int j = 0; j <= (k + i) % 5; ++j)
          messages.push_back(msg("user", "m" + std::to_string(j)));
        std::string expected;
        for (int j = 0; j <= (k + i) % 5; ++j)
          expected += "M" + std::to_string(j);
        expected += std::to_string(messages.size());
        auto out = t->render(messages, {});
        if (!out.ok() || *out != expected) ++failures;
      }
    });
  }
  for (auto& th : threads)
    th.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace bw
