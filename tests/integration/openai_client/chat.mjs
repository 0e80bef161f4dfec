// chat.mjs — drives the modelgate gateway with the official `openai` npm client.
//
// Usage: node chat.mjs [BASE_URL] [MODEL]
//   BASE_URL: the daemon, e.g. http://127.0.0.1:8080 (or MODELGATE_BASE_URL)
//   MODEL:    the model to ask for (or MODELGATE_MODEL, default "mock-model")
//   The API key is MODELGATE_TEST_API_KEY, default "k".
//
// Performs one chat completion and one streamed chat completion through
// `${BASE_URL}/v1`, prints one JSON line
//   {"content": ..., "streamed": ..., "chunks": N, "model": ..., "stream_model": ...}
// and exits 0; on any error it prints the error on stderr and exits 1.
// Installed by `npm ci --prefix tests/integration/openai_client`.
import OpenAI from 'openai';

async function main() {
  const base = (process.argv[2] || process.env.MODELGATE_BASE_URL || '').replace(/\/+$/, '');
  const model = process.argv[3] || process.env.MODELGATE_MODEL || 'mock-model';
  if (!base) {
    console.error('usage: node chat.mjs BASE_URL [MODEL]');
    process.exit(2);
  }
  const client = new OpenAI({
    baseURL: base + '/v1',
    apiKey: process.env.MODELGATE_TEST_API_KEY || 'k',
    maxRetries: 0,
    timeout: 10000,
  });
  const messages = [{ role: 'user', content: 'Say hello' }];

  const answer = await client.chat.completions.create({ model, messages });
  const content = answer.choices?.[0]?.message?.content;
  if (typeof content !== 'string')
    throw new Error('no choices[0].message.content in ' + JSON.stringify(answer));

  const stream = await client.chat.completions.create({ model, messages, stream: true });
  let streamed = '';
  let chunks = 0;
  let streamModel = null;
  for await (const chunk of stream) {
    chunks += 1;
    streamModel = chunk.model ?? streamModel;
    streamed += chunk.choices?.[0]?.delta?.content ?? '';
  }

  console.log(JSON.stringify({
    content,
    streamed,
    chunks,
    model: answer.model ?? null,
    stream_model: streamModel,
  }));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error('openai client error:', err && (err.stack || err.message || err));
    if (err && err.status !== undefined)
      console.error('status:', err.status, 'body:', JSON.stringify(err.error ?? null));
    process.exit(1);
  },
);
