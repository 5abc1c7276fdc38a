// convkit-viz interactive page. Every frame, number and hover relation was computed in Rust and
// embedded as JSON; this script only draws them and handles the controls.
(function () {
  'use strict';
  const D = JSON.parse(document.getElementById('convkit-data').textContent);
  const S = D.scene;
  const cs = D.cell_px;
  const margin = Math.max(cs / 2, 8);
  const canvas = document.getElementById('stage');
  const ctx = canvas.getContext('2d');
  ctx.font = '12px monospace';
  // Wide enough for the panels and the labels above them.
  let right = S.width * cs;
  for (const P of S.panels) right = Math.max(right, P.x * cs + ctx.measureText(P.label).width + 4);
  const W = Math.ceil(right + 2 * margin);
  const H = Math.ceil(S.height * cs + 2 * margin);
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  canvas.style.width = W + 'px';
  canvas.style.height = H + 'px';

  const hover = new Map();
  for (const h of D.hover) hover.set(h.cell.join(','), h);

  const state = { frame: 0, playing: true, speed: 1, lit: null, timer: null, drawn: false };
  const el = (id) => document.getElementById(id);

  function rgb(c) { return 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')'; }
  function cellRect(p, r, c) {
    const P = S.panels[p];
    return [Math.round(margin + (P.x + c) * cs), Math.round(margin + (P.y + r) * cs), cs, cs];
  }
  function fillOf(cell) {
    if (cell.kind === 'heat') return D.heat[cell.level || 0];
    return D.fills[cell.kind] || null;
  }

  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, W, H);
    ctx.lineWidth = 2;
    for (const L of S.lines) {
      ctx.strokeStyle = rgb(L.colour);
      ctx.beginPath();
      ctx.moveTo(margin + L.from[0] * cs, margin + L.from[1] * cs);
      ctx.lineTo(margin + L.to[0] * cs, margin + L.to[1] * cs);
      ctx.stroke();
    }
    ctx.lineWidth = 1;
    ctx.font = '12px monospace';
    S.panels.forEach((P, pi) => {
      for (let r = 0; r < P.rows; r++) {
        for (let c = 0; c < P.cols; c++) {
          const cell = P.cells[r * P.cols + c];
          const [x, y, w, h] = cellRect(pi, r, c);
          const f = fillOf(cell);
          if (f) { ctx.fillStyle = f; ctx.fillRect(x, y, w, h); }
          ctx.strokeStyle = D.grid;
          ctx.setLineDash(D.dashed.includes(cell.kind) ? [3, 3] : []);
          ctx.strokeRect(x + 0.5, y + 0.5, w, h);
        }
      }
      ctx.setLineDash([]);
      ctx.fillStyle = D.text;
      ctx.textAlign = 'left';
      ctx.textBaseline = 'middle';
      ctx.fillText(P.label, Math.round(margin + P.x * cs), Math.round(margin + (P.y - 0.5) * cs));
    });
    // Shade: the hovered relation if any, else the current frame.
    const shade = state.lit || S.frames[state.frame].highlights;
    ctx.fillStyle = D.shade;
    const seen = new Set();
    for (const h of shade) {
      const k = h.join(',');
      if (seen.has(k)) continue;
      seen.add(k);
      const [x, y, w, hh] = cellRect(h[0], h[1], h[2]);
      ctx.fillRect(x, y, w, hh);
    }
    ctx.textAlign = 'center';
    S.panels.forEach((P, pi) => {
      for (let r = 0; r < P.rows; r++) {
        for (let c = 0; c < P.cols; c++) {
          const cell = P.cells[r * P.cols + c];
          if (cell.text === undefined) continue;
          const [x, y, w, h] = cellRect(pi, r, c);
          ctx.fillStyle = D.light_text.includes(cell.kind) ? '#fff' : D.text;
          ctx.fillText(cell.text, x + w / 2, y + h / 2 + 1);
        }
      }
    });
    el('counter').textContent = 'frame ' + (state.frame + 1) + ' / ' + S.frames.length;
    el('scrub').value = state.frame;
    el('note').textContent = S.frames[state.frame].note;
    el('play').textContent = state.playing ? 'pause' : 'play';
    state.drawn = true;
  }

  function schedule() {
    clearTimeout(state.timer);
    if (!state.playing) return;
    state.timer = setTimeout(() => {
      if (!state.lit) state.frame = (state.frame + 1) % S.frames.length;
      draw();
      schedule();
    }, D.delay_ms / state.speed);
  }
  function go(f) {
    state.frame = (f + S.frames.length) % S.frames.length;
    draw();
  }

  function cellAt(ev) {
    const b = canvas.getBoundingClientRect();
    const x = ev.clientX - b.left, y = ev.clientY - b.top;
    for (let pi = 0; pi < S.panels.length; pi++) {
      const P = S.panels[pi];
      const c = Math.floor((x - margin) / cs - P.x);
      const r = Math.floor((y - margin) / cs - P.y);
      if (r >= 0 && c >= 0 && r < P.rows && c < P.cols) return [pi, r, c];
    }
    return null;
  }
  canvas.addEventListener('mousemove', (ev) => {
    const cell = cellAt(ev);
    const h = cell ? hover.get(cell.join(',')) : null;
    const info = el('hover');
    if (!h) {
      if (state.lit) { state.lit = null; info.textContent = ''; draw(); }
      return;
    }
    state.lit = h.lights;
    if (h.frame !== null && h.frame !== undefined) state.frame = h.frame;
    const P = S.panels[cell[0]];
    info.textContent = P.id + ' (' + (cell[1] + P.origin[0]) + ', ' + (cell[2] + P.origin[1]) + ')' +
      (h.frame !== null && h.frame !== undefined ? ': its taps and weights are lit'
        : ': every cell it feeds is lit');
    draw();
  });
  canvas.addEventListener('mouseleave', () => { state.lit = null; el('hover').textContent = ''; draw(); });

  el('play').addEventListener('click', () => { state.playing = !state.playing; draw(); schedule(); });
  el('prev').addEventListener('click', () => { state.playing = false; go(state.frame - 1); });
  el('next').addEventListener('click', () => { state.playing = false; go(state.frame + 1); });
  el('scrub').max = S.frames.length - 1;
  el('scrub').addEventListener('input', (e) => { state.playing = false; go(+e.target.value); });
  el('speed').addEventListener('change', (e) => { state.speed = +e.target.value; schedule(); });

  el('title').textContent = S.title;
  document.title = S.title;
  const cap = el('caption');
  for (const line of S.caption) {
    const li = document.createElement('li');
    li.textContent = line;
    cap.appendChild(li);
  }
  el('pytorch').textContent = S.pytorch;
  const legend = el('legend');
  for (const k of D.legend) {
    const s = document.createElement('span');
    const sw = document.createElement('i');
    sw.style.background = k.kind === 'heat' ? D.heat[D.heat.length - 1] : (D.fills[k.kind] || '#fff');
    if (D.dashed.includes(k.kind)) sw.style.borderStyle = 'dashed';
    s.appendChild(sw);
    s.appendChild(document.createTextNode(k.text));
    legend.appendChild(s);
  }

  // For tools and the end-to-end test: read-only views of what is drawn.
  window.convkitViz = {
    data: D,
    get drawn() { return state.drawn; },
    get frame() { return state.frame; },
    get playing() { return state.playing; },
    lit: () => (state.lit || S.frames[state.frame].highlights).map((h) => h.slice()),
    cellCentre: (p, r, c) => {
      const b = canvas.getBoundingClientRect();
      const [x, y, w, h] = cellRect(p, r, c);
      return { x: b.left + x + w / 2, y: b.top + y + h / 2 };
    },
    pixel: (p, r, c) => {
      const [x, y, w, h] = cellRect(p, r, c);
      const d = ctx.getImageData(Math.round((x + w / 2) * dpr), Math.round((y + h / 2 - 7) * dpr), 1, 1).data;
      return [d[0], d[1], d[2]];
    },
  };
  draw();
  schedule();
})();
