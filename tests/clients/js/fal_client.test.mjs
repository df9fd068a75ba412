// The official, unmodified @fal-ai/client (pinned in package.json) against a real flux2-edit server.
//
// Run by tests/clients/test_js_client.py, which starts `flux2-edit serve --model tiny` over https
// and sets:
//   FLUX2_ORIGIN         the server, e.g. https://127.0.0.1:8443
//   NODE_EXTRA_CA_CERTS  the CA that signed its certificate (ca.pem), so node's fetch trusts it
//   FLUX2_JS_MODES       optional, comma-separated subset of "middleware,proxy" (default: both)
//
// Every scenario runs once per way of pointing the client at a custom host (fal-protocol.md §9.2):
//   middleware  `requestMiddleware` rewrites https://queue.fal.run/ and https://fal.run/ to us;
//   proxy       `proxyUrl: {url: <origin>/api/fal/proxy, when: "always"}`: every call goes to the
//               proxy URL with the real target in `x-fal-target-url`.
// A recording `fetch` (which delegates to node's own) checks that each mode really went that way.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { deflateSync } from "node:zlib";

import { ApiError, ValidationError, createFalClient } from "@fal-ai/client";

const ORIGIN = (process.env.FLUX2_ORIGIN ?? "").replace(/\/+$/, "");
if (!ORIGIN) {
  throw new Error("FLUX2_ORIGIN is not set (run this through tests/clients/test_js_client.py)");
}
const MODES = (process.env.FLUX2_JS_MODES ?? "middleware,proxy")
  .split(",")
  .map((mode) => mode.trim())
  .filter(Boolean);
const PROXY_URL = `${ORIGIN}/api/fal/proxy`;

const APP = "fal-ai/flux-2/flash/edit";
const PROMPT = "paint the car #FF5733 and keep the background";
const STEP = /^step ([1-8])\/8$/;
const SCENARIO_TIMEOUT_MS = 90_000;

// --- a 96x96 RGB gradient PNG, as a data: URI (the server cannot fetch internet URLs) ----------

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

function pngChunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

function gradientPng(size) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // colour type: RGB
  const rows = Buffer.alloc(size * (1 + 3 * size));
  for (let y = 0; y < size; y++) {
    const row = y * (1 + 3 * size); // each row starts with filter type 0
    for (let x = 0; x < size; x++) {
      rows[row + 1 + 3 * x] = x * 2;
      rows[row + 2 + 3 * x] = y * 2;
      rows[row + 3 + 3 * x] = (x + y) % 256;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", header),
    pngChunk("IDAT", deflateSync(rows)),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

const REFERENCE = `data:image/png;base64,${gradientPng(96).toString("base64")}`;

function input(overrides = {}) {
  return {
    prompt: PROMPT,
    image_urls: [REFERENCE],
    image_size: "square",
    seed: 1234,
    ...overrides,
  };
}

// --- clients ------------------------------------------------------------------------------------

function rewrite(url) {
  if (url.startsWith("https://queue.fal.run/")) {
    return `${ORIGIN}/queue/${url.slice("https://queue.fal.run/".length)}`;
  }
  if (url.startsWith("https://fal.run/")) {
    return `${ORIGIN}/${url.slice("https://fal.run/".length)}`;
  }
  if (url.startsWith("https://rest.fal.ai/")) {
    return `${ORIGIN}/${url.slice("https://rest.fal.ai/".length)}`; // storage (uploads)
  }
  return url;
}

/** A client for `mode`, plus the log of what its fetch actually sent. */
function makeClient(mode) {
  const sent = [];
  const recordingFetch = (url, init = {}) => {
    const headers = Object.fromEntries(
      Object.entries(init.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]),
    );
    sent.push({ method: init.method, url: String(url), headers });
    return fetch(url, init);
  };
  const common = { credentials: "any-key", fetch: recordingFetch };
  const fal =
    mode === "middleware"
      ? createFalClient({
          ...common,
          requestMiddleware: async (request) => ({ ...request, url: rewrite(request.url) }),
        })
      : createFalClient({ ...common, proxyUrl: { url: PROXY_URL, when: "always" } });
  return { fal, sent };
}

// --- helpers ------------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function assertOutput(data, { seed = 1234, numImages = 1 } = {}) {
  assert.ok(data && typeof data === "object", `output is not an object: ${JSON.stringify(data)}`);
  assert.ok(Array.isArray(data.images), `no images in ${JSON.stringify(data)}`);
  assert.equal(data.images.length, numImages);
  for (const image of data.images) {
    assert.equal(typeof image.url, "string");
    assert.ok(image.url.length > 0);
    assert.match(image.content_type, /^image\//);
    assert.equal(image.width, 512);
    assert.equal(image.height, 512);
  }
  assert.equal(data.seed, seed);
  assert.equal(data.prompt, PROMPT);
  // The safety checker's verdict on noise from the tiny model is its own business: just the shape.
  assert.ok(Array.isArray(data.has_nsfw_concepts), JSON.stringify(data));
  assert.equal(data.has_nsfw_concepts.length, numImages);
  for (const flag of data.has_nsfw_concepts) assert.equal(typeof flag, "boolean");
  assert.equal(typeof data.timings, "object");
}

function stepMessages(logs) {
  return (logs ?? []).map((entry) => entry.message).filter((message) => STEP.test(message));
}

function assertLogEntry(entry) {
  assert.equal(typeof entry.message, "string");
  assert.ok(
    ["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"].includes(entry.level),
    `bad log level in ${JSON.stringify(entry)}`,
  );
  assert.equal(typeof entry.timestamp, "string");
  assert.ok(!Number.isNaN(Date.parse(entry.timestamp)), `bad timestamp in ${JSON.stringify(entry)}`);
}

/** The updates a subscribe saw: IN_PROGRESS ones carried step logs; the last one is COMPLETED. */
function assertSubscribeUpdates(updates, requestId) {
  const kinds = updates.map((update) => update.status);
  for (const update of updates) {
    assert.ok(
      ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(update.status),
      `unknown status ${JSON.stringify(update)}`,
    );
    assert.equal(update.request_id, requestId);
    if (update.status === "IN_QUEUE") assert.equal(typeof update.queue_position, "number");
  }
  assert.equal(kinds.at(-1), "COMPLETED", `updates: ${kinds.join(", ")}`);
  const withSteps = updates.filter(
    (update) => update.status === "IN_PROGRESS" && stepMessages(update.logs).length > 0,
  );
  assert.ok(
    withSteps.length > 0,
    `no IN_PROGRESS update carried "step N/8" logs: ${JSON.stringify(updates)}`,
  );
  for (const update of withSteps) update.logs.forEach(assertLogEntry);
}

/** The JSON an ApiError/ValidationError carries, for assertion messages. */
function describeError(error) {
  return JSON.stringify({
    name: error?.name,
    status: error?.status,
    message: error?.message,
    body: error?.body,
  });
}

async function rejection(promise) {
  try {
    const value = await promise;
    assert.fail(`expected a rejection, got ${JSON.stringify(value)}`);
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    return error;
  }
}

async function waitCompleted(fal, requestId, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await fal.queue.status(APP, { requestId, logs: true });
    if (status.status === "COMPLETED") return status;
    if (Date.now() > deadline) assert.fail(`${requestId} not COMPLETED: ${JSON.stringify(status)}`);
    await sleep(100);
  }
}

// --- scenarios ----------------------------------------------------------------------------------

for (const mode of MODES) {
  describe(`@fal-ai/client via ${mode}`, { timeout: 5 * SCENARIO_TIMEOUT_MS }, () => {
    let fal;
    let sent;
    let completedId; // a finished job, for the "cancel after completion" check

    before(() => {
      ({ fal, sent } = makeClient(mode));
    });

    after(() => {
      // However each mode is configured, it must have talked to us, in that mode's way.
      assert.ok(sent.length > 0, "the client sent nothing");
      for (const request of sent) {
        if (request.method === "PUT" && request.url.startsWith(`${ORIGIN}/storage/upload/`)) {
          // An upload's bytes go straight to the signed upload_url, without the key.
          assert.equal(request.headers.authorization, undefined, JSON.stringify(request));
          assert.match(request.url, /\?token=/, JSON.stringify(request));
          continue;
        }
        assert.equal(request.headers.authorization, "Key any-key", JSON.stringify(request));
        if (mode === "proxy") {
          assert.equal(request.url, PROXY_URL, JSON.stringify(request));
          assert.match(
            request.headers["x-fal-target-url"],
            /^https:\/\/((queue\.)?fal\.run\/fal-ai\/flux-2\/|rest\.fal\.ai\/storage\/)/,
            JSON.stringify(request),
          );
        } else {
          assert.ok(request.url.startsWith(`${ORIGIN}/`), JSON.stringify(request));
          assert.equal(request.headers["x-fal-target-url"], undefined, JSON.stringify(request));
        }
      }
    });

    test("fal.run returns {data, requestId}", { timeout: SCENARIO_TIMEOUT_MS }, async () => {
      const result = await fal.run(APP, { input: input() });
      assertOutput(result.data);
      assert.equal(typeof result.requestId, "string");
      assert.ok(result.requestId.length > 0, "empty requestId (x-fal-request-id header)");
      const run = sent.at(-1);
      assert.equal(run.method, "POST");
      const target = mode === "proxy" ? run.headers["x-fal-target-url"] : run.url;
      assert.ok(target.endsWith(`/${APP}`), target);
      assert.ok(!target.includes("/queue/") && !target.includes("queue.fal.run"), target);
    });

    test("fal.storage.upload and Blob inputs give URLs that edits accept", async () => {
      const png = gradientPng(96);
      const url = await fal.storage.upload(new Blob([png], { type: "image/png" }));
      assert.match(url, new RegExp(`^${ORIGIN.replace(/[.]/g, "\\.")}/uploads/[0-9a-f]{32}$`));
      const uploaded = await fetch(url, { headers: { authorization: "Key any-key" } });
      assert.equal(uploaded.status, 200);
      assert.deepEqual(Buffer.from(await uploaded.arrayBuffer()), png);
      const put = sent.find((request) => request.method === "PUT");
      assert.ok(put, "the bytes were never PUT");

      const byUrl = await fal.run(APP, { input: input({ image_urls: [url] }) });
      assertOutput(byUrl.data);
      // A Blob anywhere in the input is uploaded by the client before the run.
      const before = sent.filter((request) => request.method === "PUT").length;
      const byBlob = await fal.run(APP, {
        input: input({ image_urls: [new Blob([png], { type: "image/png" })] }),
      });
      assertOutput(byBlob.data);
      assert.equal(sent.filter((request) => request.method === "PUT").length, before + 1);
    });

    test("fal.subscribe, polling, with logs", { timeout: SCENARIO_TIMEOUT_MS }, async () => {
      const updates = [];
      let enqueued;
      const result = await fal.subscribe(APP, {
        input: input({ seed: 7 }),
        mode: "polling",
        pollInterval: 200, // the default is 500 ms; a tiny-model job can finish within that
        logs: true,
        onEnqueue: (requestId) => (enqueued = requestId),
        onQueueUpdate: (update) => updates.push(structuredClone(update)),
      });
      assertOutput(result.data, { seed: 7 });
      assert.equal(typeof enqueued, "string");
      assert.equal(result.requestId, enqueued);
      assertSubscribeUpdates(updates, enqueued);
      // Polling returns all lines so far: the final status has every step.
      assert.deepEqual(
        stepMessages(updates.at(-1).logs),
        Array.from({ length: 8 }, (_, k) => `step ${k + 1}/8`),
      );
    });

    test("fal.subscribe, streaming (SSE), with logs", { timeout: SCENARIO_TIMEOUT_MS }, async () => {
      const updates = [];
      let enqueued;
      const result = await fal.subscribe(APP, {
        input: input({ seed: 8 }),
        mode: "streaming",
        logs: true,
        onEnqueue: (requestId) => (enqueued = requestId),
        onQueueUpdate: (update) => updates.push(structuredClone(update)),
      });
      assertOutput(result.data, { seed: 8 });
      assert.equal(result.requestId, enqueued);
      assertSubscribeUpdates(updates, enqueued);
      // The client accumulates the new lines of each event; each step must appear exactly once.
      assert.deepEqual(
        stepMessages(updates.at(-1).logs),
        Array.from({ length: 8 }, (_, k) => `step ${k + 1}/8`),
      );
      const stream = sent.find((request) =>
        (request.headers["x-fal-target-url"] ?? request.url).includes(
          `/requests/${enqueued}/status/stream`,
        ),
      );
      assert.ok(stream, "the client never opened the status stream");
      assert.equal(stream.method, "GET");
    });

    test("fal.queue submit, status, result", { timeout: SCENARIO_TIMEOUT_MS }, async () => {
      const submitted = await fal.queue.submit(APP, { input: input({ seed: 9 }) });
      assert.equal(typeof submitted.request_id, "string");
      assert.ok(submitted.request_id.length > 0);
      for (const key of ["response_url", "status_url", "cancel_url"]) {
        assert.equal(typeof submitted[key], "string", `submit body lacks ${key}`);
      }
      const requestId = submitted.request_id;

      const seen = [];
      let status;
      const deadline = Date.now() + 60_000;
      for (;;) {
        status = await fal.queue.status(APP, { requestId, logs: true });
        seen.push(status);
        assert.equal(status.request_id, requestId);
        assert.equal(typeof status.response_url, "string"); // JS isQueueStatus needs it
        if (status.status === "IN_QUEUE") assert.equal(typeof status.queue_position, "number");
        else assert.ok("logs" in status, `no logs key in ${JSON.stringify(status)}`);
        if (status.status === "COMPLETED") break;
        assert.ok(Date.now() < deadline, `not COMPLETED in time: ${JSON.stringify(seen)}`);
        await sleep(100);
      }
      assert.equal(status.error, undefined, JSON.stringify(status));
      assert.equal(stepMessages(status.logs).length, 8, JSON.stringify(status.logs));
      status.logs.forEach(assertLogEntry);
      assert.equal(typeof status.metrics?.inference_time, "number", JSON.stringify(status));

      const quiet = await fal.queue.status(APP, { requestId, logs: false });
      assert.equal(quiet.status, "COMPLETED");
      assert.ok(!quiet.logs || quiet.logs.length === 0, `logs=0 gave ${JSON.stringify(quiet)}`);

      const result = await fal.queue.result(APP, { requestId });
      assertOutput(result.data, { seed: 9 });
      assert.equal(result.requestId, requestId);
      completedId = requestId;
    });

    test("fal.queue.cancel of a completed job: ApiError 400", async () => {
      assert.ok(completedId, "needs the job of the previous test");
      const error = await rejection(fal.queue.cancel(APP, { requestId: completedId }));
      assert.ok(error instanceof ApiError, describeError(error));
      assert.ok(!(error instanceof ValidationError), describeError(error));
      assert.equal(error.status, 400, describeError(error));
      assert.equal(error.body?.status, "ALREADY_COMPLETED", describeError(error));
    });

    test("fal.queue.streamStatus of a completed job: one COMPLETED event, then closed", async () => {
      assert.ok(completedId, "needs the job of the submit test");
      const stream = await fal.queue.streamStatus(APP, { requestId: completedId, logs: true });
      const events = [];
      stream.on("data", (event) => events.push(event));
      const last = await stream.done();
      assert.equal(last?.status, "COMPLETED", JSON.stringify(events));
      assert.equal(last.request_id, completedId);
      assert.deepEqual(events.map((event) => event.status), ["COMPLETED"]);
      assert.equal(stepMessages(last.logs).length, 8, JSON.stringify(last));
    });

    test("fal.queue.status of an unknown id: ApiError 404", async () => {
      const error = await rejection(fal.queue.status(APP, { requestId: randomUUID(), logs: true }));
      assert.ok(error instanceof ApiError, describeError(error));
      assert.equal(error.status, 404, describeError(error));
    });

    test("fal.queue.cancel of a queued job", { timeout: SCENARIO_TIMEOUT_MS }, async () => {
      // Four 4-image jobs: each is a batch of its own, so the last one waits behind the others.
      const ids = [];
      for (let k = 0; k < 4; k++) {
        const { request_id } = await fal.queue.submit(APP, {
          input: input({ seed: 100 + k, num_images: 4 }),
        });
        ids.push(request_id);
      }
      const last = ids.at(-1);
      try {
        const queued = await fal.queue.status(APP, { requestId: last, logs: true });
        assert.equal(queued.status, "IN_QUEUE", JSON.stringify(queued));
        assert.equal(typeof queued.queue_position, "number");

        await fal.queue.cancel(APP, { requestId: last }); // 202 CANCELLATION_REQUESTED

        const cancelled = await fal.queue.status(APP, { requestId: last, logs: true });
        assert.equal(cancelled.status, "COMPLETED", JSON.stringify(cancelled));
        assert.equal(typeof cancelled.error, "string", JSON.stringify(cancelled));
        assert.ok(cancelled.error.length > 0);
        assert.equal(typeof cancelled.error_type, "string", JSON.stringify(cancelled));
        assert.ok("logs" in cancelled);

        // The result of a failed job is its error (fal-protocol.md §5.1).
        const error = await rejection(fal.queue.result(APP, { requestId: last }));
        assert.ok(error instanceof ApiError, describeError(error));
        assert.ok(error.status >= 400, describeError(error));

        // Cancelling it again: it has completed now.
        const again = await rejection(fal.queue.cancel(APP, { requestId: last }));
        assert.ok(again instanceof ApiError, describeError(again));
        assert.equal(again.status, 400, describeError(again));
      } finally {
        // Leave the worker idle for whatever runs next: cancel the rest and wait for them.
        for (const requestId of ids) {
          await fal.queue.cancel(APP, { requestId }).catch(() => {});
        }
        for (const requestId of ids) await waitCompleted(fal, requestId);
      }
    });

    describe("validation errors from fal.run: ValidationError 422", () => {
      const cases = [
        {
          name: "guidance_scale 21",
          input: input({ guidance_scale: 21 }),
          field: "guidance_scale",
          type: "less_than_equal",
        },
        {
          name: "missing prompt",
          input: (({ prompt, ...rest }) => rest)(input()),
          field: "prompt",
          type: "missing",
        },
        {
          name: "num_images 5",
          input: input({ num_images: 5 }),
          field: "num_images",
          type: "less_than_equal",
        },
      ];
      for (const { name, input: body, field, type } of cases) {
        test(name, async () => {
          const error = await rejection(fal.run(APP, { input: body }));
          assert.ok(error instanceof ValidationError, describeError(error));
          assert.ok(error instanceof ApiError);
          assert.equal(error.status, 422, describeError(error));
          assert.ok(Array.isArray(error.body?.detail), describeError(error));
          const problem = error.body.detail.find(
            (item) => JSON.stringify(item.loc) === JSON.stringify(["body", field]),
          );
          assert.ok(problem, `no loc ["body", "${field}"] in ${describeError(error)}`);
          assert.equal(problem.type, type, describeError(error));
          assert.equal(typeof problem.msg, "string");
          assert.deepEqual(error.fieldErrors, error.body.detail);
          assert.equal(error.getFieldErrors(field).length, 1, describeError(error));
        });
      }
    });

    test(
      "fal.subscribe of an invalid input: ValidationError 422 from the result",
      { timeout: SCENARIO_TIMEOUT_MS },
      async () => {
        const updates = [];
        const error = await rejection(
          fal.subscribe(APP, {
            input: input({ guidance_scale: 21 }),
            mode: "polling",
            pollInterval: 200,
            onQueueUpdate: (update) => updates.push(update),
          }),
        );
        assert.ok(error instanceof ValidationError, describeError(error));
        assert.equal(error.status, 422, describeError(error));
        assert.equal(error.getFieldErrors("guidance_scale").length, 1, describeError(error));
        const last = updates.at(-1);
        assert.equal(last?.status, "COMPLETED", JSON.stringify(updates));
        assert.equal(typeof last.error, "string", JSON.stringify(last));
      },
    );
  });
}
