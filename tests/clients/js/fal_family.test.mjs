// The official @fal-ai/client runs every endpoint of the FLUX.2 family (tests/clients/test_family_clients.py).
//
// Environment (set by the Python wrapper):
//   FLUX2_ORIGIN           the server (https), trusted through NODE_EXTRA_CA_CERTS
//   FLUX2_ENDPOINTS_JSON   {endpoint id: {mode, steps, adapters}} to run
//   FLUX2_LORA_URL         optional: a LoRA URL the server may fetch (lora endpoints add it)
//
// Per endpoint: fal.run, fal.subscribe with logs, fal.queue.submit/status/result, and a cancel.
// The client reaches the server through a requestMiddleware that rewrites fal's hosts (the proxy
// mode is endpoint-agnostic and covered by fal_client.test.mjs).

import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import { describe, test } from "node:test";

import { ApiError, createFalClient } from "@fal-ai/client";

const ORIGIN = (process.env.FLUX2_ORIGIN ?? "").replace(/\/+$/, "");
const ENDPOINTS = JSON.parse(process.env.FLUX2_ENDPOINTS_JSON ?? "{}");
const LORA_URL = process.env.FLUX2_LORA_URL ?? "";
if (!ORIGIN || Object.keys(ENDPOINTS).length === 0) {
  throw new Error("run this through tests/clients/test_family_clients.py");
}
const PROMPT = "a lighthouse at dusk";

// A 64x64 greyscale gradient PNG as a data: URI (the server cannot fetch internet URLs).
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}
function greyPng(size) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header[8] = 8;
  header[9] = 0; // greyscale
  const rows = Buffer.alloc(size * (1 + size));
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) rows[y * (1 + size) + 1 + x] = x * 4;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
const REFERENCE = `data:image/png;base64,${greyPng(64).toString("base64")}`;

function rewrite(url) {
  if (url.startsWith("https://queue.fal.run/")) {
    return `${ORIGIN}/queue/${url.slice("https://queue.fal.run/".length)}`;
  }
  if (url.startsWith("https://fal.run/")) return `${ORIGIN}/${url.slice("https://fal.run/".length)}`;
  return url;
}
const fal = createFalClient({
  credentials: "any-key",
  requestMiddleware: async (request) => ({ ...request, url: rewrite(request.url) }),
});

function input(id, seed, extra = {}) {
  const { mode, steps, adapters } = ENDPOINTS[id];
  const body = { prompt: PROMPT, image_size: "square", seed, ...extra };
  if (mode === "edit") body.image_urls = [REFERENCE];
  if (steps === "request") body.num_inference_steps = body.num_inference_steps ?? 4;
  if (adapters === "request" && LORA_URL) body.loras = [{ path: LORA_URL, scale: 0.7 }];
  return body;
}

function assertOutput(data, seed) {
  assert.deepEqual(
    Object.keys(data).sort(),
    ["has_nsfw_concepts", "images", "prompt", "seed", "timings"],
    JSON.stringify(data),
  );
  assert.equal(data.seed, seed);
  assert.equal(data.images.length, 1);
  assert.equal(data.images[0].width, 512);
  assert.equal(data.images[0].height, 512);
  assert.match(data.images[0].content_type, /^image\//);
  assert.equal(data.has_nsfw_concepts.length, 1);
}

const stepLogs = (logs) =>
  (logs ?? []).map((entry) => entry.message).filter((message) => /^step \d+\/\d+$/.test(message));

describe("@fal-ai/client on every endpoint", () => {
  for (const id of Object.keys(ENDPOINTS)) {
    const steps = ENDPOINTS[id].steps === "request" ? 4 : null;
    test(id, { timeout: 120_000 }, async () => {
      const run = await fal.run(id, { input: input(id, 1) });
      assertOutput(run.data, 1);
      assert.equal(typeof run.requestId, "string");

      const updates = [];
      const subscribed = await fal.subscribe(id, {
        input: input(id, 2),
        logs: true,
        onQueueUpdate: (update) => updates.push(update),
      });
      assertOutput(subscribed.data, 2);
      const logged = updates.flatMap((update) => stepLogs(update.logs));
      assert.ok(logged.length > 0, `no step logs: ${JSON.stringify(updates)}`);
      if (steps !== null) assert.ok(logged.includes(`step ${steps}/${steps}`), logged.join(","));

      const { request_id: requestId } = await fal.queue.submit(id, { input: input(id, 3) });
      const status = await fal.queue.status(id, { requestId, logs: true });
      assert.ok(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(status.status));
      let done = status;
      while (done.status !== "COMPLETED") {
        await new Promise((resolve) => setTimeout(resolve, 20));
        done = await fal.queue.status(id, { requestId, logs: true });
      }
      const result = await fal.queue.result(id, { requestId });
      assertOutput(result.data, 3);
      assert.equal(result.requestId, requestId);

      const slow = input(id, 4, { num_images: 4, ...(steps ? { num_inference_steps: 40 } : {}) });
      const doomed = await fal.queue.submit(id, { input: slow });
      try {
        await fal.queue.cancel(id, { requestId: doomed.request_id });
      } catch (error) {
        assert.ok(error instanceof ApiError && error.status === 400, String(error));
      }
    });
  }
});
