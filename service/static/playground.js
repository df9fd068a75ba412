// flux2-edit playground: drives this server's own fal queue API from the browser.
//
//   submit   POST queue/<endpoint id>   (the endpoint the user picks; flash/edit first)
//   follow   GET  queue/fal-ai/flux-2/requests/{id}/status/stream?logs=1   (SSE, read with fetch)
//   result   GET  queue/fal-ai/flux-2/requests/{id}
//   cancel   PUT  queue/fal-ai/flux-2/requests/{id}/cancel
//   preview  GET  files/{id}/preview…   (announced in the logs: "preview 1/3 (step 2/8): URL")
//
// Every URL is relative to the page, so the page works wherever the server is mounted. The
// endpoints are the queue submit routes of openapi.json; the form follows the picked endpoint's
// input schema (references only for edits, steps and acceleration for the base endpoints, LoRAs
// for the lora ones) and takes its defaults and ranges. fetch (not EventSource) reads
// the status stream because only fetch can send the Authorization header.
"use strict";

(() => {
  const ENDPOINT_ID = "fal-ai/flux-2/flash/edit";
  const APP_ID = "fal-ai/flux-2";
  const REQUESTS_URL = `queue/${APP_ID}/requests`;
  const MAX_LORAS = 3;
  let MAX_IMAGES = 4;
  const KEY_STORAGE = "flux2-edit.playground.apiKey";
  const POLL_MS = 500;
  // fal's presets (fal-protocol.md §13.3); only used for the labels of the size options.
  const PRESET_SIZES = {
    square_hd: [1024, 1024],
    square: [512, 512],
    portrait_4_3: [768, 1024],
    portrait_16_9: [576, 1024],
    landscape_4_3: [1024, 768],
    landscape_16_9: [1024, 576],
  };
  const STEP_RE = /\bstep\s+(\d+)\s*\/\s*(\d+)/i;
  const PREVIEW_RE = /^preview (\d+)\/(\d+) \(step (\d+)\/(\d+)\): (\S+)$/;
  const PREVIEWS = "3"; // X-Flux2-Previews: partial images asked for when "Live previews" is on
  const HEX_RE = /#(?:[0-9a-f]{6}|[0-9a-f]{3})\b/gi;

  const $ = (id) => document.getElementById(id);

  /** A DOM element: el("a", {href: "x", class: "y"}, "text", child, ...). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const state = {
    endpoint: ENDPOINT_ID,
    inputs: {}, // endpoint id -> its input schema (from openapi.json)
    props: null, // the picked endpoint's input properties
    images: [], // {url, label}
    defaults: {
      guidance_scale: 2.5,
      seed: "",
      image_size: "square_hd",
      width: 1024,
      height: 1024,
      num_images: 1,
      output_format: "png",
      enable_prompt_expansion: false,
      enable_safety_checker: true,
      sync_mode: false,
    },
    job: null,
    blobUrls: [],
    touched: new Set(), // ids of the fields the user changed (the schema's defaults skip them)
  };

  // ---------------------------------------------------------------- schema ----------------------

  async function loadSchema() {
    let spec;
    try {
      const response = await fetch("openapi.json", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      spec = await response.json();
    } catch (error) {
      console.warn("playground: openapi.json not readable; using built-in defaults", error);
      return;
    }
    const schemas = (spec.components && spec.components.schemas) || {};
    state.schemas = schemas;
    for (const [path, item] of Object.entries(spec.paths || {})) {
      if (!path.startsWith("/queue/") || path.includes("/requests/")) continue;
      // other routes take multipart or raw bodies: only the submit routes' JSON inputs count
      const ref = item.post?.requestBody?.content?.["application/json"]?.schema?.$ref;
      if (!ref) continue;
      const input = resolve(schemas, { $ref: ref });
      if (input.properties) state.inputs[path.slice("/queue/".length)] = input;
    }
    const ids = Object.keys(state.inputs);
    if (!ids.length) return;
    const select = $("endpoint");
    select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
    const wanted = new URLSearchParams(location.search).get("endpoint");
    selectEndpoint(ids.includes(wanted) ? wanted : ids.includes(ENDPOINT_ID) ? ENDPOINT_ID : ids[0]);
  }

  /** Make the form follow ``id``'s input schema. */
  function selectEndpoint(id) {
    const input = state.inputs[id];
    if (!input) return;
    state.endpoint = id;
    state.props = input.properties;
    $("endpoint").value = id;
    const props = input.properties;
    const edit = Boolean(props.image_urls);
    MAX_IMAGES = edit ? input["x-flux2-max-references"] || 4 : 0;
    $("images-field").hidden = !edit;
    if (edit && state.images.length > MAX_IMAGES) state.images = state.images.slice(0, MAX_IMAGES);
    $("steps-field").hidden = !props.num_inference_steps;
    $("acceleration-field").hidden = !props.acceleration;
    $("loras-field").hidden = !props.loras;
    $("endpoint-summary").textContent = edit ? `edit · up to ${MAX_IMAGES} references` : "text-to-image";
    $("submit").textContent = edit ? "Edit" : "Generate";
    applySchema(props, state.schemas);
    renderThumbs();
  }

  function resolve(schemas, schema) {
    if (schema && schema.$ref) return schemas[schema.$ref.split("/").pop()] || {};
    return schema || {};
  }

  function formatNumber(value) {
    return typeof value === "number" ? String(value) : value;
  }

  function setRange(input, prop) {
    if (!input || !prop) return;
    if (prop.minimum !== undefined) input.min = prop.minimum;
    if (prop.maximum !== undefined) input.max = prop.maximum;
    if (prop.exclusiveMinimum !== undefined) input.min = prop.exclusiveMinimum;
    if (prop.exclusiveMaximum !== undefined) input.max = prop.exclusiveMaximum;
  }

  function rangeHint(prop) {
    const parts = [];
    if (prop.default !== undefined && prop.default !== null) {
      parts.push(`default ${formatNumber(prop.default)}`);
    }
    if (prop.minimum !== undefined && prop.maximum !== undefined) {
      parts.push(`${prop.minimum}–${prop.maximum}`);
    }
    return parts.join(" · ");
  }

  function applySchema(props, schemas) {
    const d = state.defaults;
    for (const name of ["guidance_scale", "num_images", "num_inference_steps"]) {
      const prop = props[name];
      if (!prop) continue;
      setRange($(name), prop);
      if (name === "guidance_scale") setRange($("guidance_scale_range"), prop);
      if (prop.default !== undefined) d[name] = prop.default;
      $(`${name}-help`).textContent = rangeHint(prop);
    }
    if (props.prompt && props.prompt.maxLength) $("prompt").maxLength = props.prompt.maxLength;

    const size = props.image_size;
    if (size) {
      const variants = size.anyOf || size.oneOf || [size];
      const presets = [];
      for (const variant of variants) {
        const v = resolve(schemas, variant);
        if (Array.isArray(v.enum)) presets.push(...v.enum);
        if (v.properties && v.properties.width) {
          for (const side of ["width", "height"]) {
            const sideProp = v.properties[side];
            if (!sideProp) continue;
            setRange($(side), sideProp);
            if (sideProp.default !== undefined) d[side] = sideProp.default;
          }
          const w = v.properties.width;
          if (w && w.minimum !== undefined && w.maximum !== undefined) {
            $("size-range-help").textContent = `each side ${w.minimum}–${w.maximum} px`;
          }
        }
      }
      if (presets.length) {
        const select = $("image_size");
        const chosen = select.value;
        select.replaceChildren(
          ...presets.map((preset) => {
            const dims = PRESET_SIZES[preset];
            const label = dims ? `${preset} (${dims[0]}×${dims[1]})` : preset;
            return el("option", { value: preset }, label);
          }),
          el("option", { value: "custom" }, "custom…"),
        );
        if ([...select.options].some((option) => option.value === chosen)) select.value = chosen;
      }
      d.image_size = typeof size.default === "string" ? size.default : "square_hd";
      $("image_size-help").textContent = `default ${d.image_size}`;
    }

    const format = props.output_format;
    if (format && Array.isArray(format.enum)) {
      const chosen = $("output_format").value;
      $("output_format").replaceChildren(
        ...format.enum.map((value) => el("option", { value }, value)),
      );
      if (format.enum.includes(chosen)) $("output_format").value = chosen;
      if (format.default) d.output_format = format.default;
      $("output_format-help").textContent = `default ${d.output_format}`;
    }

    for (const name of ["enable_prompt_expansion", "enable_safety_checker", "sync_mode"]) {
      const prop = props[name];
      if (!prop) continue;
      if (typeof prop.default === "boolean") d[name] = prop.default;
      const desc = (prop.description || "").replace(/`/g, "");
      $(`${name}-help`).textContent = `${desc} (default ${d[name] ? "on" : "off"})`.trim();
    }
    if (props.acceleration && props.acceleration.default) {
      d.acceleration = props.acceleration.default;
      $("acceleration-help").textContent = `default ${d.acceleration}`;
    }
    if (props.seed && props.seed.description) $("seed").title = props.seed.description;
    applyDefaults();
  }

  /** Put the defaults in the fields; at load, only in those the user has not touched yet. */
  function applyDefaults(all) {
    const d = state.defaults;
    const set = (id, prop, value) => {
      if (all === true || !state.touched.has(id)) $(id)[prop] = value;
    };
    set("guidance_scale", "value", d.guidance_scale);
    set("guidance_scale_range", "value", $("guidance_scale").value);
    set("seed", "value", d.seed);
    set("image_size", "value", d.image_size);
    set("width", "value", d.width);
    set("height", "value", d.height);
    set("num_images", "value", d.num_images);
    set("output_format", "value", d.output_format);
    if (d.num_inference_steps !== undefined) set("num_inference_steps", "value", d.num_inference_steps);
    if (d.acceleration !== undefined) set("acceleration", "value", d.acceleration);
    for (const name of ["enable_prompt_expansion", "enable_safety_checker", "sync_mode"]) {
      set(name, "checked", d[name]);
    }
    onSizeChange();
    if (all === true) clearInvalid();
  }

  function onSizeChange() {
    const custom = $("image_size").value === "custom";
    $("custom-size").hidden = !custom;
    $("width").required = custom;
    $("height").required = custom;
  }

  // ---------------------------------------------------------------- reference images ------------

  function imagesError(message) {
    const box = $("images-error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function renderThumbs() {
    const list = $("image-list");
    list.replaceChildren(
      ...state.images.map((image, i) =>
        el(
          "li",
          { "data-index": i },
          el("img", {
            src: image.url,
            alt: `Reference image ${i + 1}: ${image.label}`,
            // A URL this browser cannot load may still be fine for the server (an internal host).
            onerror: (event) => event.target.closest("li").classList.add("broken"),
          }),
          el("span", { class: "thumb-label", title: image.label }, image.label),
          el(
            "button",
            {
              type: "button",
              "aria-label": `Remove reference image ${i + 1} (${image.label})`,
              title: "Remove",
              onclick: () => removeImage(i),
            },
            "×",
          ),
        ),
      ),
    );
    const full = state.images.length >= MAX_IMAGES;
    $("image-count").textContent = `${state.images.length} of ${MAX_IMAGES}`;
    $("add-url").disabled = full;
    $("image-url").disabled = full;
    $("choose-files").disabled = full;
  }

  function addImage(url, label) {
    if (state.images.length >= MAX_IMAGES) {
      imagesError(`At most ${MAX_IMAGES} reference images; remove one first.`);
      return false;
    }
    state.images.push({ url, label });
    imagesError("");
    renderThumbs();
    return true;
  }

  function removeImage(index) {
    state.images.splice(index, 1);
    renderThumbs();
    imagesError("");
    const buttons = $("image-list").querySelectorAll("button");
    const next = buttons[Math.min(index, buttons.length - 1)];
    (next || $("choose-files")).focus();
  }

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function addFiles(files) {
    for (const file of files) {
      if (!file.type.startsWith("image/")) {
        imagesError(`${file.name || "That file"} is not an image.`);
        continue;
      }
      if (state.images.length >= MAX_IMAGES) {
        imagesError(`At most ${MAX_IMAGES} reference images; the rest were left out.`);
        break;
      }
      try {
        addImage(await readAsDataUrl(file), file.name || `pasted ${file.type}`);
      } catch (error) {
        imagesError(`Could not read ${file.name}: ${error}`);
      }
    }
  }

  function isImageUrl(text) {
    return /^(https?:\/\/\S+|data:image\/[\w.+-]+;base64,\S+)$/i.test(text.trim());
  }

  function addUrlFromField() {
    const field = $("image-url");
    const url = field.value.trim();
    if (!url) {
      field.focus();
      return;
    }
    if (!isImageUrl(url)) {
      imagesError("Enter an http(s):// URL or a data:image/…;base64 URI.");
      field.setAttribute("aria-invalid", "true");
      field.focus();
      return;
    }
    field.removeAttribute("aria-invalid");
    const label = url.startsWith("data:") ? "data: URI" : url.split("/").pop() || url;
    if (addImage(url, label)) field.value = "";
  }

  function setUpImageInputs() {
    const files = $("image-files");
    $("choose-files").addEventListener("click", () => files.click());
    files.addEventListener("change", async () => {
      await addFiles([...files.files]);
      files.value = "";
    });
    $("add-url").addEventListener("click", addUrlFromField);
    $("image-url").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        addUrlFromField();
      }
    });

    const zone = $("dropzone");
    const highlight = (on) => zone.classList.toggle("dragover", on);
    zone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      highlight(true);
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      highlight(true);
    });
    zone.addEventListener("dragleave", () => highlight(false));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      highlight(false);
      const dropped = [...event.dataTransfer.files];
      if (dropped.length) {
        addFiles(dropped);
        return;
      }
      const text = event.dataTransfer.getData("text/uri-list") || event.dataTransfer.getData("text");
      const url = (text || "").split("\n").find((line) => line && !line.startsWith("#"));
      if (url && isImageUrl(url)) addImage(url.trim(), url.trim().split("/").pop());
    });

    document.addEventListener("paste", (event) => {
      const data = event.clipboardData;
      if (!data) return;
      const pasted = [...data.files].filter((f) => f.type.startsWith("image/"));
      if (pasted.length) {
        event.preventDefault();
        addFiles(pasted);
        return;
      }
      const target = event.target;
      const typing = target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement;
      const text = data.getData("text");
      if (!typing && text && isImageUrl(text)) {
        event.preventDefault();
        addImage(text.trim(), text.startsWith("data:") ? "data: URI" : text.trim().split("/").pop());
      }
    });
  }

  // ---------------------------------------------------------------- API key ---------------------

  function apiKey() {
    return $("api_key").value.trim();
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Key ${key}` } : {};
  }

  function setUpKey() {
    let stored = "";
    try {
      stored = localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      stored = "";
    }
    $("api_key").value = stored;
    if (stored) $("key-box").open = true;
    $("api_key").addEventListener("input", () => {
      try {
        if (apiKey()) localStorage.setItem(KEY_STORAGE, apiKey());
        else localStorage.removeItem(KEY_STORAGE);
      } catch {
        /* storage disabled: the key lives only in the field */
      }
    });
    $("forget-key").addEventListener("click", () => {
      $("api_key").value = "";
      try {
        localStorage.removeItem(KEY_STORAGE);
      } catch {
        /* nothing stored */
      }
      $("api_key").focus();
    });
  }

  // ---------------------------------------------------------------- the form --------------------

  function clearInvalid() {
    for (const node of document.querySelectorAll("[aria-invalid]")) {
      node.removeAttribute("aria-invalid");
    }
    for (const node of document.querySelectorAll(".thumbs li.invalid")) {
      node.classList.remove("invalid");
    }
  }

  function buildInput() {
    const props = state.props || { image_urls: {} };
    const input = {
      prompt: $("prompt").value,
      guidance_scale: Number($("guidance_scale").value),
      num_images: Number($("num_images").value),
      output_format: $("output_format").value,
      enable_prompt_expansion: $("enable_prompt_expansion").checked,
      enable_safety_checker: $("enable_safety_checker").checked,
      sync_mode: $("sync_mode").checked,
    };
    const size = $("image_size").value;
    input.image_size =
      size === "custom"
        ? { width: Number($("width").value), height: Number($("height").value) }
        : size;
    const seed = $("seed").value.trim();
    if (seed !== "") input.seed = Number(seed);
    if (props.image_urls) input.image_urls = state.images.map((image) => image.url);
    if (props.num_inference_steps) input.num_inference_steps = Number($("num_inference_steps").value);
    if (props.acceleration) input.acceleration = $("acceleration").value;
    if (props.loras) {
      input.loras = [];
      for (let i = 0; i < MAX_LORAS; i++) {
        const path = $(`lora-path-${i}`).value.trim();
        if (path) input.loras.push({ path, scale: Number($(`lora-scale-${i}`).value || 1) });
      }
    }
    return input;
  }

  function renderSwatches() {
    const colours = [...new Set(($("prompt").value.match(HEX_RE) || []).map((c) => c.toUpperCase()))];
    $("swatches").replaceChildren(
      ...colours.slice(0, 12).map((colour) => {
        const chip = el("span", { class: "chip", "aria-hidden": "true" });
        chip.style.background = colour;
        return el("li", {}, chip, el("code", {}, colour));
      }),
    );
  }

  function onSubmit(event) {
    event.preventDefault();
    if (state.job) return;
    clearInvalid();
    imagesError("");
    if (MAX_IMAGES > 0 && !state.images.length) {
      imagesError("Add at least one reference image.");
      $("choose-files").focus();
      return;
    }
    if (!$("edit-form").reportValidity()) return;
    runJob(buildInput());
  }

  // ---------------------------------------------------------------- a job -----------------------

  function setRunning(running) {
    $("submit").disabled = running;
    const edit = MAX_IMAGES > 0;
    $("submit").textContent = running ? (edit ? "Editing…" : "Generating…") : edit ? "Edit" : "Generate";
    $("cancel").hidden = !running;
    $("cancel").disabled = !running;
    $("edit-form").setAttribute("aria-busy", running ? "true" : "false");
  }

  function resetOutput() {
    for (const url of state.blobUrls) URL.revokeObjectURL(url);
    state.blobUrls = [];
    $("placeholder").hidden = true;
    $("error-box").hidden = true;
    $("error-box").classList.remove("notice");
    $("result").hidden = true;
    $("result-images").replaceChildren();
    $("logs").textContent = "";
    $("request-id").textContent = "";
    $("elapsed").textContent = "";
    const box = $("progress-box");
    box.hidden = false;
    box.classList.remove("done", "failed");
    box.dataset.seen = "";
    box.dataset.step = "";
    $("progress").removeAttribute("value");
    $("preview-box").hidden = true;
    $("preview").removeAttribute("src");
    $("preview-caption").textContent = "";
  }

  /** Show the newest preview the logs announce (fetched with the key, as outputs are). */
  async function showPreview(job, entry) {
    const match = PREVIEW_RE.exec(entry.message || "");
    if (!match || job.shownPreviews.has(match[5])) return;
    job.shownPreviews.add(match[5]);
    const index = Number(match[1]);
    const src = await displayUrl(job, match[5]);
    if (state.job !== job || index < job.previewIndex) return; // a later one is already up
    job.previewIndex = index;
    $("preview").src = src;
    $("preview-caption").textContent = `preview ${match[1]}/${match[2]} after step ${match[3]}/${match[4]}`;
    $("preview-box").hidden = false;
  }

  function setStatusText(text) {
    $("status-text").textContent = text;
  }

  function timeOf(entry) {
    const match = /T(\d\d:\d\d:\d\d(?:\.\d{1,3})?)/.exec(entry.timestamp || "");
    return match ? match[1] : "";
  }

  function onStatus(job, status, { replaceLogs = false } = {}) {
    const box = $("progress-box");
    const seen = new Set((box.dataset.seen || "").split(" ").filter(Boolean));
    seen.add(status.status);
    box.dataset.seen = [...seen].join(" ");
    if (Array.isArray(status.logs)) {
      if (replaceLogs) job.logs = status.logs.slice();
      else job.logs.push(...status.logs);
      const pre = $("logs");
      pre.textContent = job.logs
        .map((entry) => [timeOf(entry), entry.level, entry.message].filter(Boolean).join("  "))
        .join("\n");
      pre.scrollTop = pre.scrollHeight;
      for (const entry of job.logs) {
        const match = STEP_RE.exec(entry.message || "");
        if (match) job.step = [Number(match[1]), Number(match[2])];
        if (PREVIEW_RE.test(entry.message || "")) showPreview(job, entry);
      }
    }
    const progress = $("progress");
    if (job.step) {
      progress.max = job.step[1];
      progress.value = job.step[0];
      box.dataset.step = `${job.step[0]}/${job.step[1]}`;
    }
    if (status.status === "IN_QUEUE") {
      setStatusText(`In queue (position ${status.queue_position ?? 0})`);
    } else if (status.status === "IN_PROGRESS") {
      setStatusText(job.step ? `Running: step ${job.step[0]}/${job.step[1]}` : "Running…");
    } else if (status.status === "COMPLETED") {
      job.completedStatus = status;
      if (!status.error) {
        if (!job.step) {
          progress.max = 1;
          progress.value = 1;
        }
        const secs = status.metrics && status.metrics.inference_time;
        const steps = job.step ? `${job.step[1]} steps` : "done";
        setStatusText(
          `Completed: ${steps}${typeof secs === "number" ? ` in ${secs.toFixed(2)} s` : ""}`,
        );
        box.classList.add("done");
      } else {
        setStatusText(`Ended with an error (${status.error_type || "error"})`);
        box.classList.add("failed");
      }
    }
  }

  async function* sseData(body, signal) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      while (!signal.aborted) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) yield data; // ": ping" comments carry no data
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function readBody(response) {
    const text = await response.text();
    try {
      return JSON.parse(text);
    } catch {
      return { detail: text || response.statusText };
    }
  }

  class HttpError extends Error {
    constructor(what, response, body) {
      super(`${what}: HTTP ${response.status}`);
      this.what = what;
      this.status = response.status;
      this.body = body;
      this.errorType = (body && body.error_type) || response.headers.get("x-fal-error-type");
    }
  }

  async function followStatus(job) {
    const base = `${REQUESTS_URL}/${encodeURIComponent(job.id)}`;
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    try {
      const response = await fetch(`${base}/status/stream?logs=1`, {
        headers,
        signal: job.abort.signal,
        cache: "no-store",
      });
      if (!response.ok) throw new HttpError("Status stream", response, await readBody(response));
      for await (const data of sseData(response.body, job.abort.signal)) {
        const status = JSON.parse(data);
        onStatus(job, status);
        if (status.status === "COMPLETED") return;
      }
    } catch (error) {
      if (error.name === "AbortError" || error instanceof HttpError) throw error;
      console.warn("playground: status stream broke off; polling instead", error);
    }
    // The stream ended early (a proxy cut it, the network blinked): poll until COMPLETED.
    for (;;) {
      const response = await fetch(`${base}/status?logs=1`, {
        headers: authHeaders(),
        signal: job.abort.signal,
        cache: "no-store",
      });
      const status = await readBody(response);
      if (!response.ok) throw new HttpError("Status", response, status);
      onStatus(job, status, { replaceLogs: true });
      if (status.status === "COMPLETED") return;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  async function runJob(input) {
    resetOutput();
    const job = {
      id: null,
      abort: new AbortController(),
      started: performance.now(),
      logs: [],
      step: null,
      input,
      trustedOrigins: new Set([location.origin]),
      shownPreviews: new Set(),
      previewIndex: 0,
    };
    state.job = job;
    setRunning(true);
    setStatusText("Submitting…");
    const tick = setInterval(() => {
      $("elapsed").textContent = `${((performance.now() - job.started) / 1000).toFixed(1)} s`;
    }, 100);
    try {
      const previews = $("live_previews").checked ? { "X-Flux2-Previews": PREVIEWS } : {};
      const response = await fetch(`queue/${state.endpoint}`, {
        method: "POST",
        headers: {
          ...authHeaders(),
          ...previews,
          "Content-Type": "application/json",
          Accept: "application/json",
        },
        body: JSON.stringify(input),
        signal: job.abort.signal,
      });
      const submitted = await readBody(response);
      if (!response.ok) throw new HttpError("Submit", response, submitted);
      job.id = submitted.request_id;
      $("request-id").textContent = job.id;
      try {
        job.trustedOrigins.add(new URL(submitted.response_url).origin);
      } catch {
        /* no response_url: only this page's origin gets the key */
      }
      onStatus(job, submitted);
      await followStatus(job);
      const result = await fetch(`${REQUESTS_URL}/${encodeURIComponent(job.id)}`, {
        headers: authHeaders(),
        signal: job.abort.signal,
        cache: "no-store",
      });
      const output = await readBody(result);
      if (!result.ok) throw new HttpError("Result", result, output);
      await showResult(job, output);
    } catch (error) {
      if (error.name === "AbortError") {
        showError("Cancelled", "The request was stopped before it was submitted.", [], true);
        setStatusText("Cancelled");
      } else if (error instanceof HttpError) {
        showHttpError(error);
      } else {
        showError("Network error", String((error && error.message) || error), []);
        setStatusText("Failed");
      }
    } finally {
      clearInterval(tick);
      $("elapsed").textContent = `${((performance.now() - job.started) / 1000).toFixed(1)} s`;
      if (state.job === job) {
        state.job = null;
        setRunning(false);
      }
      refreshServerState();
    }
  }

  async function cancelJob() {
    const job = state.job;
    if (!job) return;
    $("cancel").disabled = true;
    if (!job.id) {
      job.abort.abort();
      return;
    }
    setStatusText("Cancelling…");
    try {
      const response = await fetch(`${REQUESTS_URL}/${encodeURIComponent(job.id)}/cancel`, {
        method: "PUT",
        headers: authHeaders(),
      });
      const body = await readBody(response);
      if (response.status === 202) setStatusText("Cancellation requested…");
      else if (body && body.status === "ALREADY_COMPLETED") setStatusText("Already completed");
      else setStatusText(`Cancel answered HTTP ${response.status}`);
    } catch (error) {
      setStatusText(`Cancel failed: ${error}`);
    }
  }

  // ---------------------------------------------------------------- errors ----------------------

  const STATUS_TITLES = {
    400: "Bad request",
    401: "Unauthorized: check the API key",
    403: "Forbidden",
    404: "Not found",
    413: "Request too large",
    422: "Invalid input",
    429: "The server is busy",
    499: "Cancelled",
    500: "Server error",
    503: "Service unavailable",
    504: "Timed out",
  };

  function locText(loc) {
    const parts = (Array.isArray(loc) ? loc : [loc]).slice();
    if (parts[0] === "body" && parts.length > 1) parts.shift();
    return parts.reduce(
      (text, part) => (typeof part === "number" ? `${text}[${part}]` : text ? `${text}.${part}` : String(part)),
      "",
    );
  }

  function shortInput(value) {
    if (value === undefined || value === null) return null;
    const text = typeof value === "string" ? value : JSON.stringify(value);
    if (text.length <= 80) return text;
    return `${text.slice(0, 60)}… (${text.length} characters)`;
  }

  function markInvalid(loc) {
    if (!Array.isArray(loc)) return;
    const parts = loc[0] === "body" ? loc.slice(1) : loc;
    const field = parts[0];
    if (field === "image_urls") {
      const item = $("image-list").querySelector(`li[data-index="${Number(parts[1])}"]`);
      if (item) item.classList.add("invalid");
      return;
    }
    if (field === "loras" && parts.length > 1) {
      const path = $(`lora-path-${Number(parts[1])}`);
      if (path) path.setAttribute("aria-invalid", "true");
      return;
    }
    if (field === "image_size" && $("image_size").value === "custom" && parts[1]) {
      const side = $(String(parts[1]));
      if (side) side.setAttribute("aria-invalid", "true");
      return;
    }
    const node = typeof field === "string" ? $(field) : null;
    if (node) node.setAttribute("aria-invalid", "true");
  }

  function showError(title, message, items, notice = false) {
    const box = $("error-box");
    box.classList.toggle("notice", notice);
    $("error-title").textContent = title;
    $("error-message").textContent = message || "";
    $("error-message").hidden = !message;
    $("error-list").replaceChildren(...items);
    $("error-list").hidden = !items.length;
    box.hidden = false;
    $("progress-box").classList.add("failed");
    const progress = $("progress");
    if (!progress.hasAttribute("value")) progress.value = 0; // stop the "working" animation
  }

  function showHttpError(error) {
    const body = error.body || {};
    const cancelled = error.status === 499 || error.errorType === "client_cancelled";
    const name = STATUS_TITLES[error.status] || (error.status >= 500 ? "Server error" : "Error");
    const title = `${name} (HTTP ${error.status}${error.errorType ? `, ${error.errorType}` : ""})`;
    const detail = body.detail;
    let message = "";
    const items = [];
    if (Array.isArray(detail)) {
      message =
        detail.length === 1 ? "The server rejected one input:" : "The server rejected these inputs:";
      for (const problem of detail) {
        const loc = locText(problem.loc);
        const input = shortInput(problem.input);
        items.push(
          el(
            "li",
            {},
            loc ? el("code", {}, loc) : null,
            loc ? ": " : null,
            problem.msg || JSON.stringify(problem),
            problem.type ? el("span", { class: "hint" }, ` (${problem.type})`) : null,
            input !== null ? el("div", { class: "hint" }, `input: ${input}`) : null,
          ),
        );
        markInvalid(problem.loc);
      }
    } else if (typeof detail === "string") {
      message = detail;
    } else if (detail !== undefined) {
      message = JSON.stringify(detail);
    } else {
      message = JSON.stringify(body);
    }
    if (error.status === 401) {
      $("key-box").open = true;
      $("api_key").setAttribute("aria-invalid", "true");
    }
    showError(cancelled ? "Cancelled" : title, message, items, cancelled);
    if (cancelled) setStatusText("Cancelled");
    else if (!$("status-text").textContent.startsWith("Ended")) setStatusText(`${error.what} failed`);
  }

  // ---------------------------------------------------------------- the result ------------------

  async function displayUrl(job, url) {
    if (url.startsWith("data:") || url.startsWith("blob:")) return url;
    let origin;
    try {
      origin = new URL(url, location.href).origin;
    } catch {
      return url;
    }
    // Output files need the key when keys are on: fetch them with it (only from this server).
    const headers = job.trustedOrigins.has(origin) ? authHeaders() : {};
    try {
      const response = await fetch(url, { headers, cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const blobUrl = URL.createObjectURL(await response.blob());
      state.blobUrls.push(blobUrl);
      return blobUrl;
    } catch (error) {
      console.warn("playground: could not fetch", url, error);
      return url;
    }
  }

  function formatBytes(bytes) {
    if (typeof bytes !== "number") return null;
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(2)} MB`;
  }

  function shortenDataUris(key, value) {
    return typeof value === "string" && value.startsWith("data:") && value.length > 100
      ? `${value.slice(0, 60)}… (${value.length} characters)`
      : value;
  }

  async function showResult(job, output) {
    $("preview-box").hidden = true; // the real thing replaces the preview
    const images = Array.isArray(output.images) ? output.images : [];
    const flags = Array.isArray(output.has_nsfw_concepts) ? output.has_nsfw_concepts : [];
    const items = await Promise.all(
      images.map(async (image, i) => {
        const src = await displayUrl(job, image.url);
        const flagged = flags[i] === true;
        const ext = (image.content_type || "").split("/").pop() || job.input.output_format;
        const name = image.file_name || `flux2-edit-${output.seed}-${i}.${ext}`;
        return el(
          "li",
          {},
          el(
            "figure",
            {},
            el("img", {
              src,
              alt: `Edited image ${i + 1}${flagged ? " (flagged by the safety checker)" : ""}`,
              width: image.width,
              height: image.height,
            }),
            el(
              "figcaption",
              {},
              el(
                "a",
                {
                  class: "download",
                  href: src,
                  download: name,
                  title: name,
                  "aria-label": `Download edited image ${i + 1} (${name})`,
                },
                "Download",
              ),
              image.width && image.height ? el("span", {}, `${image.width}×${image.height}`) : null,
              image.content_type ? el("span", {}, image.content_type) : null,
              formatBytes(image.file_size) ? el("span", {}, formatBytes(image.file_size)) : null,
              flagged ? el("span", { class: "badge" }, "flagged by the safety checker") : null,
            ),
          ),
        );
      }),
    );
    $("result-images").replaceChildren(...items);
    const flagged = flags.filter((f) => f === true).length;
    if (flagged) {
      showError(
        "Flagged by the safety checker",
        `${flagged} of ${images.length} image${images.length === 1 ? " was" : "s were"} flagged ` +
          "as NSFW and returned black.",
        [],
        true,
      );
      $("progress-box").classList.remove("failed");
    }
    $("result-seed").textContent = String(output.seed);
    const timings = Object.entries(output.timings || {}).map(
      ([name, secs]) => `${name} ${typeof secs === "number" ? secs.toFixed(3) : secs} s`,
    );
    timings.push(`end to end ${((performance.now() - job.started) / 1000).toFixed(2)} s`);
    $("result-timings").textContent = timings.join(" · ");
    $("result-prompt").textContent = output.prompt ?? "";
    $("result-json").textContent = JSON.stringify(output, shortenDataUris, 2);
    $("result").hidden = false;
  }

  // ---------------------------------------------------------------- server state ----------------

  async function refreshServerState() {
    const pill = $("server-state");
    try {
      const response = await fetch("ready", { cache: "no-store" });
      const body = await response.json();
      const text = body.worker || body.status || `HTTP ${response.status}`;
      pill.textContent = text;
      pill.className = `pill ${response.ok ? (body.worker === "busy" ? "busy" : "ready") : body.worker === "starting" ? "starting" : "down"}`;
    } catch {
      pill.textContent = "unreachable";
      pill.className = "pill down";
    }
  }

  // ---------------------------------------------------------------- wiring ----------------------

  function init() {
    setUpImageInputs();
    setUpKey();
    renderThumbs();
    $("edit-form").addEventListener("submit", onSubmit);
    $("cancel").addEventListener("click", cancelJob);
    $("reset").addEventListener("click", () => applyDefaults(true));
    $("image_size").addEventListener("change", onSizeChange);
    $("endpoint").addEventListener("change", () => selectEndpoint($("endpoint").value));
    $("guidance_scale_range").addEventListener("input", () => {
      $("guidance_scale").value = $("guidance_scale_range").value;
    });
    $("guidance_scale").addEventListener("input", () => {
      $("guidance_scale_range").value = $("guidance_scale").value;
    });
    $("prompt").addEventListener("input", renderSwatches);
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        $("edit-form").requestSubmit();
      }
    });
    $("reuse-seed").addEventListener("click", () => {
      $("seed").value = $("result-seed").textContent;
      $("seed").focus();
    });
    for (const node of $("edit-form").querySelectorAll("input, select, textarea")) {
      const touch = () => {
        node.removeAttribute("aria-invalid");
        if (node.id) state.touched.add(node.id);
      };
      node.addEventListener("input", touch);
      node.addEventListener("change", touch);
    }
    onSizeChange();
    renderSwatches();
    refreshServerState();
    loadSchema().finally(() => document.body.setAttribute("data-schema", "loaded"));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
