// kimi-serve driven by the official `openai` npm package (what users and tools run).
// Env: KIMI_URL (http://127.0.0.1:PORT), KIMI_API_KEY, KIMI_NPM_DIR (where `openai` is installed).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(process.env.KIMI_NPM_DIR + '/package.json');
const OpenAI = require('openai').default ?? require('openai');
const base = process.env.KIMI_URL;
const client = new OpenAI({ baseURL: base + '/v1', apiKey: process.env.KIMI_API_KEY, maxRetries: 0, timeout: 60_000 });
const model = 'kimi-tiny';
const messages = [{ role: 'user', content: 'Tell me a story.' }];
const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Current weather',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];

const tests = [];
const test = (name, fn) => tests.push([name, fn]);

async function metric(name) {
  const text = await (await fetch(base + '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line === undefined ? NaN : Number(line.split(' ').pop());
}

test('models.list: id, root, max_model_len', async () => {
  const page = await client.models.list();
  const m = page.data[0];
  assert.equal(m.id, model);
  assert.equal(m.object, 'model');
  assert.ok(m.root.length > 0);
  assert.equal(m.max_model_len, 1024);
});

test('chat, not streamed', async () => {
  const r = await client.chat.completions.create({ model, messages, max_completion_tokens: 8 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8);
});

test('chat, streamed with include_usage', async () => {
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 6, ignore_eos: true,
    stream: true, stream_options: { include_usage: true } });
  let text = '', role = null, finish = null, usage = null, chunks = 0, ids = new Set();
  for await (const chunk of stream) {
    chunks++;
    ids.add(chunk.id);
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    role ??= c.delta.role;
    text += c.delta.content ?? '';
    finish = c.finish_reason ?? finish;
  }
  assert.equal(role, 'assistant');
  assert.equal(finish, 'length');
  assert.equal(ids.size, 1);
  assert.ok(chunks >= 3);
  assert.equal(usage.completion_tokens, 6);
  assert.equal(usage.total_tokens, usage.prompt_tokens + 6);
});

test('stream helper: finalChatCompletion validates the stream', async () => {
  const s = client.chat.completions.stream({ model, messages, max_tokens: 5 });
  const final = await s.finalChatCompletion();
  assert.equal(final.choices[0].message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(final.choices[0].finish_reason));
});

test('n=2', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 4, n: 2, seed: 7 });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1]);
  assert.ok(r.usage.completion_tokens >= 2);
});

test('seed: same seed, same text; other seed, other text', async () => {
  const ask = async (seed) => (await client.chat.completions.create({ model, messages, max_tokens: 12,
    ignore_eos: true, temperature: 1, seed })).choices[0].message.content;
  const a = await ask(1234), b = await ask(1234), c = await ask(4321);
  assert.equal(a, b);
  assert.notEqual(a, c);
});

test('seeded stream equals the seeded whole response', async () => {
  const args = { model, prompt: 'Once upon a time', max_tokens: 10, ignore_eos: true, seed: 99 };
  const whole = (await client.completions.create(args)).choices[0].text;
  let streamed = '';
  for await (const chunk of await client.completions.create({ ...args, stream: true })) {
    assert.equal(chunk.object, 'text_completion');
    streamed += chunk.choices[0]?.text ?? '';
  }
  assert.equal(streamed, whole);
  assert.ok(whole.length > 0);
});

test('stop: the text ends before the stop string, finish_reason stop', async () => {
  const args = { model, messages, max_tokens: 16, ignore_eos: true, temperature: 0 };
  const full = (await client.chat.completions.create(args)).choices[0].message.content;
  const chars = [...full];
  // A stop string from the middle of the greedy answer (whole characters, no replacement char).
  let at = -1;
  for (let i = 2; i + 2 <= chars.length; i++)
    if (!chars[i].includes('\ufffd') && !chars[i + 1].includes('\ufffd')) { at = i; break; }
  assert.ok(at > 0, `no usable stop string in ${JSON.stringify(full)}`);
  const stop = chars[at] + chars[at + 1];
  const expect = full.slice(0, full.indexOf(stop));
  const r = await client.chat.completions.create({ ...args, stop: [stop] });
  assert.equal(r.choices[0].message.content, expect);
  assert.equal(r.choices[0].finish_reason, 'stop');
  let streamed = '';
  for await (const chunk of await client.chat.completions.create({ ...args, stop, stream: true }))
    streamed += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(streamed, expect);
});

test('tool-call round trip through the stream helper', async () => {
  const s = client.chat.completions.stream({ model, messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools, tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 6,
    stream_options: { include_usage: true } });
  const final = await s.finalChatCompletion();
  const msg = final.choices[0].message;
  assert.equal(msg.tool_calls.length, 1);
  assert.equal(msg.tool_calls[0].id, 'functions.get_weather:0');
  assert.equal(msg.tool_calls[0].type, 'function');
  assert.equal(msg.tool_calls[0].function.name, 'get_weather');
  assert.equal(typeof msg.tool_calls[0].function.arguments, 'string');
  // Send the call back with a tool result, as an agent loop does.
  const next = await client.chat.completions.create({ model, tools, max_tokens: 4, messages: [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: msg.content ?? null, tool_calls: msg.tool_calls },
    { role: 'tool', tool_call_id: msg.tool_calls[0].id, content: '{"temp": 21}' }] });
  assert.equal(next.choices[0].message.role, 'assistant');
  assert.ok(next.usage.prompt_tokens > final.usage.prompt_tokens);
});

// Bounded documents (an enum, a boolean, capped whitespace): generation ends within 440 tokens.
const schema = { type: 'object', properties: { ok: { type: 'boolean' }, color: { enum: ['red', 'green', 'blue'] } },
  required: ['ok', 'color'], additionalProperties: false };

test('structured outputs: chat.completions.parse with a json_schema response_format', async () => {
  const r = await client.chat.completions.parse({ model, messages, max_tokens: 440, seed: 4, temperature: 1,
    response_format: { type: 'json_schema', json_schema: { name: 'answer', strict: true, schema } } });
  assert.equal(r.choices[0].finish_reason, 'stop');
  const p = r.choices[0].message.parsed;
  assert.deepEqual(Object.keys(p), ['ok', 'color']);
  assert.equal(typeof p.ok, 'boolean');
  assert.ok(['red', 'green', 'blue'].includes(p.color));
  await assert.rejects(client.chat.completions.create({ model, messages, response_format: { type: 'json_schema',
    json_schema: { name: 'x', schema: { type: 'string', format: 'email' } } } }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format.json_schema.schema.format');
});

test('forced tool calls: chat.completions.parse reads strict tools\' arguments', async () => {
  // The SDK parses the arguments of strict function tools (parsed_arguments); tool_choice required
  // makes the server mask them to the schema.
  const strict = [{ type: 'function', function: { name: 'answer', strict: true, parameters: schema } }];
  for (const tool_choice of ['required', { type: 'function', function: { name: 'answer' } }]) {
    const r = await client.chat.completions.parse({ model, messages, seed: 5, temperature: 1,
      tools: strict, tool_choice, parallel_tool_calls: false });
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    const calls = r.choices[0].message.tool_calls;
    assert.equal(calls.length, 1);
    assert.equal(calls[0].id, 'functions.answer:0');
    const p = calls[0].function.parsed_arguments;
    assert.deepEqual(Object.keys(p), ['ok', 'color']);
    assert.equal(typeof p.ok, 'boolean');
    assert.ok(['red', 'green', 'blue'].includes(p.color));
  }
  await assert.rejects(client.chat.completions.create({ model, messages, tool_choice: 'required',
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'string', format: 'email' } } }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'tools[0].function.parameters.format');
});

test("vLLM's guided_json and structured_outputs.json as extra body fields", async () => {
  // The Python SDK's extra_body merges them into the body; the node SDK sends unknown params as given.
  for (const extra of [{ guided_json: schema }, { structured_outputs: { json: JSON.stringify(schema) } }]) {
    const r = await client.chat.completions.create({ model, messages, max_tokens: 440, seed: 9, temperature: 1, ...extra });
    assert.equal(r.choices[0].finish_reason, 'stop');
    const p = JSON.parse(r.choices[0].message.content);
    assert.deepEqual(Object.keys(p), ['ok', 'color']);
    assert.equal(typeof p.ok, 'boolean');
    assert.ok(['red', 'green', 'blue'].includes(p.color));
  }
  await assert.rejects(client.chat.completions.create({ model, messages, guided_choice: ['yes', 'no'] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'guided_choice');
});

test('legacy completions, token-id prompt, logprobs', async () => {
  const r = await client.completions.create({ model, prompt: [1, 2, 3], max_tokens: 3, ignore_eos: true, logprobs: 1 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].logprobs.tokens.length, 3);
  assert.equal(r.usage.prompt_tokens, 3);
});

test('errors map to the SDK classes', async () => {
  await assert.rejects(client.chat.completions.create({ model, messages, temperature: 5 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature');
  await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  await assert.rejects(client.chat.completions.create({ model, messages, max_tokens: 5000 }),
    (e) => e instanceof OpenAI.BadRequestError && /maximum context length/.test(e.message) &&
      e.code === 'context_length_exceeded');
  const bad = new OpenAI({ baseURL: base + '/v1', apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
});

test('break out of a stream: the server cancels the request', async () => {
  const aborts = await metric('vllm:request_success_total{model_name="kimi-tiny",engine="0",finished_reason="abort"}');
  const stream = await client.completions.create({ model, prompt: [1, 2], max_tokens: 500, ignore_eos: true, stream: true });
  let n = 0;
  for await (const _ of stream) if (++n === 3) break;
  const deadline = Date.now() + 5000;
  let running = NaN;
  while (Date.now() < deadline) {
    running = await metric('vllm:num_requests_running{');
    if (running === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(running, 0);
  const after = await metric('vllm:request_success_total{model_name="kimi-tiny",engine="0",finished_reason="abort"}');
  assert.ok(after > aborts, `aborts ${aborts} -> ${after}`);
});

let failed = 0;
for (const [name, fn] of tests) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   - ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL - ${name}: ${e.stack ?? e}`);
  }
}
console.log(`${tests.length} tests, ${failed} failed`);
process.exit(failed ? 1 : 0);
