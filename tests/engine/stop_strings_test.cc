#include "engine/stop_strings.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace bw {
namespace {

struct Fed {
  std::vector<std::string> emitted;  // per feed
  std::string text;                  // everything emitted, flush included
  bool stopped = false;
  std::string matched;
};

Fed feed_all(StopStringMatcher& m, const std::vector<std::string>& deltas) {
  Fed run;
  for (const std::string& d : deltas) {
    StopStringMatcher::Output out = m.feed(d);
    run.emitted.push_back(out.text);
    run.text += out.text;
    if (out.stopped) {
      EXPECT_FALSE(run.stopped) << "stopped twice";
      run.stopped = true;
      run.matched = out.matched;
    }
  }
  run.text += m.flush();
  return run;
}

std::vector<std::string> bytes(const std::string& s) {
  std::vector<std::string> out;
  for (const char c : s)
    out.emplace_back(1, c);
  return out;
}

// Splits UTF-8 text into code points.
std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (const char c : s) {
    if ((static_cast<unsigned char>(c) & 0xC0) == 0x80 && !out.empty()) {
      out.back() += c;
    } else {
      out.emplace_back(1, c);
    }
  }
  return out;
}

TEST(StopStringMatcher, NoStopsPassEverythingThroughAtOnce) {
  StopStringMatcher m({});
  EXPECT_TRUE(m.empty());
  const Fed run = feed_all(m, {"Hello", ", ", "wörld"});
  EXPECT_EQ(run.emitted, (std::vector<std::string>{"Hello", ", ", "wörld"}));
  EXPECT_FALSE(run.stopped);
}

TEST(StopStringMatcher, EmptyStopStringsAreIgnored) {
  StopStringMatcher m({"", ""});
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.feed("abc").text, "abc");
  EXPECT_FALSE(StopStringMatcher({"", "x"}).empty());
}

TEST(StopStringMatcher, StopSplitAcrossOneByteFeeds) {
  StopStringMatcher m({"STOP"});
  const Fed run = feed_all(m, bytes("Hello STOP world"));
  EXPECT_TRUE(run.stopped);
  EXPECT_EQ(run.matched, "STOP");
  EXPECT_EQ(run.text, "Hello ");
  // Each byte of "Hello " goes out as it arrives; S, T, O are held; nothing after.
  const std::vector<std::string> expected = {"H", "e", "l", "l", "o", " ", "", "", "", "", "", "", "", "", "", ""};
  EXPECT_EQ(run.emitted, expected);
}

TEST(StopStringMatcher, PartialMatchThenDivergenceEmitsTheHeldText) {
  StopStringMatcher m({"STOP"});
  StopStringMatcher::Output a = m.feed("ab ST");
  EXPECT_EQ(a.text, "ab ");
  EXPECT_FALSE(a.stopped);
  StopStringMatcher::Output b = m.feed("O");
  EXPECT_EQ(b.text, "");
  StopStringMatcher::Output c = m.feed("RM");
  EXPECT_EQ(c.text, "STORM");
  EXPECT_FALSE(c.stopped);
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStringMatcher, HoldsOnlyWhatCouldStartAStop) {
  StopStringMatcher m({"</end>", "###"});
  EXPECT_EQ(m.feed("a</e").text, "a");
  EXPECT_EQ(m.feed("x#").text, "</ex");
  EXPECT_EQ(m.feed("#").text, "");
  EXPECT_EQ(m.flush(), "##");
}

TEST(StopStringMatcher, StopAtTheVeryBeginning) {
  StopStringMatcher m({"<|im_end|>"});
  StopStringMatcher::Output out = m.feed("<|im_end|>trailing");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "");
  EXPECT_EQ(out.matched, "<|im_end|>");
}

TEST(StopStringMatcher, NothingAfterAStop) {
  StopStringMatcher m({"x"});
  StopStringMatcher::Output out = m.feed("abxcd");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "ab");
  EXPECT_TRUE(m.stopped());
  StopStringMatcher::Output later = m.feed("more x");
  EXPECT_EQ(later.text, "");
  EXPECT_FALSE(later.stopped);
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStringMatcher, OverlappingPartialMatches) {
  for (const bool byte_by_byte : {false, true}) {
    StopStringMatcher m({"abcd"});
    const Fed run = feed_all(m, byte_by_byte ? bytes("abcabcdzz") : std::vector<std::string>{"abcabcdzz"});
    EXPECT_TRUE(run.stopped);
    EXPECT_EQ(run.text, "abc");
  }
  StopStringMatcher m({"aab"});
  const Fed run = feed_all(m, bytes("aaab"));
  EXPECT_TRUE(run.stopped);
  EXPECT_EQ(run.text, "a");
  EXPECT_EQ(run.emitted, (std::vector<std::string>{"", "", "a", ""}));
}

TEST(StopStringMatcher, EarliestEndingMatchWins) {
  {
    // "bc" ends before "abcd" does.
    StopStringMatcher m({"abcd", "bc"});
    const Fed run = feed_all(m, {"xab", "cd"});
    EXPECT_EQ(run.text, "xa");
    EXPECT_EQ(run.matched, "bc");
  }
  {
    // Both end at the same byte: the one starting first.
    StopStringMatcher m({"bcd", "abcd"});
    const Fed run = feed_all(m, {"xabcd"});
    EXPECT_EQ(run.text, "x");
    EXPECT_EQ(run.matched, "abcd");
  }
  {
    StopStringMatcher m({"foo", "bar"});
    const Fed run = feed_all(m, bytes("xxbarfoo"));
    EXPECT_EQ(run.text, "xx");
    EXPECT_EQ(run.matched, "bar");
  }
}

TEST(StopStringMatcher, MatchesSpanManyFeeds) {
  StopStringMatcher m({"the end of it"});
  const Fed run = feed_all(m, {"and so", " the e", "nd", " ", "of", " i", "t, finally"});
  EXPECT_TRUE(run.stopped);
  EXPECT_EQ(run.text, "and so ");
  EXPECT_EQ(run.emitted[0], "and so");
  EXPECT_EQ(run.emitted[1], " ");
}

TEST(StopStringMatcher, MultibyteStopsAndText) {
  {
    StopStringMatcher m({"終了"});
    const Fed run = feed_all(m, code_points("こんにちは終了です"));
    EXPECT_TRUE(run.stopped);
    EXPECT_EQ(run.text, "こんにちは");
  }
  {
    // A held multibyte prefix that turns out not to be a stop.
    StopStringMatcher m({"é!"});
    EXPECT_EQ(m.feed("café").text, "caf");
    EXPECT_EQ(m.feed("?").text, "é?");
    EXPECT_EQ(m.feed("é").text, "");
    StopStringMatcher::Output out = m.feed("!");
    EXPECT_TRUE(out.stopped);
    EXPECT_EQ(out.text, "");
  }
  {
    // Shared lead bytes: "日本" vs "日曜" (same first code point).
    StopStringMatcher m({"日曜"});
    const Fed run = feed_all(m, code_points("日本の日曜日"));
    EXPECT_EQ(run.text, "日本の");
    EXPECT_EQ(run.emitted, (std::vector<std::string>{"", "日本", "の", "", "", ""}));
  }
}

TEST(StopStringMatcher, NeverSplitsACodePointWhenHolding) {
  // A stop beginning with the second byte of "é" (not valid UTF-8 on its own) must not make
  // the matcher emit half of "é".
  StopStringMatcher m({"\xA9!"});
  StopStringMatcher::Output out = m.feed("caf\xC3\xA9");
  EXPECT_EQ(out.text, "caf");
  EXPECT_EQ(m.flush(), "\xC3\xA9");
}

TEST(StopStringMatcher, FlushReturnsTheHeldText) {
  StopStringMatcher m({"STOP"});
  EXPECT_EQ(m.feed("abc STO").text, "abc ");
  EXPECT_EQ(m.flush(), "STO");
  EXPECT_EQ(m.flush(), "");
}

// The reference: the text up to the earliest-ending match (ties: earliest start), searched
// in the whole text at once; `matched` says whether there was one.
std::string reference_emit(const std::string& text, const std::vector<std::string>& stops, bool* matched) {
  size_t best_end = std::string::npos;
  size_t best_start = 0;
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    const size_t pos = text.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (end < best_end || (end == best_end && pos < best_start)) {
      best_end = end;
      best_start = pos;
    }
  }
  *matched = best_end != std::string::npos;
  return *matched ? text.substr(0, best_start) : text;
}

// The longest suffix of `text` that is a proper prefix of a stop string.
size_t reference_hold(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t k = std::min(text.size(), s.empty() ? 0 : s.size() - 1); k > hold; --k) {
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

TEST(StopStringMatcher, MatchesABruteForceReferenceOnRandomStreams) {
  std::mt19937 rng(12345);
  const std::vector<std::string> alphabet = {"a", "b", "c", "é", "ab"};
  const auto random_text = [&](size_t n) {
    std::string s;
    for (size_t i = 0; i < n; ++i)
      s += alphabet[rng() % alphabet.size()];
    return s;
  };
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<std::string> stops;
    const size_t num_stops = rng() % 4;
    for (size_t i = 0; i < num_stops; ++i)
      stops.push_back(random_text(1 + rng() % 4));
    const std::string text = random_text(rng() % 40);
    // Random feeds on code point boundaries.
    const std::vector<std::string> cps = code_points(text);
    std::vector<std::string> deltas;
    for (size_t i = 0; i < cps.size();) {
      const size_t n = rng() % 4;
      std::string d;
      for (size_t j = 0; j < n && i < cps.size(); ++j)
        d += cps[i++];
      deltas.push_back(d);
    }
    StopStringMatcher m(stops);
    bool expect_stop = false;
    const std::string expected = reference_emit(text, stops, &expect_stop);
    std::string fed;
    std::string emitted;
    bool stopped = false;
    for (const std::string& d : deltas) {
      const StopStringMatcher::Output out = m.feed(d);
      fed += d;
      emitted += out.text;
      if (stopped) {
        ASSERT_TRUE(out.text.empty());
      }
      stopped = stopped || out.stopped;
      ASSERT_EQ(expected.compare(0, emitted.size(), emitted), 0) << "emitted past a stop, trial " << trial;
      if (!stopped) {
        // Exactly the longest tail that could start a stop string is held back.
        ASSERT_EQ(fed.size() - emitted.size(), reference_hold(fed, stops)) << "trial " << trial << " fed " << fed;
      }
    }
    emitted += m.flush();
    ASSERT_EQ(emitted, expected) << "trial " << trial << " text " << text;
    ASSERT_EQ(stopped, expect_stop) << "trial " << trial;
  }
}

}  // namespace
}  // namespace bw
