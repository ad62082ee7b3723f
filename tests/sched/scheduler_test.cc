#include "sched/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <string>

namespace bw {
namespace {

constexpr int32_t kEos = 99;

Request make_request(RequestId id, int32_t prompt_len, int32_t max_tokens, int32_t first_token = 1) {
  Request r;
  r.request_id = id;
  r.token_ids.resize(static_cast<size_t>(prompt_len));
  std::iota(r.token_ids.begin(), r.token_ids.end(), first_token);
  r.num_prompt_tokens = prompt_len;
  r.stop.max_tokens = max_tokens;
  return r;
}

struct Harness {
  Scheduler scheduler;
  Harness(SchedulerConfig config, int num_blocks, int block_size = 4)
      : scheduler(config, KvCacheConfig{num_blocks, block_size, true}, {kEos}) {}

  void add(Request r) {
    ASSERT_TRUE(scheduler.check_admissible(r).ok()) << scheduler.check_admissible(r).message();
    scheduler.add_request(std::move(r));
  }

  // Runs one step, sampling `token` (or token + request id) for every sampled sequence.
  std::pair<SchedulerOutput, std::vector<SequenceOutput>> step(int32_t token = 7) {
    SchedulerOutput out = scheduler.schedule();
    std::vector<SampledTokens> sampled;
    for (const ScheduledSequence& seq : out.sequences) {
      if (!seq.sample) continue;
      const Request* r = scheduler.find(seq.request_id);
      SampledTokens s{seq.request_id, std::vector<int32_t>(static_cast<size_t>(r->num_pending_forks + 1), token)};
      sampled.push_back(s);
    }
    std::vector<SequenceOutput> outputs = scheduler.update(out, sampled);
    EXPECT_TRUE(scheduler.kv_cache().check_invariants().ok());
    return {std::move(out), std::move(outputs)};
  }
};

SchedulerConfig config(int32_t max_seqs, int32_t max_tokens, int32_t max_len = 256) {
  SchedulerConfig c;
  c.max_num_seqs = max_seqs;
  c.max_num_batched_tokens = max_tokens;
  c.max_model_len = max_len;
  return c;
}

TEST(SchedulerTest, ChunkedPrefillThenDecodeFirst) {
  Harness h(config(8, 10), 64);
  h.add(make_request(1, 25, 3));
  auto [out1, res1] = h.step();
  ASSERT_EQ(out1.sequences.size(), 1u);
  EXPECT_EQ(out1.sequences[0].start_pos, 0);
  EXPECT_EQ(out1.sequences[0].token_ids.size(), 10u);
  EXPECT_FALSE(out1.sequences[0].sample);
  EXPECT_TRUE(res1.empty());
  h.add(make_request(2, 6, 2, 100));
  auto [out2, res2] = h.step();  // request 1: tokens 10..19; request 2 gets nothing (budget 0)
  ASSERT_EQ(out2.sequences.size(), 1u);
  EXPECT_EQ(out2.sequences[0].start_pos, 10);
  auto [out3, res3] = h.step();  // request 1: last 5 prompt tokens and sample; request 2: 5 of 6
  ASSERT_EQ(out3.sequences.size(), 2u);
  EXPECT_EQ(out3.sequences[0].request_id, 1);
  EXPECT_EQ(out3.sequences[0].token_ids.size(), 5u);
  EXPECT_TRUE(out3.sequences[0].sample);
  EXPECT_EQ(out3.sequences[1].request_id, 2);
  EXPECT_EQ(out3.sequences[1].token_ids.size(), 5u);
  EXPECT_FALSE(out3.sequences[1].sample);
  ASSERT_EQ(res3.size(), 1u);
  EXPECT_EQ(res3[0].token_id, 7);
  auto [out4, res4] = h.step();  // request 1 decodes (1 token) first, then request 2's last token
  ASSERT_EQ(out4.sequences.size(), 2u);
  EXPECT_EQ(out4.sequences[0].request_id, 1);
  EXPECT_EQ(out4.sequences[0].token_ids, std::vector<int32_t>{7});
  EXPECT_EQ(out4.sequences[0].start_pos, 25);
  EXPECT_EQ(out4.num_tokens, 2);
}

TEST(SchedulerTest, BlockTableCoversTokensAndFinishesAtMaxTokens) {
  Harness h(config(4, 64), 32, 4);
  h.add(make_request(1, 9, 3));
  std::vector<std::optional<FinishReason>> reasons;
  for (int i = 0; i < 3; ++i) {
    auto [out, res] = h.step();
    ASSERT_EQ(out.sequences.size(), 1u);
    const ScheduledSequence& s = out.sequences[0];
    const int32_t end = s.start_pos + static_cast<int32_t>(s.token_ids.size());
    EXPECT_EQ(static_cast<int32_t>(s.block_table.size()), (end + 3) / 4);
    ASSERT_EQ(res.size(), 1u);
    reasons.push_back(res[0].finish_reason);
  }
  EXPECT_FALSE(reasons[0].has_value());
  EXPECT_FALSE(reasons[1].has_value());
  EXPECT_EQ(reasons[2], FinishReason::kLength);
  EXPECT_FALSE(h.scheduler.has_unfinished_requests());
  EXPECT_EQ(h.scheduler.kv_cache().stats().num_used_blocks, 0);
}

TEST(SchedulerTest, StopsAtEosUnlessIgnored) {
  Harness h(config(4, 64), 32);
  h.add(make_request(1, 5, 10));
  Request ignoring = make_request(2, 5, 2, 50);
  ignoring.stop.ignore_eos = true;
  h.add(ignoring);
  auto [out, res] = h.step(kEos);
  ASSERT_EQ(res.size(), 2u);
  EXPECT_EQ(res[0].finish_reason, FinishReason::kStop);
  EXPECT_FALSE(res[1].finish_reason.has_value());
  auto [out2, res2] = h.step(kEos);
  ASSERT_EQ(res2.size(), 1u);
  EXPECT_EQ(res2[0].finish_reason, FinishReason::kLength);
}

TEST(SchedulerTest, PrefixCacheHitSkipsComputedBlocks) {
  Harness h(config(4, 64), 32, 4);
  h.add(make_request(1, 13, 1));
  h.step();  // computes 13 tokens, caches 3 full blocks, finishes (max_tokens 1)
  EXPECT_FALSE(h.scheduler.has_unfinished_requests());
  Request second = make_request(2, 15, 1);  // the same first 13 tokens, then 2 more
  h.add(second);
  auto [out, res] = h.step();
  ASSERT_EQ(out.sequences.size(), 1u);
  EXPECT_EQ(out.sequences[0].start_pos, 12);
  EXPECT_EQ(out.sequences[0].token_ids.size(), 3u);
  const KvCacheStats kv = h.scheduler.kv_cache().stats();
  EXPECT_EQ(kv.num_prefix_hit_tokens, 12);
}

TEST(SchedulerTest, PreemptsNewestWhenBlocksRunOutAndRecomputes) {
  // 6 blocks of 4 tokens; two requests of 8-token prompts need 2 blocks each, then grow.
  Harness h(config(4, 64), 6, 4);
  h.add(make_request(1, 8, 12, 1));
  h.add(make_request(2, 8, 12, 200));
  std::map<RequestId, std::vector<int32_t>> tokens;
  int64_t steps = 0;
  while (h.scheduler.has_unfinished_requests() && steps < 200) {
    auto [out, res] = h.step(static_cast<int32_t>(10 + steps % 7));
    for (const SequenceOutput& o : res)
      tokens[o.request_id].push_back(o.token_id);
    ++steps;
  }
  EXPECT_FALSE(h.scheduler.has_unfinished_requests());
  EXPECT_EQ(tokens[1].size(), 12u);
  EXPECT_EQ(tokens[2].size(), 12u);
  EXPECT_GT(h.scheduler.stats().num_preemptions, 0);
  EXPECT_EQ(h.scheduler.kv_cache().stats().num_used_blocks, 0);
}

TEST(SchedulerTest, PreemptedSequenceIsRecomputedWithItsGeneratedTokens) {
  Harness h(config(4, 64), 5, 4);
  h.add(make_request(1, 8, 10, 1));
  h.add(make_request(2, 8, 10, 200));
  bool saw_recompute = false;
  for (int steps = 0; steps < 100 && h.scheduler.has_unfinished_requests(); ++steps) {
    auto [out, res] = h.step();
    for (const ScheduledSequence& s : out.sequences) {
      const Request* r = h.scheduler.find(s.request_id);
      if (r != nullptr && r->num_preemptions > 0 && s.token_ids.size() > 1 && s.start_pos + s.token_ids.size() > 8u) {
        saw_recompute = true;  // the recomputed chunk includes generated tokens
      }
    }
  }
  EXPECT_TRUE(saw_recompute);
  EXPECT_FALSE(h.scheduler.has_unfinished_requests());
}

TEST(SchedulerTest, MaxSeqsAndPriorityOrder) {
  Harness h(config(2, 64), 64);
  h.add(make_request(1, 4, 5));
  Request urgent = make_request(2, 4, 5, 10);
  urgent.priority = -1;
  h.add(make_request(3, 4, 5, 20));
  h.add(urgent);
  auto [out, res] = h.step();
  ASSERT_EQ(out.sequences.size(), 2u);
  EXPECT_EQ(out.sequences[0].request_id, 2);  // lower priority value first
  EXPECT_EQ(out.sequences[1].request_id, 1);  // then FCFS
  EXPECT_EQ(h.scheduler.num_waiting(), 1);
}

TEST(SchedulerTest, FinishRequestFreesBlocksFromAnyState) {
  Harness h(config(1, 64), 64);
  h.add(make_request(1, 10, 50));
  h.add(make_request(2, 10, 50, 30));
  h.step();
  EXPECT_GT(h.scheduler.kv_cache().stats().num_used_blocks, 0);
  EXPECT_TRUE(h.scheduler.finish_request(2, FinishReason::kAbort));  // waiting
  EXPECT_TRUE(h.scheduler.finish_request(1, FinishReason::kAbort));  // running
  EXPECT_FALSE(h.scheduler.finish_request(1, FinishReason::kAbort));
  EXPECT_EQ(h.scheduler.kv_cache().stats().num_used_blocks, 0);
  EXPECT_FALSE(h.scheduler.has_unfinished_requests());
  EXPECT_TRUE(h.scheduler.schedule().empty());
}

TEST(SchedulerTest, ForksChoicesSharingThePromptBlocks) {
  Harness h(config(8, 64), 64, 4);
  Request r = make_request(10, 10, 3);
  r.num_pending_forks = 2;
  h.add(r);
  SchedulerOutput out = h.scheduler.schedule();
  ASSERT_EQ(out.sequences.size(), 1u);
  std::vector<SampledTokens> sampled = {{10, {5, 6, 7}}};
  std::vector<SequenceOutput> res = h.scheduler.update(out, sampled);
  ASSERT_EQ(res.size(), 3u);
  std::map<int32_t, int32_t> token_by_choice;
  for (const SequenceOutput& o : res) {
    EXPECT_EQ(o.group_id, 10);
    token_by_choice[o.choice_index] = o.token_id;
  }
  EXPECT_EQ(token_by_choice, (std::map<int32_t, int32_t>{{0, 5}, {1, 6}, {2, 7}}));
  ASSERT_NE(h.scheduler.find(11), nullptr);
  ASSERT_NE(h.scheduler.find(12), nullptr);
  EXPECT_EQ(h.scheduler.find(11)->num_computed_tokens, 10);
  // Two full blocks shared three ways; the partial third block copied for each child.
  const BlockPool& pool = h.scheduler.kv_cache().pool();
  const auto table = h.scheduler.kv_cache().block_table(10);
  EXPECT_EQ(pool.ref_count(table[0]), 3);
  SchedulerOutput next = h.scheduler.schedule();
  EXPECT_EQ(next.block_copies.size(), 2u);
  EXPECT_EQ(next.sequences.size(), 3u);
  for (const ScheduledSequence& s : next.sequences)
    EXPECT_EQ(s.start_pos, 10);
  EXPECT_TRUE(h.scheduler.kv_cache().check_invariants().ok());
}

TEST(SchedulerTest, RejectsWhatCanNeverRun) {
  Harness h(config(4, 64, 32), 4, 4);
  Request empty;
  empty.request_id = 1;
  EXPECT_FALSE(h.scheduler.check_admissible(empty).ok());
  EXPECT_FALSE(h.scheduler.check_admissible(make_request(2, 32, 1)).ok());   // fills the context
  EXPECT_FALSE(h.scheduler.check_admissible(make_request(3, 10, 20)).ok());  // 29 tokens > 16 slots
  EXPECT_TRUE(h.scheduler.check_admissible(make_request(4, 10, 7)).ok());    // 16 slots exactly
}

TEST(SchedulerTest, ContextLengthEndsGeneration) {
  Harness h(config(4, 64, 12), 64, 4);
  h.add(make_request(1, 10, 100));
  std::vector<SequenceOutput> all;
  for (int i = 0; i < 5 && h.scheduler.has_unfinished_requests(); ++i) {
    auto [out, res] = h.step();
    all.insert(all.end(), res.begin(), res.end());
  }
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all.back().finish_reason, FinishReason::kLength);
}

// The token a test "model" samples: a function of the sequence and the output index only,
// so every way of scheduling the same requests must produce the same outputs. EOS at
// output index `eos_at` (-1: never).
int32_t token_at(RequestId id, int32_t output_index, int32_t eos_at) {
  if (output_index == eos_at) return kEos;
  return 10 + static_cast<int32_t>((id * 7 + output_index) % 50);
}

struct Produced {
  std::map<RequestId, std::vector<int32_t>> tokens;
  std::map<RequestId, FinishReason> reasons;
  void record(const std::vector<SequenceOutput>& outputs) {
    for (const SequenceOutput& o : outputs) {
      tokens[o.request_id].push_back(o.token_id);
      if (o.finish_reason) reasons[o.request_id] = *o.finish_reason;
    }
  }
};

std::vector<SampledTokens> sample_step(const Scheduler& s, const SchedulerOutput& out,
                                       const std::map<RequestId, int32_t>& eos_at) {
  std::vector<SampledTokens> sampled;
  for (const ScheduledSequence& seq : out.sequences) {
    if (!seq.sample) continue;
    const Request* r = s.find(seq.request_id);
    if (r == nullptr) continue;  // ended while this step ran (its row is dropped)
    const int32_t index = seq.start_pos + static_cast<int32_t>(seq.token_ids.size()) - r->num_prompt_tokens;
    sampled.push_back(SampledTokens{seq.request_id, {token_at(seq.request_id, index, eos_at.at(seq.request_id))}});
  }
  return sampled;
}

// Adds the same requests to a scheduler: varied prompts, limits and EOS positions.
std::map<RequestId, int32_t> add_mixed(Harness& h, int count) {
  std::map<RequestId, int32_t> eos_at;
  for (int i = 0; i < count; ++i) {
    const RequestId id = 1 + i;
    h.add(make_request(id, 3 + (i * 5) % 11, 4 + (i * 3) % 13, 1 + i));
    eos_at[id] = i % 3 == 0 ? 2 + i % 5 : -1;
  }
  return eos_at;
}

Produced run_sync(Harness& h, const std::map<RequestId, int32_t>& eos_at) {
  Produced p;
  while (h.scheduler.has_unfinished_requests()) {
    SchedulerOutput out = h.scheduler.schedule();
    p.record(h.scheduler.update(out, sample_step(h.scheduler, out, eos_at)));
    EXPECT_TRUE(h.scheduler.kv_cache().check_invariants().ok());
  }
  return p;
}

// The engine's overlapped loop: while a step "runs", the next is scheduled ahead when it
// can be; the step's tokens arrive afterwards.
struct AheadCounts {
  int steps = 0;              // scheduled ahead
  int steps_with_prompt = 0;  // of those, with prompt tokens (a chunk or an admission)
};
AheadCounts run_ahead(Harness& h, const std::map<RequestId, int32_t>& eos_at, Produced* p) {
  AheadCounts counts;
  SchedulerOutput in_flight = h.scheduler.schedule();
  while (!in_flight.empty() || h.scheduler.has_unfinished_requests()) {
    SchedulerOutput next;
    const bool advanced = h.scheduler.can_schedule_ahead(in_flight);
    if (advanced) {
      next = h.scheduler.schedule_ahead(in_flight);
      counts.steps += next.empty() ? 0 : 1;
      bool with_prompt = false;
      for (const ScheduledSequence& seq : next.sequences) {
        if (seq.token_ids.back() == Scheduler::kPendingToken) {  // a token still being sampled: alone
          EXPECT_EQ(seq.token_ids.size(), 1u);
          EXPECT_TRUE(seq.sample);
          continue;
        }
        for (int32_t t : seq.token_ids)
          EXPECT_NE(t, Scheduler::kPendingToken);
        with_prompt = true;
      }
      counts.steps_with_prompt += with_prompt ? 1 : 0;
    }
    // The tokens of `in_flight` become known only now.
    const std::vector<SampledTokens> sampled = sample_step(h.scheduler, in_flight, eos_at);
    p->record(advanced ? h.scheduler.resolve(sampled) : h.scheduler.update(in_flight, sampled));
    EXPECT_TRUE(h.scheduler.kv_cache().check_invariants().ok());
    if (!advanced || next.empty()) next = h.scheduler.schedule();
    in_flight = std::move(next);
  }
  return counts;
}

TEST(SchedulerTest, SchedulingAheadProducesWhatUpdateDoes) {
  for (int num_blocks : {64, 12}) {        // 12: sequences are preempted or wait for blocks
    for (bool filtered : {false, true}) {  // request 9 may not be scheduled ahead
      const std::string what = std::to_string(num_blocks) + (filtered ? " blocks, filtered" : " blocks");
      Harness sync(config(8, 32, 64), num_blocks);
      Harness overlapped(config(8, 32, 64), num_blocks);
      if (filtered) overlapped.scheduler.set_schedule_ahead_filter([](const Request& r) { return r.request_id != 9; });
      const std::map<RequestId, int32_t> eos_at = add_mixed(sync, 10);
      add_mixed(overlapped, 10);
      const Produced expected = run_sync(sync, eos_at);
      Produced got;
      const AheadCounts ahead = run_ahead(overlapped, eos_at, &got);
      EXPECT_GT(ahead.steps, 2) << what;
      EXPECT_GT(ahead.steps_with_prompt, 0) << what;
      EXPECT_EQ(got.tokens, expected.tokens) << what;
      EXPECT_EQ(got.reasons, expected.reasons) << what;
      EXPECT_EQ(overlapped.scheduler.kv_cache().stats().num_used_blocks, 0) << what;
    }
  }
}

TEST(SchedulerTest, SchedulesAheadAsScheduleWouldWithoutPreempting) {
  Harness h(config(2, 8), 64);
  h.add(make_request(1, 5, 10));
  // A whole prompt that samples: scheduled ahead, its first output token pending.
  SchedulerOutput prefill = h.scheduler.schedule();
  ASSERT_TRUE(h.scheduler.can_schedule_ahead(prefill));
  h.add(make_request(2, 12, 10, 50));  // waiting, a seat free: admitted ahead, chunked by the budget
  SchedulerOutput ahead = h.scheduler.schedule_ahead(prefill);
  ASSERT_EQ(ahead.sequences.size(), 2u);
  EXPECT_EQ(ahead.sequences[0].request_id, 1);
  EXPECT_EQ(ahead.sequences[0].token_ids, std::vector<int32_t>{Scheduler::kPendingToken});
  EXPECT_EQ(ahead.sequences[0].start_pos, 5);
  EXPECT_EQ(ahead.sequences[1].request_id, 2);
  EXPECT_EQ(ahead.sequences[1].token_ids.size(), 7u);  // 8 tokens of budget, 1 taken by request 1
  EXPECT_FALSE(ahead.sequences[1].sample);
  h.scheduler.resolve({{SampledTokens{1, {7}}}});
  EXPECT_EQ(h.scheduler.find(1)->token_ids.back(), 7);

  // Request 2's next chunk is ahead too; request 1 ends by length at max_tokens 10 later.
  ASSERT_TRUE(h.scheduler.can_schedule_ahead(ahead));
  SchedulerOutput ahead2 = h.scheduler.schedule_ahead(ahead);
  ASSERT_EQ(ahead2.sequences.size(), 2u);
  EXPECT_EQ(ahead2.sequences[1].start_pos, 7);
  EXPECT_EQ(ahead2.sequences[1].token_ids.size(), 5u);
  EXPECT_TRUE(ahead2.sequences[1].sample);
  h.scheduler.resolve({{SampledTokens{1, {8}}}});

  // A waiting request that the filter keeps out: not scheduled ahead while it could be
  // admitted, so schedule() admits it; with no seat free it does not matter.
  h.scheduler.set_schedule_ahead_filter([](const Request& r) { return r.request_id != 3; });
  h.add(make_request(3, 5, 10));
  EXPECT_TRUE(h.scheduler.can_schedule_ahead(ahead2));  // max_num_seqs 2: no seat for it
  SchedulerOutput ahead3 = h.scheduler.schedule_ahead(ahead2);
  ASSERT_EQ(ahead3.sequences.size(), 2u);
  // Request 1 stops at EOS: it ends at resolve(); its token in ahead3 is dropped later, and
  // its seat goes to request 3, which only schedule() may admit.
  auto outputs = h.scheduler.resolve({{SampledTokens{1, {kEos}}, SampledTokens{2, {11}}}});
  ASSERT_EQ(outputs.size(), 2u);
  EXPECT_EQ(outputs[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.scheduler.find(1), nullptr);
  EXPECT_FALSE(h.scheduler.can_schedule_ahead(ahead3));
  h.scheduler.update(ahead3, {{SampledTokens{1, {5}}, SampledTokens{2, {12}}}});
  SchedulerOutput with3 = h.scheduler.schedule();
  ASSERT_EQ(with3.sequences.size(), 2u);
  EXPECT_EQ(with3.sequences[1].request_id, 3);
  EXPECT_FALSE(h.scheduler.can_schedule_ahead(with3));  // request 3 is in it
  h.scheduler.update(with3, {{SampledTokens{2, {13}}, SampledTokens{3, {13}}}});

  // A running sequence left out of a step (no budget for it) is schedule()'s to decide.
  h.scheduler.set_schedule_ahead_filter(nullptr);
  SchedulerOutput both = h.scheduler.schedule();
  ASSERT_EQ(both.sequences.size(), 2u);
  SchedulerOutput only_first = both;
  only_first.sequences.pop_back();
  EXPECT_FALSE(h.scheduler.can_schedule_ahead(only_first));
  EXPECT_TRUE(h.scheduler.can_schedule_ahead(both));
  EXPECT_TRUE(h.scheduler.kv_cache().check_invariants().ok());
}

TEST(SchedulerTest, SchedulesAheadWithoutPreemptingShortOfBlocks) {
  // Two sequences of 4-token blocks, 3 blocks in all: the second cannot grow past its block
  // without preempting, so the step ahead leaves it out and admits nobody.
  Harness h(config(4, 64), 3);
  h.add(make_request(1, 4, 8));
  h.add(make_request(2, 3, 8));
  SchedulerOutput prefill = h.scheduler.schedule();
  ASSERT_EQ(prefill.sequences.size(), 2u);
  h.scheduler.update(prefill, {{SampledTokens{1, {7}}, SampledTokens{2, {7}}}});
  SchedulerOutput decode = h.scheduler.schedule();  // request 1: a second block; 2 fits its first
  ASSERT_EQ(decode.sequences.size(), 2u);
  h.add(make_request(3, 2, 4));
  ASSERT_TRUE(h.scheduler.can_schedule_ahead(decode));
  SchedulerOutput ahead = h.scheduler.schedule_ahead(decode);
  ASSERT_EQ(ahead.sequences.size(), 1u);
  EXPECT_EQ(ahead.sequences[0].request_id, 1);
  EXPECT_EQ(h.scheduler.num_waiting(), 1);  // request 3 not admitted
  h.scheduler.resolve({{SampledTokens{1, {8}}, SampledTokens{2, {8}}}});
  EXPECT_FALSE(h.scheduler.can_schedule_ahead(ahead));  // request 2 is not in it
  EXPECT_EQ(h.scheduler.stats().num_preemptions, 0);
  EXPECT_TRUE(h.scheduler.kv_cache().check_invariants().ok());
}

TEST(SchedulerConfigTest, Validates) {
  EXPECT_TRUE(config(1, 1).validate().ok());
  EXPECT_FALSE(config(0, 1).validate().ok());
  EXPECT_FALSE(config(1, 0).validate().ok());
  SchedulerConfig c = config(1, 16, 32);
  c.enable_chunked_prefill = false;
  EXPECT_FALSE(c.validate().ok());
}

}  // namespace
}  // namespace bw
