"""Locust load test for Breakwater (or any OpenAI-compatible server).

Users:
  ChatStreamUser   streamed /v1/chat/completions; reports TTFT as its own entry
                   (type "TTFT") and the whole stream time as the request's time.
  CompletionsUser  /v1/completions, streamed and not streamed in turn.
  JobsUser         the async jobs API: POST /v1/jobs, poll GET /v1/jobs/{id} until it is
                   done, and now and then DELETE (cancel) one.

Every response is checked (status, SSE framing, [DONE], usage equal to max_tokens with
ignore_eos), so a wrong answer counts as a failure, not only an HTTP error.

Headless run (Debian 12's python3-locust 2.x), selecting user classes by name:
  locust -f tools/locustfile.py --headless -u 4 -r 4 -t 15s --host http://127.0.0.1:8000 \
      --only-summary --exit-code-on-error 1 ChatStreamUser CompletionsUser

Environment: OPENAI_API_KEY (sent as a bearer token when set), BW_MODEL (default: the
first model of GET /v1/models), BW_MAX_TOKENS (default 16), BW_PROMPT.
"""

import json
import os
import time

from locust import HttpUser, between, events, task

API_KEY = os.environ.get("OPENAI_API_KEY", "")
MAX_TOKENS = int(os.environ.get("BW_MAX_TOKENS", "16"))
PROMPT = os.environ.get("BW_PROMPT", "Once upon a time")
JOB_TIMEOUT_S = float(os.environ.get("BW_JOB_TIMEOUT_S", "60"))

_model_name = os.environ.get("BW_MODEL", "")


def _headers():
    headers = {"Content-Type": "application/json"}
    if API_KEY:
        headers["Authorization"] = "Bearer " + API_KEY
    return headers


class OpenAIUser(HttpUser):
    abstract = True
    wait_time = between(0.05, 0.25)

    def on_start(self):
        global _model_name
        if not _model_name:
            r = self.client.get("/v1/models", headers=_headers(), name="/v1/models")
            r.raise_for_status()
            _model_name = r.json()["data"][0]["id"]
        self.model = _model_name

    def body(self, **fields):
        b = {"model": self.model, "max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True}
        b.update(fields)
        return b

    def fire(self, request_type, name, response_time_ms, exception=None):
        events.request.fire(request_type=request_type, name=name, response_time=response_time_ms,
                            response_length=0, exception=exception, context={})

    def stream(self, route, body, text_of):
        """POSTs a streamed request; checks the stream and reports TTFT. Returns nothing."""
        body = dict(body, stream=True, stream_options={"include_usage": True})
        start = time.perf_counter()
        with self.client.post(route, json=body, headers=_headers(), stream=True, catch_response=True,
                              name=route + " (stream)") as r:
            if r.status_code != 200:
                r.failure("HTTP %d: %s" % (r.status_code, r.text[:200]))
                return
            ttft = None
            usage = None
            done = False
            try:
                for raw in r.iter_lines():
                    if not raw:
                        continue
                    line = raw.decode("utf-8")
                    if not line.startswith("data: "):
                        raise ValueError("not an SSE data line: %r" % line[:80])
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        continue
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise ValueError("error event: %s" % chunk["error"])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if chunk.get("choices") and text_of(chunk["choices"][0]) and ttft is None:
                        ttft = (time.perf_counter() - start) * 1000.0
            except Exception as e:  # noqa: BLE001 - any broken stream is a failure
                r.failure("bad stream: %s" % e)
                return
            r.request_meta["response_time"] = (time.perf_counter() - start) * 1000.0
            if not done:
                r.failure("stream ended without [DONE]")
            elif ttft is None:
                r.failure("no generated text in the stream")
            elif usage is None or usage.get("completion_tokens") != body["max_tokens"]:
                r.failure("usage %s, expected completion_tokens %d" % (usage, body["max_tokens"]))
            else:
                r.success()
                self.fire("TTFT", route + " ttft", ttft)


class ChatStreamUser(OpenAIUser):
    @task
    def chat_stream(self):
        body = self.body(messages=[{"role": "user", "content": PROMPT}])
        self.stream("/v1/chat/completions", body, lambda c: (c.get("delta") or {}).get("content"))


class CompletionsUser(OpenAIUser):
    @task(2)
    def completion_stream(self):
        self.stream("/v1/completions", self.body(prompt=PROMPT), lambda c: c.get("text"))

    @task(1)
    def completion(self):
        with self.client.post("/v1/completions", json=self.body(prompt=PROMPT), headers=_headers(),
                              catch_response=True, name="/v1/completions") as r:
            if r.status_code != 200:
                r.failure("HTTP %d: %s" % (r.status_code, r.text[:200]))
                return
            try:
                j = r.json()
                ok = j["object"] == "text_completion" and j["usage"]["completion_tokens"] == MAX_TOKENS
            except (ValueError, KeyError, TypeError) as e:
                r.failure("bad body: %s" % e)
                return
            if ok:
                r.success()
            else:
                r.failure("unexpected completion: %s" % r.text[:200])


class JobsUser(OpenAIUser):
    """The async jobs API: POST /v1/jobs (a chat-completions body) -> 202 and a job object;
    GET /v1/jobs/{id} until status is succeeded (with "result", the chat completion),
    failed or cancelled; DELETE /v1/jobs/{id} cancels."""

    def create(self):
        body = self.body(messages=[{"role": "user", "content": PROMPT}])
        with self.client.post("/v1/jobs", json=body, headers=_headers(), catch_response=True,
                              name="/v1/jobs") as r:
            try:
                job = r.json()
            except ValueError:
                job = None
            if r.status_code != 202 or not job or job.get("object") != "job" or not job.get("id"):
                r.failure("create: HTTP %d: %s" % (r.status_code, r.text[:200]))
                return None
            r.success()
            return job["id"]

    @task(4)
    def job_to_completion(self):
        start = time.perf_counter()
        job_id = self.create()
        if job_id is None:
            return
        while True:
            r = self.client.get("/v1/jobs/" + job_id, headers=_headers(), name="/v1/jobs/{id}")
            if r.status_code != 200:
                return  # already reported as a failed request
            job = r.json()
            status = job.get("status")
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if status == "succeeded":
                result = job.get("result") or {}
                tokens = (result.get("usage") or {}).get("completion_tokens")
                error = None if tokens == MAX_TOKENS else ValueError("result usage %s" % result.get("usage"))
                self.fire("JOB", "job completion", elapsed_ms, error)
                return
            if status in ("failed", "cancelled"):
                self.fire("JOB", "job completion", elapsed_ms, ValueError("job %s: %s" % (status, job)))
                return
            if status not in ("queued", "running"):
                self.fire("JOB", "job completion", elapsed_ms, ValueError("unknown status %r" % status))
                return
            if elapsed_ms > JOB_TIMEOUT_S * 1000.0:
                self.fire("JOB", "job completion", elapsed_ms, TimeoutError("job %s still %s" % (job_id, status)))
                return
            time.sleep(0.05)

    @task(1)
    def job_cancel(self):
        job_id = self.create()
        if job_id is None:
            return
        with self.client.delete("/v1/jobs/" + job_id, headers=_headers(), catch_response=True,
                                name="/v1/jobs/{id} (cancel)") as r:
            # A job may finish before the cancel arrives; both answers are fine.
            if r.status_code in (200, 202, 409):
                r.success()
            else:
                r.failure("cancel: HTTP %d: %s" % (r.status_code, r.text[:200]))

