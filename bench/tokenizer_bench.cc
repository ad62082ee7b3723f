// Tokenizer throughput: encodes ~1 MB of mixed English prose, Chinese text and C++/Python
// code (built in memory from a fixed seed, so every run sees the same bytes) with the
// Qwen2 and Llama-3 vocabularies, single-threaded, and prints MB/s. Optionally also with
// several threads sharing one Tokenizer.
//
// Usage: bw_tokenizer_bench [testdata_dir] [--threads N] [--repeat N]
// The vocabs are read from <testdata_dir>/tokenizer/, else $BW_TESTDATA/tokenizer/, else
// ../shared/testdata/tokenizer/. Never pass/fail on time: it only reports.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

const char* const kEnglish[] = {
    "The harbour wall held through the night, although the waves kept climbing higher than anyone had expected. ",
    "By morning the fishermen were counting nets on the quay and arguing, as usual, about the price of diesel. ",
    "She wrote the report in two hours, then spent the rest of the afternoon deleting adjectives from it. ",
    "A cache that never forgets is just a memory leak with good intentions. ",
    "Nobody could explain why the old lighthouse clock ran exactly four minutes fast, every single day. ",
    "The committee approved the budget on the third vote, after someone finally brought sandwiches. ",
    "If the scheduler cannot find a free block, it preempts the newest request and tries again later. ",
    "He didn't say much at dinner, but he'd clearly rehearsed the toast at least a dozen times. ",
    "Rain again in the valley; the river rose 1.3 metres overnight and the ferry stopped at 6:45 pm. ",
    "They measured 42 samples, discarded 7 as contaminated, and published the remaining 35 in March 2024. ",
    "Why would anyone choose the longer road? Because the shorter one crosses the marsh twice! ",
    "The library closes at nine, but the reading room upstairs stays open for students until midnight. ",
    "It's not the size of the model that matters, it's whether the tokenizer agrees with the one it was trained on. ",
    "Our train was late, the platform was crowded, and the announcements were, frankly, impossible to hear. ",
    "\"Keep the receipts,\" she said, \"because the auditors always ask for the one you threw away.\" ",
    "Engineers from three teams met to discuss latency, throughput and the mysterious 99th percentile spike. ",
};

const char* const kChinese[] = {
    "今天早上港口的风很大，渔船都没有出海，大家在码头上修补渔网。",
    "这个系统每秒可以处理上千个请求，但是内存占用仍然需要进一步优化。",
    "我们在图书馆里讨论了一个下午，最后决定把实验推迟到下个星期。",
    "城市的夜晚灯火通明，街道两旁的小吃摊一直营业到凌晨两点。",
    "他说这本书写得很好，尤其是第三章对历史背景的描述非常详细。",
    "模型的推理速度取决于显存带宽，而不仅仅是计算能力。",
    "春天来了，山上的桃花开得正好，许多游客专程赶来拍照。",
    "请在提交代码之前运行所有的单元测试，并检查格式是否正确。",
    "会议记录显示，预算在第三次投票时才获得通过。",
    "雨一直下到傍晚，河水上涨了一米多，渡轮暂停了运营。",
};

const char* const kCode[] = {
    "int64_t sum_blocks(const std::vector<Block>& blocks) {\n  int64_t total = 0;\n  for (const auto& b : blocks) "
    "{\n    if (b.ref_count > 0) total += b.num_tokens;\n  }\n  return total;\n}\n\n",
    "def schedule(requests, budget):\n    batch = []\n    for req in sorted(requests, key=lambda r: r.arrival):\n     "
    "   if req.num_tokens <= budget:\n            batch.append(req)\n            budget -= req.num_tokens\n    "
    "return batch\n\n",
    "template <typename T>\nclass RingBuffer {\n public:\n  explicit RingBuffer(size_t n) : data_(n) {}\n  void "
    "push(T v) { data_[head_++ % data_.size()] = std::move(v); }\n\n private:\n  std::vector<T> data_;\n  size_t head_ "
    "= 0;\n};\n\n",
    "for (int i = 0; i < n; ++i) {\n    y[i] = alpha * x[i] + y[i];  // saxpy\n}\n",
    "import json\n\nwith open(\"config.json\") as f:\n    cfg = json.load(f)\nprint(f\"layers={cfg['num_layers']}, "
    "heads={cfg['num_heads']}\")\n\n",
    "if (status.ok() && !queue.empty()) {\n  auto item = queue.front();\n  queue.pop_front();\n  "
    "process(item, /*retry=*/3);\n}\n",
    "SELECT id, name, created_at FROM jobs WHERE state = 'pending' ORDER BY created_at LIMIT 100;\n",
    "class Cache:\n    def __init__(self, capacity=1024):\n        self._data = {}\n        self._capacity = "
    "capacity\n\n    def get(self, key, default=None):\n        return self._data.get(key, default)\n\n",
};

// ~`target` bytes of shuffled paragraphs: each mixes a few sentences of one kind.
std::string make_text(size_t target) {
  std::mt19937 rng(20240229);
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  std::vector<std::string> paragraphs;
  size_t total = 0;
  while (total < target) {
    std::string p;
    switch (rng() % 3) {
      case 0:
        for (int k = 0; k < 4; ++k)
          p += kEnglish[pick(std::size(kEnglish))];
        p += "\n\n";
        break;
      case 1:
        for (int k = 0; k < 4; ++k)
          p += kChinese[pick(std::size(kChinese))];
        p += "\n\n";
        break;
      default:
        p += kCode[pick(std::size(kCode))];
        break;
    }
    total += p.size();
    paragraphs.push_back(std::move(p));
  }
  for (size_t i = paragraphs.size() - 1; i > 0; --i)
    std::swap(paragraphs[i], paragraphs[pick(i + 1)]);  // Fisher-Yates
  std::string text;
  for (const auto& p : paragraphs)
    text += p;
  return text;
}

fs::path find_testdata(const char* arg) {
  if (arg != nullptr) return arg;
  if (const char* env = std::getenv("BW_TESTDATA")) return env;
  for (const char* candidate : {"../shared/testdata", "../../shared/testdata", "../../../shared/testdata"}) {
    if (fs::exists(fs::path(candidate) / "tokenizer")) return candidate;
  }
  return "../shared/testdata";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const char* dir_arg = nullptr;
  int threads = 1;
  int repeat = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = std::max(1, std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else {
      dir_arg = argv[i];
    }
  }
  const fs::path testdata = find_testdata(dir_arg);
  const std::string text = make_text(1 << 20);
  const double mb = static_cast<double>(text.size()) / 1e6;
  std::printf("text: %zu bytes (English, Chinese, C++/Python code), testdata: %s\n", text.size(), testdata.c_str());

  int failures = 0;
  for (const char* name : {"ggml-vocab-qwen2.gguf", "ggml-vocab-llama-bpe.gguf", "ggml-vocab-llama-spm.gguf"}) {
    const fs::path path = testdata / "tokenizer" / name;
    auto gguf = bw::GgufFile::open(path.string());
    if (!gguf.ok()) {
      std::printf("%s: %s\n", name, gguf.status().to_string().c_str());
      ++failures;
      continue;
    }
    auto start = std::chrono::steady_clock::now();
    auto tokenizer = bw::Tokenizer::from_gguf(*gguf);
    if (!tokenizer.ok()) {
      std::printf("%s: %s\n", name, tokenizer.status().to_string().c_str());
      ++failures;
      continue;
    }
    const double load_s = seconds_since(start);
    const bw::Tokenizer& tok = **tokenizer;

    // The first pass starts with an empty word cache; later passes find most words in it.
    start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tok.encode(text, /*add_special=*/false, /*parse_special=*/false);
    const double cold_s = seconds_since(start);
    std::vector<double> warm;
    for (int r = 0; r < repeat; ++r) {
      start = std::chrono::steady_clock::now();
      const auto again = tok.encode(text, false, false);
      warm.push_back(seconds_since(start));
      if (again != ids) {
        std::printf("%s: encode is not deterministic\n", name);
        ++failures;
      }
    }
    std::sort(warm.begin(), warm.end());
    const double warm_s = warm[warm.size() / 2];
    start = std::chrono::steady_clock::now();
    const std::string decoded = tok.decode(ids);
    const double decode_s = seconds_since(start);
    if (decoded != text) {
      std::printf("%s: decode(encode(text)) != text\n", name);
      ++failures;
    }
    std::printf(
        "%-26s load %6.0f ms | %zu tokens (%.2f bytes/token) | encode cold %6.1f MB/s, warm %6.1f MB/s "
        "(%.2f M tokens/s) | decode %7.1f MB/s\n",
        name, load_s * 1e3, ids.size(), static_cast<double>(text.size()) / static_cast<double>(ids.size()), mb / cold_s,
        mb / warm_s, static_cast<double>(ids.size()) / warm_s / 1e6, mb / decode_s);

    if (threads > 1) {
      std::vector<std::thread> pool;
      start = std::chrono::steady_clock::now();
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&] {
          for (int r = 0; r < repeat; ++r)
            (void)tok.encode(text, false, false);
        });
      }
      for (auto& th : pool)
        th.join();
      const double s = seconds_since(start);
      std::printf("%-26s %d threads: %.1f MB/s total\n", name, threads, mb * threads * repeat / s);
    }
  }
  return failures == 0 ? 0 : 1;
}
