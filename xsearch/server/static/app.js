// xsearch page: plain JS, no build step. Talks to /api only; every value from the server goes in as text.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const IMAGE_EXT = /\.(jpe?g|png|webp|gif|bmp|tiff?)$/i;
  const state = {
    collection: "", q: "", file: null, fileKind: null, similarTo: null, modality: "", folder: "", tag: "",
    since: "", until: "", camera: "", sort: "score", threshold: 0, hits: [], shown: [], selected: -1, viewing: -1, seq: 0,
  };

  // ---- auth: ?token=... once, then kept in sessionStorage (and a same-site cookie for <img>/<audio>) ----------
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("xsearch_token", params.get("token"));
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
  }
  const token = sessionStorage.getItem("xsearch_token");
  if (token) document.cookie = `xsearch_token=${encodeURIComponent(token)}; path=/api; SameSite=Strict`;

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(path, Object.assign({}, options, { headers }));
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error || `${res.status} ${res.statusText}`);
    return body;
  }

  const el = (tag, attrs = {}, ...kids) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") node.textContent = v; else if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const kid of kids) node.append(kid);
    return node;
  };
  const svg = (paths) => {
    const s = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    s.setAttribute("viewBox", "0 0 24 24");
    s.innerHTML = paths; // static markup only
    return s;
  };
  const AUDIO_ICON = '<path d="M9 18V5l12-2v13"/><circle cx="6" cy="18" r="3"/><circle cx="18" cy="16" r="3"/>';
  const coll = () => `collection=${encodeURIComponent(state.collection)}`;
  const thumbUrl = (id, size = 320) => `/api/items/${id}/thumbnail?size=${size}&${coll()}`;
  const fileUrl = (id) => `/api/items/${id}/file?${coll()}`;
  const momentUrl = (h) => `${fileUrl(h.id)}#t=${h.t || 0}`; // a video at its best-matching second
  const baseName = (p) => p.split(/[\\/]/).pop();
  const hasImage = (h) => h.modality === "image" || (h.modality === "text" && IMAGE_EXT.test(h.path));

  function status(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  // ---- collections and facets --------------------------------------------------------------------------------
  async function loadCollections() {
    const data = await api("/api/collections");
    const sel = $("collection");
    sel.replaceChildren(...data.collections.map((c) => el("option", { value: c.name, text: `${c.name} · ${c.items}` })));
    const saved = sessionStorage.getItem("xsearch_collection");
    state.collection = data.collections.some((c) => c.name === saved) ? saved : data.default || "";
    sel.value = state.collection;
    await loadFacets();
  }

  async function loadFacets() {
    if (!state.collection) return;
    const f = await api(`/api/collections/${encodeURIComponent(state.collection)}/facets`);
    const folder = $("folder"), tag = $("tag");
    folder.replaceChildren(el("option", { value: "", text: "All folders" }),
      ...f.folders.map((x) => el("option", { value: x.path, title: x.path, text: `${shortPath(x.path)} (${x.count})` })));
    tag.replaceChildren(el("option", { value: "", text: f.tags.length ? "All tags" : "No tags" }),
      ...f.tags.map((x) => el("option", { value: x.tag, text: `${x.tag} (${x.count})` })));
    tag.disabled = !f.tags.length;
    state.folder = state.tag = "";
  }
  const shortPath = (p) => { const parts = p.split(/[\\/]/).filter(Boolean); return parts.slice(-2).join("/") || p; };

  // ---- searching -----------------------------------------------------------------------------------------------
  function filterQuery() {
    const p = new URLSearchParams();
    p.set("collection", state.collection);
    p.set("k", "60");
    if (state.modality) p.set("modality", state.modality);
    if (state.folder) p.append("under", state.folder);
    if (state.tag) p.append("tag", state.tag);
    if (state.since) p.set("since", state.since);
    if (state.until) p.set("until", state.until + "T23:59:59");
    if (state.camera) p.set("camera", state.camera);
    if (state.sort !== "score") p.set("sort", state.sort);
    return p;
  }

  async function search() {
    const seq = ++state.seq;
    const p = filterQuery();
    let request;
    if (state.similarTo !== null) {
      request = api(`/api/items/${state.similarTo.id}/similar?${p}`);
    } else if (state.file) {
      const form = new FormData();
      form.append(state.fileKind, state.file, state.file.name);
      if (state.q) form.append("q", state.q);
      request = api(`/api/search?${p}`, { method: "POST", body: form });
    } else if (state.q) {
      p.set("q", state.q);
      request = api(`/api/search?${p}`);
    } else {
      state.hits = [];
      render();
      status("");
      return;
    }
    status("Searching…");
    try {
      const data = await request;
      if (seq !== state.seq) return; // a newer search is on its way
      state.hits = data.hits;
      state.selected = -1;
      render();
      const hidden = state.hits.length - state.shown.length;
      status(`${state.shown.length} result${state.shown.length === 1 ? "" : "s"}` +
        (hidden ? ` (${hidden} below min score)` : "") + ` · ${data.took_ms.toFixed(0)} ms`);
    } catch (err) {
      if (seq !== state.seq) return;
      state.hits = [];
      render();
      status(err.message, true);
    }
  }

  let timer = 0;
  const searchSoon = (delay = 220) => { clearTimeout(timer); timer = setTimeout(search, delay); };

  // ---- rendering -----------------------------------------------------------------------------------------------
  function card(hit, index) {
    const node = el("div", { class: "card", role: "option", "aria-selected": "false", "data-index": index,
                             "data-id": hit.id, "data-path": hit.path, title: hit.path });
    let visual;
    if (hasImage(hit) || hit.modality === "video") { // a video shows its frame at the matching second
      visual = el("img", { class: "thumb", loading: "lazy", alt: baseName(hit.path), src: thumbUrl(hit.id) });
    } else if (hit.modality === "audio") {
      visual = el("div", { class: "thumb audio" }, svg(AUDIO_ICON));
    } else {
      visual = el("div", { class: "thumb text", text: (hit.text || "").slice(0, 400) });
    }
    node.append(visual);
    if (hit.modality !== "image") { // pictures speak for themselves; label only sounds, texts and captions
      const kind = hasImage(hit) ? "caption" : hit.modality === "video" ? `video · ${(hit.t || 0).toFixed(1)} s` : hit.modality;
      node.append(el("span", { class: "kind", text: kind }));
    }
    node.append(el("div", { class: "info" }, el("span", { class: "name", text: baseName(hit.path) }),
                    el("span", { class: "badge", text: hit.score.toFixed(3) })));
    if (hit.modality === "audio") {
      const player = el("audio", { controls: "", preload: "none", src: fileUrl(hit.id) });
      player.addEventListener("click", (e) => e.stopPropagation());
      node.append(player);
    }
    node.addEventListener("click", () => { select(index); openViewer(index); });
    return node;
  }

  // the score as its badge shows it (3 decimals), so a card reading "0.090" stays at a 0.09 threshold
  const shownScore = (hit) => Number(hit.score.toFixed(3));

  function render() {
    state.shown = state.threshold > 0 ? state.hits.filter((h) => shownScore(h) >= state.threshold) : state.hits.slice();
    $("grid").replaceChildren(...state.shown.map(card));
    $("empty").hidden = state.shown.length > 0 || !!(state.q || state.file || state.similarTo);
  }

  function select(index) {
    const cards = $("grid").children;
    if (!cards.length) return;
    index = Math.max(0, Math.min(index, cards.length - 1));
    if (cards[state.selected]) cards[state.selected].setAttribute("aria-selected", "false");
    state.selected = index;
    cards[index].setAttribute("aria-selected", "true");
    cards[index].scrollIntoView({ block: "nearest" });
  }

  function columns() {
    const cards = $("grid").children;
    if (cards.length < 2) return 1;
    const top = cards[0].offsetTop;
    let n = 0;
    while (n < cards.length && cards[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  // ---- the larger view -------------------------------------------------------------------------------------------
  async function openViewer(index) {
    const hit = state.shown[index];
    if (!hit) return;
    state.viewing = index;
    $("viewer").hidden = false;
    const stage = $("viewerStage");
    if (hasImage(hit)) {
      stage.replaceChildren(el("img", { src: thumbUrl(hit.id, 1280), alt: baseName(hit.path), id: "viewerImage" }));
    } else if (hit.modality === "audio") {
      stage.replaceChildren(el("audio", { controls: "", autoplay: "", src: fileUrl(hit.id) }));
    } else if (hit.modality === "video") {
      stage.replaceChildren(el("video", { controls: "", autoplay: "", muted: "", src: momentUrl(hit), id: "viewerVideo" }));
    } else {
      stage.replaceChildren(el("div", { class: "textview", text: hit.text || "" }));
    }
    $("viewerName").textContent = baseName(hit.path);
    $("viewerScore").textContent = `score ${hit.score.toFixed(3)} · #${hit.rank}`;
    $("viewerText").textContent = hit.text || "";
    $("viewerTags").replaceChildren();
    $("viewerFacts").replaceChildren();
    $("openOriginal").href = fileUrl(hit.id);
    try {
      const item = await api(`/api/items/${hit.id}?${coll()}`);
      if (state.viewing !== index) return;
      $("viewerText").textContent = item.text || "";
      $("viewerTags").replaceChildren(...item.tags.map((t) => {
        const chip = el("span", { class: "chip", title: `score ${t.score.toFixed(3)} · filter by this tag`, text: t.tag });
        chip.addEventListener("click", () => { closeViewer(); setTag(t.tag); });
        return chip;
      }));
      const facts = [["folder", item.folder], ["modified", item.mtime && item.mtime.replace("T", " ")],
        ["size", item.size && `${(item.size / 1024).toFixed(0)} KB`],
        ["pixels", item.width && `${item.width} × ${item.height}`],
        ["duration", item.duration && `${item.duration.toFixed(1)} s`], ["id", String(item.id)]];
      $("viewerFacts").replaceChildren(...facts.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    } catch (err) {
      $("viewerText").textContent = err.message;
    }
  }

  function closeViewer() {
    $("viewer").hidden = true;
    $("viewerStage").replaceChildren();
    state.viewing = -1;
  }

  function moreLikeThis() {
    const hit = state.shown[state.viewing];
    if (!hit) return;
    closeViewer();
    clearFile(false);
    state.similarTo = hit;
    showChip(baseName(hit.path), hasImage(hit) ? thumbUrl(hit.id, 160) : "", "like");
    $("q").value = "";
    state.q = "";
    search();
  }

  // ---- file queries (drop or pick) ----------------------------------------------------------------------------------
  function useFile(file) {
    if (!file) return;
    const kind = /^audio\//.test(file.type) || /\.(wav|flac|ogg|oga|opus|mp3|aiff?)$/i.test(file.name) ? "audio" : "image";
    state.similarTo = null;
    state.file = file;
    state.fileKind = kind;
    showChip(file.name, kind === "image" ? URL.createObjectURL(file) : "", kind);
    search();
  }

  function showChip(name, src, kind) {
    $("queryChip").hidden = false;
    $("queryChipName").textContent = kind === "like" ? `like ${name}` : name;
    const img = $("queryChipImg");
    img.hidden = !src;
    if (src) img.src = src;
    $("q").placeholder = kind === "like" ? "" : "Add words to refine (fused query)…";
  }

  function clearFile(rerun = true) {
    state.file = null;
    state.fileKind = null;
    state.similarTo = null;
    $("queryChip").hidden = true;
    $("q").placeholder = "Describe what you are looking for…  (/ to focus, drop a photo or sound anywhere)";
    if (rerun) search();
  }

  function setTag(tag) {
    $("tag").value = tag;
    state.tag = tag;
    search();
  }

  // ---- wiring ------------------------------------------------------------------------------------------------------
  $("q").addEventListener("input", (e) => {
    state.q = e.target.value.trim();
    if (state.similarTo) clearFile(false);
    searchSoon();
  });
  $("searchForm").addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(timer); search(); });
  $("fileInput").addEventListener("change", (e) => useFile(e.target.files[0]));
  $("queryChipClear").addEventListener("click", () => clearFile());
  $("collection").addEventListener("change", async (e) => {
    state.collection = e.target.value;
    sessionStorage.setItem("xsearch_collection", state.collection);
    clearFile(false);
    await loadFacets().catch((err) => status(err.message, true));
    search();
  });
  $("modality").addEventListener("click", (e) => {
    const btn = e.target.closest("button");
    if (!btn) return;
    for (const b of $("modality").children) b.setAttribute("aria-pressed", String(b === btn));
    state.modality = btn.dataset.m;
    search();
  });
  for (const id of ["folder", "tag", "since", "until", "camera", "sort"]) {
    $(id).addEventListener("change", (e) => { state[id] = e.target.value; search(); });
  }
  $("threshold").addEventListener("input", (e) => {
    state.threshold = parseFloat(e.target.value);
    $("thresholdValue").textContent = state.threshold.toFixed(2);
    render();
    const hidden = state.hits.length - state.shown.length;
    if (state.hits.length) status(`${state.shown.length} shown` + (hidden ? ` · ${hidden} below min score` : ""));
  });
  $("viewerClose").addEventListener("click", closeViewer);
  $("viewerPrev").addEventListener("click", () => step(-1));
  $("viewerNext").addEventListener("click", () => step(1));
  $("moreLike").addEventListener("click", moreLikeThis);
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer") || e.target === $("viewerStage")) closeViewer(); });

  function step(delta) {
    const next = state.viewing + delta;
    if (next >= 0 && next < state.shown.length) { select(next); openViewer(next); }
  }

  document.addEventListener("keydown", (e) => {
    const typing = e.target === $("q");
    if (!$("viewer").hidden) {
      if (e.key === "Escape") { e.preventDefault(); closeViewer(); }
      else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
      else if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
      return;
    }
    if (/INPUT|SELECT|TEXTAREA/.test(e.target.tagName) && !typing && e.key !== "Escape") return; // sliders, dates
    if (e.key === "/" && !typing && !/INPUT|SELECT/.test(e.target.tagName)) { e.preventDefault(); $("q").focus(); return; }
    if (e.key === "Escape") {
      if (typing && $("q").value) { $("q").value = ""; state.q = ""; searchSoon(0); }
      else if (state.file || state.similarTo) clearFile();
      else $("q").blur();
      return;
    }
    if (!state.shown.length) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns() };
    if (e.key in moves && (!typing || e.key === "ArrowDown")) {
      e.preventDefault();
      if (typing) $("q").blur();
      select(state.selected < 0 ? 0 : state.selected + moves[e.key]);
    } else if (e.key === "Enter" && !typing && state.selected >= 0) {
      e.preventDefault();
      openViewer(state.selected);
    }
  });

  // drag and drop anywhere on the page
  let depth = 0;
  const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (e) => { if (hasFiles(e)) { depth++; $("dropzone").hidden = false; } });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("dropzone").hidden = true; } });
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("dropzone").hidden = true;
    if (e.dataTransfer && e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });

  loadCollections().then(() => {
    const q = params.get("q");
    if (q) { $("q").value = q; state.q = q; search(); }
  }).catch((err) => status(err.message, true));
})();
