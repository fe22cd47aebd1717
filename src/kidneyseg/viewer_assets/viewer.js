// kidneyseg slice viewer: three linked canvases over arrays embedded in the page.
// Written by kidneyseg.viewer; no network, no library. The page's <script id="meta"> holds the
// geometry and measurements; <script id="data-*"> hold base64 gzip-compressed uint8 arrays in
// canonical (z, y, x) order: z inferior->superior, y anterior->posterior, x right->left.
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("meta").textContent);
  const N = meta.shape; // [nz, ny, nx]
  const S = meta.spacing; // mm per canonical axis
  const BOX = meta.box; // CSS px: the largest side of a view
  const VIEWS = {
    // slice: the cursor axis this view cuts; row/col: the canvas axes; flip: superior on top
    axial: { slice: 0, row: 1, col: 2, flip: false },
    coronal: { slice: 1, row: 0, col: 2, flip: true },
    sagittal: { slice: 2, row: 0, col: 1, flip: true },
  };
  const state = {
    cursor: [N[0] >> 1, N[1] >> 1, N[2] >> 1],
    window: meta.windows[0].range,
    overlay: true,
    opacity: meta.opacity,
    crosshair: true,
    visible: meta.layers.map(() => true),
    scale: {},
  };
  let ct = null;
  let layers = [];
  let grayLut = new Uint8Array(256);

  function $(id) {
    return document.getElementById(id);
  }

  async function inflate(id) {
    const text = $(id).textContent.trim();
    const bin = atob(text);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  function updateLut() {
    const [lo, hi] = state.window;
    for (let c = 0; c < 256; c++) {
      const t = (meta.hu_of_code[c] - lo) / (hi - lo);
      grayLut[c] = Math.round(255 * Math.min(1, Math.max(0, t)));
    }
  }

  // One plane of a layer (at the layer's own resolution) as rows x cols values.
  function plane(layer, view) {
    const g = VIEWS[view];
    const sh = layer.shape;
    const f = layer.factor;
    const k = Math.min(Math.floor(state.cursor[g.slice] / f[g.slice]), sh[g.slice] - 1);
    const stride = [sh[1] * sh[2], sh[2], 1];
    const rows = sh[g.row];
    const cols = sh[g.col];
    const out = new Uint8Array(rows * cols);
    const base = k * stride[g.slice];
    for (let r = 0; r < rows; r++) {
      const src = base + (g.flip ? rows - 1 - r : r) * stride[g.row];
      const cs = stride[g.col];
      for (let c = 0; c < cols; c++) out[r * cols + c] = layer.data[src + c * cs];
    }
    return { values: out, rows: rows, cols: cols };
  }

  function paint(p, kind) {
    const img = new ImageData(p.cols, p.rows);
    const d = img.data;
    const v = p.values;
    for (let i = 0; i < v.length; i++) {
      const o = 4 * i;
      if (kind === "ct") {
        const g = grayLut[v[i]];
        d[o] = d[o + 1] = d[o + 2] = g;
        d[o + 3] = 255;
        continue;
      }
      const label = v[i];
      if (!label) continue;
      if (kind === "outline") {
        const r = Math.floor(i / p.cols);
        const c = i - r * p.cols;
        const inner =
          r > 0 && r < p.rows - 1 && c > 0 && c < p.cols - 1 &&
          v[i - 1] === label && v[i + 1] === label &&
          v[i - p.cols] === label && v[i + p.cols] === label;
        if (inner) continue;
      }
      const rgb = meta.colors[label] || [255, 0, 255];
      d[o] = rgb[0];
      d[o + 1] = rgb[1];
      d[o + 2] = rgb[2];
      d[o + 3] = 255;
    }
    const off = document.createElement("canvas");
    off.width = p.cols;
    off.height = p.rows;
    off.getContext("2d").putImageData(img, 0, 0);
    return off;
  }

  function drawLayer(ctx, layer, view, kind, scale) {
    const g = VIEWS[view];
    const off = paint(plane(layer, view), kind);
    const w = off.width * layer.factor[g.col] * S[g.col] * scale;
    const h = off.height * layer.factor[g.row] * S[g.row] * scale;
    ctx.drawImage(off, 0, 0, w, h);
  }

  function render() {
    for (const view of Object.keys(VIEWS)) {
      const g = VIEWS[view];
      const canvas = $(view);
      const scale = state.scale[view];
      const ctx = canvas.getContext("2d");
      const dpr = canvas.width / parseFloat(canvas.style.width);
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.imageSmoothingEnabled = true;
      drawLayer(ctx, ct, view, "ct", scale);
      ctx.imageSmoothingEnabled = false;
      if (state.overlay) {
        layers.forEach(function (layer, i) {
          // Fills fade with the opacity slider; outlines stay opaque so thin edges stay visible.
          ctx.globalAlpha = layer.style === "fill" ? state.opacity : 1;
          if (state.visible[i]) drawLayer(ctx, layer, view, layer.style, scale);
        });
        ctx.globalAlpha = 1;
      }
      if (state.crosshair) {
        const x = (state.cursor[g.col] + 0.5) * S[g.col] * scale;
        const r = g.flip ? N[g.row] - 1 - state.cursor[g.row] : state.cursor[g.row];
        const y = (r + 0.5) * S[g.row] * scale;
        ctx.strokeStyle = "rgba(0, 230, 255, 0.8)";
        ctx.lineWidth = 1;
        ctx.beginPath();
        ctx.moveTo(x, 0);
        ctx.lineTo(x, N[g.row] * S[g.row] * scale);
        ctx.moveTo(0, y);
        ctx.lineTo(N[g.col] * S[g.col] * scale, y);
        ctx.stroke();
      }
      const k = state.cursor[g.slice];
      canvas.dataset.slice = String(k);
      $("slider-" + view).value = String(k);
      $("label-" + view).textContent = view + " " + "zyx"[g.slice] + " = " + k + " / " + (N[g.slice] - 1);
    }
    showInfo();
  }

  function valueAt(layer, idx) {
    const f = layer.factor;
    const sh = layer.shape;
    const i = idx.map(function (v, a) {
      return Math.min(Math.floor(v / f[a]), sh[a] - 1);
    });
    return layer.data[(i[0] * sh[1] + i[1]) * sh[2] + i[2]];
  }

  function showInfo() {
    const c = state.cursor;
    const g = meta.geometry;
    const mm = [0, 1, 2].map(function (w) {
      return (g.offset[w] + g.matrix[w][0] * c[0] + g.matrix[w][1] * c[1] + g.matrix[w][2] * c[2]).toFixed(1);
    });
    const where = g.patient ? "LPS (" + mm.join(", ") + ") mm" : "(" + mm.join(", ") + ") mm from the first voxel";
    const hu = meta.has_ct ? ", CT \u2248 " + Math.round(meta.hu_of_code[valueAt(ct, c)]) + " HU" : "";
    const labels = layers.map(function (layer) {
      const v = valueAt(layer, c);
      return layer.name + ": " + (meta.label_names[v] || v);
    });
    $("info").textContent = "voxel (z, y, x) = (" + c.join(", ") + "), " + where + hu + "; " + labels.join("; ");
  }

  function setCursor(idx) {
    state.cursor = idx.map(function (v, a) {
      return Math.min(N[a] - 1, Math.max(0, Math.round(v)));
    });
    render();
  }

  function layout() {
    for (const view of Object.keys(VIEWS)) {
      const g = VIEWS[view];
      const w = N[g.col] * S[g.col];
      const h = N[g.row] * S[g.row];
      const scale = Math.min(BOX / w, BOX / h);
      state.scale[view] = scale;
      const canvas = $(view);
      const dpr = window.devicePixelRatio || 1;
      canvas.style.width = Math.round(w * scale) + "px";
      canvas.style.height = Math.round(h * scale) + "px";
      canvas.width = Math.round(w * scale * dpr);
      canvas.height = Math.round(h * scale * dpr);
      const slider = $("slider-" + view);
      slider.max = String(N[g.slice] - 1);
      slider.addEventListener("input", function () {
        const c = state.cursor.slice();
        c[g.slice] = parseInt(slider.value, 10);
        setCursor(c);
      });
      canvas.addEventListener("wheel", function (event) {
        event.preventDefault();
        const c = state.cursor.slice();
        c[g.slice] += event.deltaY < 0 ? 1 : -1;
        setCursor(c);
      }, { passive: false });
      const point = function (event) {
        const rect = canvas.getBoundingClientRect();
        const col = Math.floor((event.clientX - rect.left) / (S[g.col] * state.scale[view]));
        let row = Math.floor((event.clientY - rect.top) / (S[g.row] * state.scale[view]));
        if (g.flip) row = N[g.row] - 1 - row;
        const c = state.cursor.slice();
        c[g.col] = col;
        c[g.row] = row;
        setCursor(c);
      };
      canvas.addEventListener("pointerdown", point);
      canvas.addEventListener("pointermove", function (event) {
        if (event.buttons === 1) point(event);
      });
    }
  }

  function controls() {
    const select = $("window");
    meta.windows.forEach(function (w, i) {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = w.name;
      select.appendChild(option);
    });
    select.addEventListener("change", function () {
      state.window = meta.windows[parseInt(select.value, 10)].range;
      updateLut();
      render();
    });
    $("overlay").addEventListener("change", function (e) {
      state.overlay = e.target.checked;
      render();
    });
    $("crosshair").addEventListener("change", function (e) {
      state.crosshair = e.target.checked;
      render();
    });
    const opacity = $("opacity");
    opacity.value = String(Math.round(100 * state.opacity));
    opacity.addEventListener("input", function () {
      state.opacity = parseInt(opacity.value, 10) / 100;
      render();
    });
    meta.layers.forEach(function (layer, i) {
      const box = $("layer-" + i);
      if (box) box.addEventListener("change", function () {
        state.visible[i] = box.checked;
        render();
      });
    });
    document.querySelectorAll("tr.tumor-row").forEach(function (row) {
      const jump = function () {
        document.querySelectorAll("tr.tumor-row.selected").forEach(function (r) {
          r.classList.remove("selected");
        });
        row.classList.add("selected");
        setCursor(JSON.parse(row.dataset.index));
      };
      row.addEventListener("click", jump);
      row.addEventListener("keydown", function (e) {
        if (e.key === "Enter") jump();
      });
    });
  }

  async function main() {
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser lacks DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+)");
    }
    ct = { data: await inflate(meta.ct.id), shape: meta.ct.shape, factor: meta.ct.factor };
    for (const layer of meta.layers) {
      layers.push({
        name: layer.name, style: layer.style, shape: layer.shape, factor: layer.factor,
        data: await inflate(layer.id),
      });
    }
    updateLut();
    layout();
    controls();
    render();
    $("loading").hidden = true;
    window.kidneysegViewer = { state: state, meta: meta, render: render, setCursor: setCursor };
    document.body.dataset.ready = "true";
  }

  main().catch(function (error) {
    $("loading").textContent = "The viewer could not start: " + error.message;
    console.error(error);
  });
})();
