// The review page, keyboard first. Text from the dataset is only ever set with textContent.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (error) { /* not JSON */ }
    throw new Error(`${response.status} ${detail}`);
  }
  return response.json();
}

function el(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  if (text !== null) node.textContent = text;
  return node;
}

function fmt(value) { return value === null || value === undefined ? "–" : Number(value).toFixed(3); }

// ---------------------------------------------------------------- dashboard

function dashboard() {
  const interval = document.querySelector(".interval");
  if (interval) {
    const low = Number(interval.dataset.low), high = Number(interval.dataset.high);
    interval.querySelector("span").style.left = `${100 * low}%`;
    interval.querySelector("span").style.width = `${100 * (high - low)}%`;
    interval.querySelector("i").style.left = `${100 * Number(interval.dataset.estimate)}%`;
  }
  const invite = document.getElementById("invite");
  if (invite) {
    invite.addEventListener("click", async () => {
      document.getElementById("invite-url").textContent = (await api("/api/invite", {})).url;
    });
  }
}

// ---------------------------------------------------------------- review page

class Review {
  constructor(root) {
    this.root = root;
    this.queue = JSON.parse(root.dataset.queue);
    this.history = [];
    this.position = -1;
    this.sample = null;
    this.preview = null;      // the candidate shown in the removal panel
    this.before = false;      // removal panel shows the source
    this.overlays = {mask: false, region: false};  // object mask on the source, repainted region on the removal
    this.zoom = 1;
    this.flicker = null;
    this.slider = null;       // percent of the removal panel showing the source (before), or null: no slider
    this.peeked = null;       // {key, sample} of the next sample, fetched ahead
    this.reasons = {};
    for (const node of document.querySelectorAll("[data-reason]")) this.reasons[node.dataset.key] = node.dataset.reason;
    // Keys are handled one after another, in order: a fast typist's next key waits for the last decision.
    this.keys = Promise.resolve();
    document.addEventListener("keydown", (event) => {
      if (event.key === " ") event.preventDefault();
      this.keys = this.keys.then(() => this.key(event));
    });
  }

  async start() {
    const key = this.queue.start || (await api(`/api/next?${this.queue.query}`)).key;
    await this.go(key);
  }

  async go(key, fromHistory = false) {
    if (!key) { this.finished(); return; }
    const sample = !fromHistory && this.peeked && this.peeked.key === key ? this.peeked.sample
      : await api(`/api/sample/${encodeURIComponent(key)}`);
    if (!fromHistory) {
      this.history = this.history.slice(0, this.position + 1);
      this.history.push(key);
      this.position = this.history.length - 1;
    }
    this.show(sample);
    this.peek(key);
  }

  async peek(key) {
    const next = (await api(`/api/next?${this.queue.query}&after=${encodeURIComponent(key)}`)).key;
    if (!next || next === key) { this.peeked = null; return; }
    const sample = await api(`/api/sample/${encodeURIComponent(next)}`);
    this.peeked = {after: key, key: next, sample};
    for (const url of [sample.source, sample.mask, ...sample.candidates.flatMap((c) => [c.full, c.thumb])]) {
      new Image().src = url;
    }
  }

  finished() {
    this.sample = null;
    document.getElementById("main").replaceChildren();
    document.getElementById("candidates").replaceChildren();
    document.getElementById("done").hidden = false;
    document.getElementById("key").textContent = "";
  }

  candidateShown() {
    const candidates = this.sample.candidates;
    return candidates.find((c) => c.index === this.preview) || candidates.find((c) => c.chosen) || candidates[0];
  }

  show(sample) {
    this.sample = sample;
    this.preview = sample.chosen !== null ? sample.chosen : sample.shown;
    this.before = false;
    document.getElementById("done").hidden = true;
    document.getElementById("key").textContent = sample.key;
    document.getElementById("label").textContent = sample.label;
    const status = document.getElementById("status");
    status.className = sample.passed ? "pass" : "fail";
    const number = (index) => (sample.candidates.find((c) => c.index === index) || {number: "?"}).number;
    const distance = `${Math.abs(sample.margin).toFixed(2)} sd ${sample.passed ? "inside" : "outside"} the thresholds`;
    status.textContent = sample.passed
      ? `kept by the thresholds (candidate ${number(sample.chosen)}), ${distance}`
      : `rejected by the thresholds: ${sample.reason}, ${distance}`;
    const decisions = sample.decisions.map((d) =>
      `${d.mine ? "you" : d.reviewer}: ${d.action}${d.candidate !== null ? " " + number(d.candidate) : ""}${d.reason ? " (" + d.reason + ")" : ""}`);
    document.getElementById("decisions").textContent = decisions.length ? decisions.join(" · ") : "not decided yet";
    this.renderMain();
    this.renderCandidates();
  }

  panel(title, url, overlayUrl, id, overlayKind = null) {
    const figure = el("figure", {class: "panel", id});
    const viewport = el("div", {class: "viewport"});
    const stack = el("div", {class: "stack"});
    stack.append(el("img", {src: url, alt: title, class: "picture"}));
    if (overlayUrl) {
      const overlay = el("img", {src: overlayUrl, alt: "", class: `overlay ${overlayKind}`});
      overlay.hidden = !this.overlays[overlayKind];
      stack.append(overlay);
    }
    stack.style.zoom = this.zoom;
    viewport.append(stack);
    viewport.addEventListener("scroll", () => this.syncScroll(viewport));
    figure.append(viewport, el("figcaption", {}, title));
    return figure;
  }

  renderMain() {
    const sample = this.sample, candidate = this.candidateShown();
    const main = document.getElementById("main");
    const removal = this.panel(this.removalTitle(candidate), this.before ? sample.source : candidate.full,
      candidate.region, "removal", "region");
    if (this.slider !== null) {
      const before = el("img", {src: sample.source, alt: "before", class: "before"});
      removal.querySelector(".stack").append(before, el("span", {class: "divider"}));
      const range = el("input", {type: "range", min: "0", max: "100", value: String(this.slider), class: "slider"});
      range.addEventListener("input", () => this.slide(Number(range.value)));
      removal.querySelector("figcaption").before(range);
    }
    main.replaceChildren(this.panel("source", sample.source, sample.mask, "source", "mask"), removal,
      ...sample.panels.map((p) => this.panel(p.title, p.url, null, null)));
    if (this.slider !== null) this.slide(this.slider);
  }

  // The slider: the source over the removal, uncovered from the left up to ``percent``.
  slide(percent) {
    this.slider = Math.min(100, Math.max(0, percent));
    const before = document.querySelector("#removal .before");
    if (before) before.style.clipPath = `inset(0 ${100 - this.slider}% 0 0)`;
    const divider = document.querySelector("#removal .divider");
    if (divider) divider.style.left = `${this.slider}%`;
    const range = document.querySelector("#removal .slider");
    if (range) range.value = String(this.slider);
  }

  removalTitle(candidate) {
    const which = candidate.chosen ? "chosen removal" : `candidate ${candidate.number}`;
    if (this.before) return `before (source) · flicker of ${which}`;
    return this.slider === null ? `after: ${which}` : `before (left) | after (right): ${which}`;
  }

  renderCandidates() {
    const strip = document.getElementById("candidates");
    strip.replaceChildren(...this.sample.candidates.map((c) => {
      const figure = el("figure", {class: `candidate${c.chosen ? " chosen" : ""}${c.index === this.preview ? " previewed" : ""}`,
        "data-index": String(c.index)});
      const image = el("img", {src: c.thumb, alt: `candidate ${c.number}`});
      image.addEventListener("click", () => { this.preview = c.index; this.renderMain(); this.renderCandidates(); });
      const caption = el("figcaption");
      caption.append(el("kbd", {}, String(c.number)),
        el("span", {class: c.passed ? "pass" : "fail"}, c.passed ? " passes" : " fails"),
        el("span", {}, ` · combined ${fmt(c.combined)}`), c.chosen ? el("b", {}, " · chosen") : "");
      const table = el("table", {class: "scores"});
      for (const s of c.scores.filter((score) => score.value !== null || score.bound !== null)) {
        const row = el("tr", {class: s.passed === null ? "" : s.passed ? "pass" : "fail"});
        row.append(el("td", {}, s.name), el("td", {}, fmt(s.value)),
          el("td", {}, s.bound === null ? "" : `${s.op} ${fmt(s.bound)}`),
          el("td", {}, s.passed === null ? "" : s.passed ? "✓" : "✗"));
        table.append(row);
      }
      figure.append(image, caption, table);
      return figure;
    }));
  }

  syncScroll(source) {
    for (const viewport of document.querySelectorAll("#main .viewport")) {
      if (viewport !== source) { viewport.scrollLeft = source.scrollLeft; viewport.scrollTop = source.scrollTop; }
    }
  }

  setZoom(zoom) {
    this.zoom = Math.min(8, Math.max(1, zoom));
    for (const stack of document.querySelectorAll("#main .stack")) stack.style.zoom = this.zoom;
  }

  toggleFlicker() {
    if (this.flicker) { clearInterval(this.flicker); this.flicker = null; this.before = false; this.renderMain(); return; }
    this.flicker = setInterval(() => { this.before = !this.before; this.flip(); }, 500);
  }

  flip() {
    const candidate = this.candidateShown();
    const removal = document.querySelector("#removal .picture");
    if (!removal) return;
    removal.src = this.before ? this.sample.source : candidate.full;
    document.querySelector("#removal figcaption").textContent = this.removalTitle(candidate);
  }

  flash(text) { document.getElementById("flash").textContent = text; }

  async decide(action, extra = {}) {
    if (!this.sample) return;
    const key = this.sample.key;
    await api("/api/decide", {key, action, queue: this.queue.name, ...extra});
    this.flash(`${action}${extra.candidate !== undefined ? " " + extra.candidate : ""}${extra.reason ? " (" + extra.reason + ")" : ""}: ${key}`);
    await this.next();
  }

  async next() {
    if (this.position < this.history.length - 1) { this.position += 1; await this.go(this.history[this.position], true); return; }
    const key = this.sample ? this.sample.key : null;
    const next = this.peeked && this.peeked.after === key ? this.peeked.key : (await api(`/api/next?${this.queue.query}${key ? "&after=" + encodeURIComponent(key) : ""}`)).key;
    await this.go(next && next !== key ? next : null);
  }

  async key(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const k = event.key;
    const candidates = this.sample ? this.sample.candidates : [];
    try {
      if (k === "a") await this.decide("accept");
      else if (k >= "1" && k <= "9" && Number(k) <= candidates.length) await this.decide("pick", {candidate: candidates[Number(k) - 1].index});
      else if (this.reasons[k]) await this.decide("reject", {reason: this.reasons[k]});
      else if (k === " ") await this.decide("skip");
      else if (k === "u") {
        const undone = await api("/api/undo", {});
        this.flash(undone.key ? `undone: ${undone.action} on ${undone.key}` : "nothing to undo");
        if (undone.key) { this.peeked = null; await this.go(undone.key); }
      }
      else if (k === "ArrowRight") await this.next();
      else if (k === "ArrowLeft" && this.position > 0) { this.position -= 1; await this.go(this.history[this.position], true); }
      else if (k === "f") this.toggleFlicker();
      else if (k === "v") { this.slider = this.slider === null ? 50 : null; this.renderMain(); }
      else if ((k === "[" || k === "]") && this.slider !== null) this.slide(this.slider + (k === "]" ? 10 : -10));
      else if (k === "m" || k === "r") {
        const kind = k === "m" ? "mask" : "region";
        this.overlays[kind] = !this.overlays[kind];
        for (const o of document.querySelectorAll(`#main .overlay.${kind}`)) o.hidden = !this.overlays[kind];
      }
      else if (k === "+" || k === "=") this.setZoom(this.zoom * 2);
      else if (k === "-") this.setZoom(this.zoom / 2);
      else if (k === "0") this.setZoom(1);
      else if (k === "c" && candidates.length) {
        const at = candidates.findIndex((c) => c.index === this.preview);
        this.preview = candidates[(at + 1) % candidates.length].index;
        this.renderMain(); this.renderCandidates();
      }
    } catch (error) {
      this.flash(`error: ${error.message}`);
    }
  }
}

const root = document.getElementById("app");
if (root) new Review(root).start(); else dashboard();
