// detlab's prediction browser, inlined into report.html / compare.html by detlab/report/browser.py.
// Reads the JSON in <script id="browser-data">; draws every validation image with its ground truth
// (dashed) and each run's detections (solid) as SVG over the embedded picture. No network.
//
// Visibility rules (tests/test_report_browser.py checks the page against them):
//   detection shown  <=> score >= t, class filter passes, type filter is "all" or its type
//   ground truth shown <=> class filter passes, and (type filter is not "missed" or the box is missed)
//   missed at t      <=> found_at < t (found_at: best score of a detection that finds the box; null: ignored)
//   tile shown       <=> no filter is set, or it holds a shown detection, or (type filter is "all" or
//                        "missed") and it holds a shown ground-truth box
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("browser-data").textContent);
  const root = document.getElementById("browser");
  const $ = (sel) => root.querySelector(sel);
  const SVG = "http://www.w3.org/2000/svg";
  const ERROR_TYPES = ["localization", "classification", "both", "duplicate", "background"];
  const state = { t: data.score, cls: -1, type: "all", sort: "name" };

  const isMissed = (g, run) => g[5 + run] !== null && g[5 + run] < state.t;
  const classOk = (label) => state.cls < 0 || label === state.cls;
  const detShown = (d) => d[5] >= state.t && classOk(d[4]) && (state.type === "all" || data.types[d[6]] === state.type);
  const gtShown = (g, run) => classOk(g[4]) && (state.type !== "missed" || isMissed(g, run));
  const filtered = () => state.cls >= 0 || state.type !== "all";

  function errorsOf(im, run) {
    const wrong = im.det[run].filter((d) => d[5] >= state.t && classOk(d[4]) && ERROR_TYPES.includes(data.types[d[6]]));
    return wrong.length + im.gt.filter((g) => classOk(g[4]) && isMissed(g, run)).length;
  }

  function iou(a, b) {
    const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    if (w <= 0 || h <= 0) return 0;
    const inter = w * h;
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter);
  }

  // 1 - mean pairwise F1 of the runs' detections at t, matched greedily within a class at IoU >= 0.5.
  function disagreement(im) {
    const kept = im.det.map((ds) => ds.filter((d) => d[5] >= state.t));
    let sum = 0, pairs = 0;
    for (let a = 0; a < kept.length; a++) for (let b = a + 1; b < kept.length; b++) {
      const cand = [];
      kept[a].forEach((da, i) => kept[b].forEach((db, j) => {
        const v = da[4] === db[4] ? iou(da, db) : 0;
        if (v >= 0.5) cand.push([v, i, j]);
      }));
      cand.sort((x, y) => y[0] - x[0]);
      const usedA = new Set(), usedB = new Set();
      for (const [, i, j] of cand) if (!usedA.has(i) && !usedB.has(j)) { usedA.add(i); usedB.add(j); }
      const n = kept[a].length + kept[b].length;
      sum += n ? (2 * usedA.size) / n : 1;
      pairs++;
    }
    return pairs ? 1 - sum / pairs : 0;
  }

  function rect(svg, box, colour, cls, width) {
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", box[0]); r.setAttribute("y", box[1]);
    r.setAttribute("width", Math.max(box[2] - box[0], 1)); r.setAttribute("height", Math.max(box[3] - box[1], 1));
    r.setAttribute("stroke", colour); r.setAttribute("stroke-width", width);
    r.setAttribute("class", cls);
    svg.appendChild(r);
    return r;
  }

  function label(svg, box, text, colour, scale) {
    const size = 15 * scale, g = document.createElementNS(SVG, "g");
    const bg = document.createElementNS(SVG, "rect"), tx = document.createElementNS(SVG, "text");
    tx.textContent = text; tx.setAttribute("x", box[0] + 3 * scale); tx.setAttribute("y", Math.max(box[1], size) - 3 * scale);
    tx.setAttribute("font-size", size); tx.setAttribute("fill", data.ink[colour] || "#fff");
    bg.setAttribute("x", box[0]); bg.setAttribute("y", Math.max(box[1], size) - size);
    bg.setAttribute("width", (text.length * 0.6 + 0.8) * size); bg.setAttribute("height", size);
    bg.style.fill = colour; bg.setAttribute("class", "cap");
    g.append(bg, tx); svg.appendChild(g);
  }

  // One picture of one run: the image, its shown GT (dashed; missed ones thick) and detections.
  function picture(im, run, big) {
    const pic = document.createElement("div");
    pic.className = "pic";
    const img = document.createElement("img");
    img.src = data.images_src[im.src]; img.alt = im.name;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${im.w} ${im.h}`); svg.setAttribute("preserveAspectRatio", "none");
    const scale = big ? Math.max(im.w / 640, 0.5) : 1; // captions ~15 px on a picture shown near its size
    for (const g of im.gt) if (gtShown(g, run)) {
      const missed = isMissed(g, run);
      rect(svg, g, data.colours[g[4]], missed ? "gt missed" : "gt", (missed ? 3 : 1.5) * (big ? 1 : 0.8));
      if (big && missed) label(svg, g, `missed ${data.classes[g[4]]}`, data.colours[g[4]], scale);
    }
    const shown = im.det[run].filter(detShown).sort((a, b) => a[5] - b[5]); // best on top
    for (const d of shown) {
      const r = rect(svg, d, data.colours[d[4]], "det " + data.types[d[6]], big ? 2.5 : 1.5);
      r.appendChild(document.createElementNS(SVG, "title")).textContent =
        `${data.classes[d[4]]} ${d[5].toFixed(2)} (${data.type_names[d[6]]})`;
      if (big) label(svg, d, `${data.classes[d[4]]} ${d[5].toFixed(2)}`, data.colours[d[4]], scale);
    }
    pic.append(img, svg);
    return [pic, shown.length];
  }

  function tile(im) {
    const el = document.createElement("figure");
    el.className = "tile";
    el.dataset.name = im.name;
    let dets = 0, gts = 0;
    const row = document.createElement("div");
    row.className = "pics";
    data.runs.forEach((runName, run) => {
      const [pic, n] = picture(im, run, false);
      if (data.runs.length > 1) pic.dataset.run = runName;
      dets += n; gts = Math.max(gts, im.gt.filter((g) => gtShown(g, run)).length);
      row.appendChild(pic);
    });
    const cap = document.createElement("figcaption");
    const errs = data.runs.map((_, r) => errorsOf(im, r)).join(" / ");
    cap.textContent = `${im.name} · GT ${im.gt.length} · shown ${dets} det · errors ${errs}` +
      (data.runs.length > 1 ? ` · disagreement ${disagreement(im).toFixed(2)}` : "");
    el.append(row, cap);
    el.addEventListener("click", () => openFull(im));
    const hits = dets + (state.type === "all" || state.type === "missed" ? gts : 0);
    return !filtered() || hits > 0 ? el : null;
  }

  function openFull(im) {
    const box = $(".full-body");
    box.replaceChildren();
    data.runs.forEach((runName, run) => {
      const fig = document.createElement("figure");
      fig.appendChild(picture(im, run, true)[0]);
      const cap = document.createElement("figcaption");
      cap.textContent = `${data.runs.length > 1 ? runName + ": " : ""}${im.name} — ${errorsOf(im, run)} errors at score ≥ ${state.t.toFixed(2)}`;
      fig.appendChild(cap);
      box.appendChild(fig);
    });
    $(".full").hidden = false;
  }

  function render() {
    const order = data.images.slice();
    const key = {
      name: (im) => 0,
      errors: (im) => -Math.max(...data.runs.map((_, r) => errorsOf(im, r))),
      disagreement: (im) => -disagreement(im),
    }[state.sort];
    const keys = new Map(order.map((im) => [im, key(im)]));
    order.sort((a, b) => keys.get(a) - keys.get(b) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const grid = $(".tiles");
    grid.classList.toggle("multi", data.runs.length > 1);
    grid.replaceChildren(...order.map(tile).filter(Boolean));
    $(".shown").textContent = `${grid.children.length} of ${data.images.length} images`;
    $(".score-value").textContent = state.t.toFixed(2);
  }

  function options(select, pairs) {
    for (const [value, text] of pairs) select.add(new Option(text, value));
  }
  options($(".class"), [[-1, "all classes"], ...data.classes.map((c, i) => [i, c])]);
  options($(".type"), [["all", "all boxes"], ...data.types.map((t, i) => [t, data.type_names[i]]).filter(([t]) => t !== "ignored"), ["missed", "missed (GT)"]]);
  options($(".sort"), [["name", "file name"], ["errors", "most errors"], ...(data.runs.length > 1 ? [["disagreement", "most disagreement"]] : [])]);
  const slider = $(".score");
  slider.value = state.t;
  slider.addEventListener("input", () => { state.t = parseFloat(slider.value); render(); });
  $(".class").addEventListener("change", (e) => { state.cls = parseInt(e.target.value, 10); render(); });
  $(".type").addEventListener("change", (e) => { state.type = e.target.value; render(); });
  $(".sort").addEventListener("change", (e) => { state.sort = e.target.value; render(); });
  $(".full").addEventListener("click", () => { $(".full").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $(".full").hidden = true; });
  render();
})();
