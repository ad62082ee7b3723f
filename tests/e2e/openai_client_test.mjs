// End-to-end checks of `breakwater serve` through the official OpenAI SDK (npm `openai`).
// Usage: BW_URL=http://127.0.0.1:PORT/v1 BW_MODEL=name BW_API_KEY=key node openai_client_test.mjs
// Prints one line per check and exits non-zero when any check fails.
import OpenAI from 'openai';

const baseURL = process.env.BW_URL;
const model = process.env.BW_MODEL;
const apiKey = process.env.BW_API_KEY;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });

let failures = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}
function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function expectError(fn, ErrorClass, status) {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof ErrorClass, `expected ${ErrorClass.name}, got ${e.constructor.name}: ${e.message}`);
    assert(e.status === status, `expected status ${status}, got ${e.status}`);
    assert(typeof e.message === 'string' && e.message.length > 0, 'error without a message');
    return e;
  }
  throw new Error(`expected ${ErrorClass.name}, the call succeeded`);
}

await check('models.list names the served model', async () => {
  const models = await client.models.list();
  assert(models.data.length === 1 && models.data[0].id === model, JSON.stringify(models.data));
});

await check('chat completion', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Tell me a story.' }], max_tokens: 12, temperature: 0,
  });
  assert(r.object === 'chat.completion', r.object);
  assert(r.choices.length === 1, 'one choice');
  assert(r.choices[0].message.role === 'assistant', 'assistant role');
  assert(typeof r.choices[0].message.content === 'string', 'content is a string');
  assert(['stop', 'length'].includes(r.choices[0].finish_reason), r.choices[0].finish_reason);
  assert(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12, JSON.stringify(r.usage));
  assert(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, 'total = prompt + completion');
});

await check('chat completion streamed equals non-streamed', async () => {
  const params = { model, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 16, temperature: 0 };
  const whole = await client.chat.completions.create(params);
  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let role = null;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    assert(chunk.object === 'chat.completion.chunk', chunk.object);
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert(role === 'assistant', `role ${role}`);
  assert(text === whole.choices[0].message.content, `stream ${JSON.stringify(text)} vs ${JSON.stringify(whole.choices[0].message.content)}`);
  assert(finish === whole.choices[0].finish_reason, `finish ${finish}`);
  assert(usage && usage.completion_tokens === whole.usage.completion_tokens, `usage ${JSON.stringify(usage)}`);
});

await check('completion (text prompt), n = 2 with a seed', async () => {
  const r = await client.completions.create({
    model, prompt: 'Once upon a time', max_tokens: 10, temperature: 0.8, seed: 7, n: 2,
  });
  assert(r.object === 'text_completion', r.object);
  assert(r.choices.length === 2, `${r.choices.length} choices`);
  const again = await client.completions.create({
    model, prompt: 'Once upon a time', max_tokens: 10, temperature: 0.8, seed: 7, n: 2,
  });
  assert(again.choices[0].text === r.choices[0].text && again.choices[1].text === r.choices[1].text, 'seeded');
});

await check('completion streamed, prompt as token ids', async () => {
  const stream = await client.completions.create({ model, prompt: [1, 403, 407, 261], max_tokens: 8, stream: true });
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert(text.length > 0, 'some text');
  assert(finish === 'length' || finish === 'stop', `finish ${finish}`);
});

await check('stop string ends the text before it', async () => {
  const whole = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0 });
  const text = whole.choices[0].text;
  const at = text.indexOf(' ', 10);
  const stop = text.substring(at, at + 3);
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 40, temperature: 0, stop: [stop] });
  assert(r.choices[0].finish_reason === 'stop', r.choices[0].finish_reason);
  assert(r.choices[0].text === text.substring(0, text.indexOf(stop)), JSON.stringify(r.choices[0].text));
});

await check('logprobs', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, logprobs: true, top_logprobs: 2,
  });
  const content = r.choices[0].logprobs.content;
  assert(content.length === r.usage.completion_tokens, 'one entry per token');
  assert(content[0].top_logprobs.length === 2, 'two alternatives');
});

await check('unknown model -> NotFoundError (404)', async () => {
  await expectError(() => client.chat.completions.create({
    model: 'no-such-model', messages: [{ role: 'user', content: 'x' }],
  }), OpenAI.NotFoundError, 404);
});

await check('bad field -> BadRequestError (400) naming it', async () => {
  const e = await expectError(() => client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'x' }], temperature: 'hot',
  }), OpenAI.BadRequestError, 400);
  assert(e.message.includes('temperature'), e.message);
});

await check('prompt longer than the context -> 400', async () => {
  const prompt = Array(5000).fill(403);
  await expectError(() => client.completions.create({ model, prompt, max_tokens: 1 }), OpenAI.BadRequestError, 400);
});

await check('wrong API key -> AuthenticationError (401)', async () => {
  const bad = new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 });
  await expectError(() => bad.models.list(), OpenAI.AuthenticationError, 401);
});

console.log(failures === 0 ? 'all checks passed' : `${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
