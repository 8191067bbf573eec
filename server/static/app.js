"use strict";
// The chat page: streams /v1/chat/completions (SSE) into the log, renders
// replies as Markdown (markdown.js), and aborts the fetch on Stop, which
// closes the connection so the server cancels the generation and frees its
// slot. With a JSON schema in its box, it asks for replies that fit it
// (response_format json_schema) and shows them as JSON; with a server that
// speculates, the stats line shows how many drafted tokens were kept.
const $ = (id) => document.getElementById(id);
// images: data: URLs attached to the next message.
const state = { messages: [], controller: null, model: null, images: [] };
const SETTINGS = ["system", "temperature", "max-tokens", "json-schema"];

function setStatus(s) {
  // Tests and styles key off this: "idle" or "streaming".
  document.body.dataset.state = s;
  $("send").disabled = s === "streaming";
  $("stop").hidden = s !== "streaming";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || "HTTP " + response.status;
  } catch (_) {
    return "HTTP " + response.status;
  }
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    if (!r.ok) throw new Error(await errorText(r));
    const card = (await r.json()).data[0];
    state.model = card.id;
    $("model").textContent = "Model: " + card.id +
      (card.max_model_len ? " · context " + card.max_model_len : "");
  } catch (e) {
    $("model").textContent = "Cannot list models: " + e.message;
  }
}

async function pollHealth() {
  try {
    const h = await (await fetch("/health")).json();
    $("health").textContent = "Slots busy " + h.slots_busy + "/" + h.slots +
      (h.queued ? " · " + h.queued + " queued" : "");
  } catch (_) {
    $("health").textContent = "Server unreachable";
  }
}

function addMessage(role) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? state.model || "assistant" : role;
  const body = document.createElement("div");
  body.className = "body";
  const stats = document.createElement("div");
  stats.className = "stats";
  el.append(who, body, stats);
  $("log").append(el);
  return { el, body, stats };
}

function scrollDown() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

// Server-sent events as they arrive: yields each event's data.
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let m;
    while ((m = buf.match(/\r\n|\r|\n/))) {
      // A lone "\r" at the end may be the first half of "\r\n".
      if (m[0] === "\r" && m.index === buf.length - 1) break;
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue; // a keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let v = colon < 0 ? "" : line.slice(colon + 1);
      if (v.startsWith(" ")) v = v.slice(1);
      if (field === "data") data.push(v);
    }
  }
  if (data.length) yield data.join("\n");
}

function statsLine(s) {
  const parts = [s.tokens + (s.tokens === 1 ? " token" : " tokens")];
  // Decode rate: the tokens after the first over the time since it came
  // (the first one's wait is prompt processing, shown separately).
  if (s.tokens > 1 && s.last > s.first) {
    parts.push(((s.tokens - 1) / ((s.last - s.first) / 1000)).toFixed(1) + " tok/s");
  }
  if (s.first !== null) parts.push("first token " + Math.round(s.first - s.start) + " ms");
  // The server's usage.speculative: drafted tokens the model kept.
  if (s.draft && s.draft.draft_tokens) {
    const d = s.draft;
    const pct = Math.round((100 * d.accepted_tokens) / d.draft_tokens);
    parts.push("draft accepted " + d.accepted_tokens + "/" + d.draft_tokens + " (" + pct + "%)");
  }
  if (s.finish) parts.push(s.finish);
  return parts.join(" · ");
}

function showAttached() {
  $("attached").replaceChildren(...state.images.map((url) => {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "attached image";
    return img;
  }));
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

// response_format for the schema box: null when it is empty; throws, with
// the parser's reason, when it is not JSON.
function responseFormat() {
  const text = $("json-schema").value.trim();
  if (!text) return null;
  let schema;
  try {
    schema = JSON.parse(text);
  } catch (e) {
    throw new Error("JSON schema: " + e.message);
  }
  return { type: "json_schema", json_schema: { name: "page", schema, strict: true } };
}

async function send(text) {
  const images = state.images;
  state.images = [];
  showAttached();
  // With images, OpenAI's content parts: the images, then the text.
  const content = images.length
    ? images.map((url) => ({ type: "image_url", image_url: { url } }))
        .concat([{ type: "text", text }])
    : text;
  state.messages.push({ role: "user", content });
  const mine = addMessage("user");
  if (images.length) {
    const row = document.createElement("div");
    row.className = "images";
    for (const url of images) {
      const img = document.createElement("img");
      img.src = url;
      img.alt = "sent image";
      row.append(img);
    }
    mine.body.append(row);
  }
  mine.body.append(document.createTextNode(text));
  const view = addMessage("assistant");
  view.el.classList.add("streaming");
  scrollDown();
  let format = null;
  let formatError = null;
  try {
    format = responseFormat();
  } catch (e) {
    formatError = e;
  }

  const system = $("system").value.trim();
  const body = {
    model: state.model,
    messages: (system ? [{ role: "system", content: system }] : []).concat(state.messages),
    stream: true,
    stream_options: { include_usage: true },
    temperature: parseFloat($("temperature").value),
    max_tokens: parseInt($("max-tokens").value, 10) || undefined,
  };
  if (format) body.response_format = format;
  const controller = new AbortController();
  state.controller = controller;
  setStatus("streaming");
  const s = { start: performance.now(), first: null, last: null, tokens: 0, finish: null, draft: null };
  let reply = "";
  let drawn = false;
  const draw = () => {
    drawn = false;
    if (format) {
      // JSON as it came: Markdown would read its * and _ as emphasis.
      const code = document.createElement("code");
      code.className = "language-json";
      code.textContent = reply;
      const pre = document.createElement("pre");
      pre.append(code);
      view.body.replaceChildren(pre);
    } else {
      view.body.innerHTML = renderMarkdown(reply);
    }
    view.stats.textContent = statsLine(s);
    scrollDown();
  };
  try {
    if (formatError) throw formatError;
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!r.ok) throw new Error(await errorText(r));
    for await (const data of sseData(r)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) {
        s.tokens = chunk.usage.completion_tokens;
        s.draft = chunk.usage.speculative || null;
      }
      for (const c of chunk.choices || []) {
        const d = c.delta || {};
        let piece = d.content || "";
        for (const call of d.tool_calls || []) {
          piece += "\n\n`" + call.function.name + "(" + call.function.arguments + ")`";
        }
        if (piece) {
          s.last = performance.now();
          if (s.first === null) s.first = s.last;
          s.tokens++;
          reply += piece;
          // One redraw per frame, however fast chunks come.
          if (!drawn) {
            drawn = true;
            requestAnimationFrame(draw);
          }
        }
        if (c.finish_reason) s.finish = c.finish_reason;
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      s.finish = "stopped";
    } else {
      view.el.classList.add("error");
      s.finish = "error: " + e.message;
    }
  } finally {
    state.controller = null;
    view.el.classList.remove("streaming");
    draw();
    // A stopped reply stays in the conversation as far as it got.
    if (reply) state.messages.push({ role: "assistant", content: reply });
    setStatus("idle");
    pollHealth();
  }
}

function restoreSettings() {
  for (const id of SETTINGS) {
    const v = localStorage.getItem("torchchat." + id);
    if (v !== null) $(id).value = v;
    $(id).addEventListener("change", () => localStorage.setItem("torchchat." + id, $(id).value));
  }
  const showTemp = () => ($("temperature-value").textContent = $("temperature").value);
  $("temperature").addEventListener("input", showTemp);
  showTemp();
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("attach").addEventListener("click", () => $("image-file").click());
$("image-file").addEventListener("change", async () => {
  for (const file of $("image-file").files) state.images.push(await readAsDataURL(file));
  $("image-file").value = "";
  showAttached();
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.messages = [];
  state.images = [];
  showAttached();
  $("log").replaceChildren();
  $("input").focus();
});
$("api-key").addEventListener("change", loadModel);

restoreSettings();
setStatus("idle");
loadModel();
pollHealth();
setInterval(pollHealth, 3000);
