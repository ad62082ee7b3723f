// Reading llama.cpp's tokenizer test vectors (testdata/tokenizer/X.gguf.inp / .out, the
// format of llama.cpp's tests/test-tokenizer-0.cpp), shared by the GGUF and tokenizer.json
// tests.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace bw::test {

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The test strings of a .inp file, split as test-tokenizer-0 splits them.
inline std::vector<std::string> read_inputs(const std::filesystem::path& path) {
  const std::string raw = read_file(path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  size_t pos = 0;
  while (pos < raw.size()) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(raw.substr(pos));
      break;
    }
    inputs.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  return inputs;
}

// One line of space-separated ids per test string.
inline std::vector<std::vector<int32_t>> read_outputs(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<std::vector<int32_t>> outputs;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ss(line);
    std::vector<int32_t> ids;
    for (int32_t id; ss >> id;)
      ids.push_back(id);
    outputs.push_back(std::move(ids));
  }
  return outputs;
}

inline std::string ids_to_string(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids)
    s += (s.empty() ? "" : " ") + std::to_string(id);
  return s;
}

}  // namespace bw::test
