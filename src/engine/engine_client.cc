#include "engine/engine_client.h"

namespace bw {

void accumulate_event(const EngineEvent& event, Completion* completion) {
  completion->request_id = event.request_id;
  if (event.index >= 0 && static_cast<size_t>(event.index) >= completion->choices.size()) {
    completion->choices.resize(static_cast<size_t>(event.index) + 1);
  }
  Completion::Choice& choice = completion->choices[static_cast<size_t>(event.index)];
  choice.token_ids.insert(choice.token_ids.end(), event.token_ids.begin(), event.token_ids.end());
  choice.logprobs.insert(choice.logprobs.end(), event.logprobs.begin(), event.logprobs.end());
  choice.text += event.text;
  if (event.finish_reason) choice.finish_reason = *event.finish_reason;
  if (!event.stop_string.empty()) choice.stop_string = event.stop_string;
  if (event.done) {
    completion->usage = event.usage;
    completion->timings = event.timings;
  }
}

Result<Completion> generate_blocking(EngineClient& engine, GenerationRequest request) {
  EventQueue queue;
  ASSIGN_OR_RETURN(RequestId id, engine.submit(std::move(request), queue.sink()));
  Completion completion;
  completion.request_id = id;
  for (;;) {
    std::optional<EngineEvent> event = queue.pop();
    if (!event) return Unavailable("request {}: no event from the engine for 10 minutes", id);
    accumulate_event(*event, &completion);
    if (event->done) {
      if (!event->error.ok()) return event->error;
      return completion;
    }
  }
}

}  // namespace bw
