// Helpers for engine tests that compare runs: submit a set of requests (some late, one
// cancelled) and gather every completion; give requests penalties; check two runs produced
// the same tokens, that penalties give the same tokens with overlapped steps, that seeded
// requests draw the same tokens beside n > 1 ones (whose choices draw as single requests),
// and that logprobs and logit bias on the device match the host Sampler.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "engine/engine_client.h"
#include "sched/sampling_params.h"

namespace bw::test {

// Submits the requests (the ones in `late` after the others have started decoding), cancels
// `cancel` once it has a token, and collects every completion.
inline std::vector<Completion> run_all(EngineClient& engine, const std::vector<GenerationRequest>& requests,
                                       const std::vector<size_t>& late = {}, std::optional<size_t> cancel = {}) {
  std::vector<std::unique_ptr<EventQueue>> queues(requests.size());
  std::vector<RequestId> ids(requests.size(), 0);
  auto submit = [&](size_t i) {
    queues[i] = std::make_unique<EventQueue>();
    auto id = engine.submit(requests[i], queues[i]->sink());
    EXPECT_TRUE(id.ok()) << id.status().to_string();
    ids[i] = id.ok() ? *id : 0;
  };
  auto is_late = [&](size_t i) { return std::find(late.begin(), late.end(), i) != late.end(); };
  for (size_t i = 0; i < requests.size(); ++i)
    if (!is_late(i)) submit(i);
  std::vector<Completion> results(requests.size());
  std::vector<bool> done(requests.size(), false);
  auto drain = [&](size_t i, bool until_done) {
    for (;;) {
      auto event = queues[i]->pop(until_done ? std::chrono::seconds(60) : std::chrono::milliseconds(0));
      if (!event) {
        EXPECT_FALSE(until_done) << "request " << i << " timed out";
        return;
      }
      accumulate_event(*event, &results[i]);
      if (event->done) {
        done[i] = true;
        return;
      }
      if (!until_done) return;
    }
  };
  if (!late.empty() || cancel) {
    const size_t first = cancel.value_or(0);
    drain(first, false);  // blocks for its first token only when it is not late
    while (results[first].choices.empty() && !done[first]) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      drain(first, false);
    }
    if (cancel) engine.cancel(ids[*cancel]);
    for (size_t i : late) {
      submit(i);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  for (size_t i = 0; i < requests.size(); ++i)
    if (!done[i]) drain(i, true);
  return results;
}

// The i-th of four penalty mixes (frequency, presence, repetition, all three with odd
// signs), strong enough to change most tokens of a tiny model.
inline void set_strong_penalty(GenerationRequest& r, size_t i) {
  SamplingParams& p = r.sampling;
  switch (i % 4) {
    case 0:
      p.frequency_penalty = 1.5f;
      break;
    case 1:
      p.presence_penalty = 2.0f;
      break;
    case 2:
      p.repetition_penalty = 3.0f;
      break;
    default:
      p.repetition_penalty = 0.5f;
      p.frequency_penalty = -0.5f;
      p.presence_penalty = 1.0f;
      break;
  }
}

inline void expect_same_tokens(const std::vector<Completion>& got, const std::vector<Completion>& want,
                               const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].choices.size(), 1u) << what << " " << i;
    ASSERT_EQ(want[i].choices.size(), 1u) << what << " " << i;
    EXPECT_EQ(got[i].choices[0].token_ids, want[i].choices[0].token_ids) << what << " request " << i;
    EXPECT_EQ(got[i].choices[0].finish_reason, want[i].choices[0].finish_reason) << what << " request " << i;
    EXPECT_EQ(got[i].choices[0].text, want[i].choices[0].text) << what << " request " << i;
  }
}

// Gives the requests strong penalties and checks that they change the tokens of at least
// `min_changed` requests on `plain`, and that `overlapped` (async scheduling on) gives
// `plain`'s tokens while overlapping most of its steps.
inline void expect_penalties_overlap(EngineClient& plain, EngineClient& overlapped,
                                     std::vector<GenerationRequest> requests, int min_changed) {
  const std::vector<Completion> unpenalized = run_all(plain, requests);
  for (size_t i = 0; i < requests.size(); ++i)
    set_strong_penalty(requests[i], i);
  const std::vector<Completion> want = run_all(plain, requests);
  int changed = 0;
  for (size_t i = 0; i < requests.size(); ++i)
    changed += want[i].choices[0].token_ids != unpenalized[i].choices[0].token_ids ? 1 : 0;
  EXPECT_GE(changed, min_changed);  // the penalties matter
  expect_same_tokens(run_all(overlapped, requests), want, "penalties");
  const EngineStats stats = overlapped.stats();
  EXPECT_GT(stats.num_overlapped_steps, stats.num_steps / 2) << stats.num_steps;
  EXPECT_EQ(stats.kv_used_blocks, 0);
  EXPECT_EQ(stats.requests_failed, 0);
}

// Runs `requests` on `plain` and on `overlapped` (engines with a small token budget, so
// prompts go in chunks beside decoding sequences), the last four arriving late on
// `overlapped`: the same tokens, and nearly every step overlapped: not the first of a run,
// nor one after a step that left a running sequence out for lack of budget (arrival times
// decide how often that happens).
inline void expect_chunks_overlap(EngineClient& plain, EngineClient& overlapped,
                                  const std::vector<GenerationRequest>& requests) {
  ASSERT_GE(requests.size(), 8u);
  const std::vector<Completion> want = run_all(plain, requests);
  std::vector<size_t> late;
  for (size_t i = requests.size() - 4; i < requests.size(); ++i)
    late.push_back(i);
  expect_same_tokens(run_all(overlapped, requests, late), want, "chunks");
  const EngineStats stats = overlapped.stats();
  EXPECT_GE(stats.num_overlapped_steps, stats.num_steps * 9 / 10) << stats.num_steps;
  EXPECT_GT(stats.num_steps, 40);
  EXPECT_EQ(stats.kv_used_blocks, 0);
  EXPECT_EQ(stats.requests_failed, 0);
}

// Gives the requests seeds and a temperature, runs them alone, then beside a request with
// logprobs and one with n = 3 and logprobs (its choices draw their first tokens from copies
// of its prompt's logits, in rows after the step's other rows): each must draw the same
// tokens as alone, the one with logprobs the same as its twin without, and choice c of the
// n = 3 request what that request with n = 1 and seed + c draws, log-probabilities and top
// tokens included.
inline void expect_seeded_draws_beside_choices(EngineClient& engine, std::vector<GenerationRequest> seeded,
                                               uint64_t first_seed) {
  ASSERT_GE(seeded.size(), 2u);
  for (size_t i = 0; i < seeded.size(); ++i) {
    seeded[i].sampling.temperature = 0.9f;
    seeded[i].sampling.seed = first_seed + 10 * i;
  }
  const std::vector<Completion> alone = run_all(engine, seeded);
  GenerationRequest with_logprobs = seeded.back();
  with_logprobs.sampling.logprobs = 1;
  with_logprobs.stop.max_tokens = 60;
  GenerationRequest three_choices = seeded.front();
  three_choices.n = 3;
  three_choices.sampling.logprobs = 2;
  std::vector<GenerationRequest> mixed = {three_choices, with_logprobs};
  mixed.insert(mixed.end(), seeded.begin(), seeded.end());
  const std::vector<Completion> beside = run_all(engine, mixed);
  for (size_t i = 0; i < seeded.size(); ++i)
    EXPECT_EQ(beside[i + 2].choices[0].token_ids, alone[i].choices[0].token_ids) << "request " << i;
  ASSERT_EQ(beside[1].choices.size(), 1u);
  EXPECT_EQ(beside[1].choices[0].logprobs.size(), beside[1].choices[0].token_ids.size());
  const std::vector<int32_t>& twin = alone.back().choices[0].token_ids;
  ASSERT_GE(beside[1].choices[0].token_ids.size(), twin.size());
  EXPECT_TRUE(std::equal(twin.begin(), twin.end(), beside[1].choices[0].token_ids.begin()))
      << "a seeded request's tokens changed with logprobs";

  std::vector<GenerationRequest> singles(3, three_choices);
  for (size_t c = 0; c < singles.size(); ++c) {
    singles[c].n = 1;
    singles[c].sampling.seed = *three_choices.sampling.seed + c;
  }
  const std::vector<Completion> single = run_all(engine, singles);
  ASSERT_EQ(beside[0].choices.size(), 3u);
  std::vector<std::vector<int32_t>> completions;
  for (size_t c = 0; c < 3; ++c) {
    const Completion::Choice& got = beside[0].choices[c];
    const Completion::Choice& want = single[c].choices.at(0);
    EXPECT_EQ(got.token_ids, want.token_ids) << "choice " << c;
    ASSERT_EQ(got.logprobs.size(), got.token_ids.size()) << "choice " << c;
    ASSERT_EQ(want.logprobs.size(), got.logprobs.size()) << "choice " << c;
    for (size_t t = 0; t < got.logprobs.size(); ++t) {
      EXPECT_EQ(got.logprobs[t].token_id, want.logprobs[t].token_id) << "choice " << c << " token " << t;
      EXPECT_NEAR(got.logprobs[t].logprob, want.logprobs[t].logprob, 1e-4) << "choice " << c << " token " << t;
      ASSERT_EQ(got.logprobs[t].top.size(), 2u) << "choice " << c << " token " << t;
      for (size_t j = 0; j < 2; ++j)
        EXPECT_EQ(got.logprobs[t].top[j].token_id, want.logprobs[t].top[j].token_id);
    }
    completions.push_back(got.token_ids);
  }
  // (The three seeds draw three different completions: a test that could tell them apart.)
  EXPECT_FALSE(completions[0] == completions[1] && completions[1] == completions[2]);
  EXPECT_EQ(engine.stats().requests_failed, 0);
}

// Gives the requests logprobs (0 to 20 top tokens) and logit biases (+4 on one token, -100
// on token 9), request 1 (seeded) logprobs too, and runs them on `device` (async
// scheduling, device sampling) and `host` (every row for the host Sampler): most steps
// must overlap, greedy requests must get the host's tokens, log-probabilities and top
// tokens, biased requests never token 9, and request 1 the same draws without logprobs.
inline void expect_logprobs_and_bias_on_device(EngineClient& device, EngineClient& host,
                                               std::vector<GenerationRequest> requests) {
  ASSERT_GE(requests.size(), 6u);
  for (size_t i = 0; i < requests.size(); ++i) {
    SamplingParams& p = requests[i].sampling;
    if (i % 2 == 0) p.logprobs = static_cast<int32_t>(i * 3 % (kMaxDeviceTopLogprobs + 1));
    if (i % 3 == 0) p.logit_bias = {{static_cast<int32_t>(5 + i), 4.0f}, {9, -100.0f}};
    if (i == 1) p.logprobs = 4;
    if (i == 4) p.frequency_penalty = 0.5f;
  }
  ASSERT_FALSE(requests[1].sampling.is_greedy());
  const std::vector<Completion> got = run_all(device, requests);
  const EngineStats stats = device.stats();
  EXPECT_GT(stats.num_overlapped_steps, stats.num_steps * 3 / 4) << stats.num_steps;
  EXPECT_EQ(stats.requests_failed, 0);

  const std::vector<Completion> want = run_all(host, requests);
  int biased_tokens = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const SamplingParams& p = requests[i].sampling;
    const Completion::Choice& g = got[i].choices.at(0);
    const Completion::Choice& w = want[i].choices.at(0);
    if (!p.logit_bias.empty()) {
      EXPECT_EQ(std::count(g.token_ids.begin(), g.token_ids.end(), 9), 0) << "request " << i;
      biased_tokens += static_cast<int>(std::count(g.token_ids.begin(), g.token_ids.end(), 5 + static_cast<int>(i)));
    }
    if (!p.is_greedy()) continue;  // (the device's draws are not the host Sampler's)
    EXPECT_EQ(g.token_ids, w.token_ids) << "request " << i;
    ASSERT_EQ(g.logprobs.size(), p.logprobs >= 0 ? g.token_ids.size() : 0u) << "request " << i;
    ASSERT_EQ(g.logprobs.size(), w.logprobs.size()) << "request " << i;
    for (size_t t = 0; t < g.logprobs.size(); ++t) {
      EXPECT_EQ(g.logprobs[t].token_id, w.logprobs[t].token_id);
      EXPECT_NEAR(g.logprobs[t].logprob, w.logprobs[t].logprob, 1e-4) << "request " << i << " token " << t;
      ASSERT_EQ(g.logprobs[t].top.size(), static_cast<size_t>(p.logprobs)) << "request " << i << " token " << t;
      ASSERT_EQ(w.logprobs[t].top.size(), g.logprobs[t].top.size());
      for (size_t j = 0; j < g.logprobs[t].top.size(); ++j) {
        EXPECT_EQ(g.logprobs[t].top[j].token_id, w.logprobs[t].top[j].token_id) << "request " << i << " token " << t;
        EXPECT_NEAR(g.logprobs[t].top[j].logprob, w.logprobs[t].top[j].logprob, 1e-4);
      }
    }
  }
  EXPECT_GT(biased_tokens, 5);  // the positive bias mattered

  std::vector<GenerationRequest> again = {requests[1]};
  again[0].sampling.logprobs = -1;
  EXPECT_EQ(run_all(device, again)[0].choices[0].token_ids, got[1].choices[0].token_ids);
  ASSERT_EQ(got[1].choices[0].logprobs.size(), got[1].choices[0].token_ids.size());
  EXPECT_EQ(got[1].choices[0].logprobs[0].top.size(), 4u);
}

}  // namespace bw::test
