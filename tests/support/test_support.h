// Helpers shared by the tests: where the shared test data lives, temp dirs, random data.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

// Whether the tests run under AddressSanitizer or ThreadSanitizer. (GCC defines
// __SANITIZE_ADDRESS__; clang says so through __has_feature.)
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BW_TEST_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define BW_TEST_UNDER_SANITIZER 1
#endif
#endif
#ifndef BW_TEST_UNDER_SANITIZER
#define BW_TEST_UNDER_SANITIZER 0
#endif

namespace bw::test {

// Under a sanitizer (CI's second step) the exhaustive and statistical tests take a subset of
// their cases: a memory error or undefined behaviour shows on a few of them as well as on
// all, and the release step, ~5-20x faster per case, still runs every one.
inline constexpr bool kUnderSanitizer = BW_TEST_UNDER_SANITIZER != 0;

// The shared test data folder: $BW_TESTDATA, else ../shared/testdata beside the source
// tree. nullopt when it does not exist.
std::optional<std::filesystem::path> testdata_dir();

// The path of `relative` inside the test data folder, or nullopt when absent.
std::optional<std::filesystem::path> testdata_file(const std::string& relative);

// A fresh, empty directory under the build tree, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f);

// Root of the source tree (for committed fixtures).
std::filesystem::path source_dir();

// Runs `command` in /bin/sh with stderr folded into stdout; the exit code (-1 when the
// command did not exit normally) and everything it printed.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
CommandResult run_shell(const std::string& command);

// A gtest-safe name ("tiny-llama-256.q4_k" -> "tiny_llama_256_q4_k").
std::string sanitize_test_name(std::string name);

// For INSTANTIATE_TEST_SUITE_P over string parameters.
struct StringParamName {
  template <typename Info>
  std::string operator()(const Info& info) const {
    return sanitize_test_name(info.param);
  }
};

}  // namespace bw::test

// Skips the current test with a clear message when a shared test data file is missing.
#define BW_TESTDATA_OR_SKIP(var, relative)                                                                       \
  auto var##_opt = ::bw::test::testdata_file(relative);                                                          \
  if (!var##_opt)                                                                                                \
    GTEST_SKIP() << "shared test data not found: " << (relative) << " (set BW_TESTDATA to the testdata folder)"; \
  const std::filesystem::path var = *var##_opt
