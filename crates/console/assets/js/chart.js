// Charts drawn by hand in SVG: a live line chart of request rates against a ceiling, and a bar
// chart of daily amounts. Each chart keeps its latest values in data- attributes and in a
// caption, for screen readers and for the browser tests.

const NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** The smallest of 1, 1.5, 2, 3, 5, 7.5 times a power of ten that is at least `v`. */
export function niceMax(v) {
  if (!(v > 0)) return 10;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.5, 2, 3, 5, 7.5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

const W = 640;
const H = 240;
const PAD = { l: 48, r: 12, t: 12, b: 24 };

/**
 * A live chart of `series` ([{key, label}]) over the last `points` samples, with a dashed
 * ceiling line. `update(samples, ceiling)`: samples are objects with a value per key.
 */
export function liveChart({ id, title, series, points = 60 }) {
  const svg = s('svg', { id, class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': `${id}-title ${id}-caption` });
  svg.append(s('title', { id: `${id}-title` }, title));
  const grid = s('g');
  const lines = Object.fromEntries(series.map((x) => [x.key, s('polyline', { class: x.key, points: '' })]));
  const ceiling = s('line', { class: 'ceiling', x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b });
  const ceilingLabel = s('text', { x: W - PAD.r - 4, y: H - PAD.b - 4, 'text-anchor': 'end' }, '');
  svg.append(grid, ...Object.values(lines), ceiling, ceilingLabel);
  const caption = document.createElement('figcaption');
  caption.id = `${id}-caption`;
  const legend = document.createElement('ul');
  legend.className = 'legend';
  for (const x of [...series, { key: 'ceiling', label: 'ceiling' }]) {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = `swatch ${x.key}`;
    li.append(sw, x.label);
    legend.append(li);
  }
  const fig = document.createElement('figure');
  fig.append(svg, legend, caption);

  function update(samples, ceilingValue) {
    const peak = Math.max(ceilingValue || 0, ...samples.flatMap((p) => series.map((x) => p[x.key] || 0)));
    const yMax = niceMax(peak * 1.25);
    const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / yMax);
    const x = (i) => PAD.l + (W - PAD.l - PAD.r) * (i / Math.max(points - 1, 1));
    grid.replaceChildren();
    for (const f of [0, 0.5, 1]) {
      const v = yMax * f;
      grid.append(s('line', { class: 'axis', x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }));
      grid.append(s('text', { x: PAD.l - 4, y: y(v) + 4, 'text-anchor': 'end' }, Math.round(v)));
    }
    grid.append(s('text', { x: PAD.l, y: H - 6 }, `last ${points} s`));
    const offset = points - samples.length;
    for (const sr of series) {
      lines[sr.key].setAttribute('points', samples.map((p, i) => `${x(i + offset).toFixed(1)},${y(p[sr.key] || 0).toFixed(1)}`).join(' '));
    }
    const cy = y(ceilingValue || 0).toFixed(1);
    ceiling.setAttribute('y1', cy);
    ceiling.setAttribute('y2', cy);
    ceilingLabel.setAttribute('y', Number(cy) - 4);
    ceilingLabel.textContent = `ceiling ${Math.round(ceilingValue || 0)} rps`;
    const last = samples[samples.length - 1] || {};
    svg.dataset.ceiling = String(Math.round(ceilingValue || 0));
    svg.dataset.samples = String(samples.length);
    for (const sr of series) svg.dataset[sr.key] = (last[sr.key] || 0).toFixed(1);
    caption.textContent = `${series.map((sr) => `${sr.label} ${(last[sr.key] || 0).toFixed(1)}/s`).join(', ')}; ceiling ${Math.round(ceilingValue || 0)} requests per second.`;
  }
  update([], 0);
  return { el: fig, update };
}

/** A bar chart: bars are [{label, value, title}]. */
export function barChart({ id, title, bars, unit = '' }) {
  const svg = s('svg', { id, class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': `${id}-title` });
  svg.append(s('title', { id: `${id}-title` }, title));
  const yMax = niceMax(Math.max(0, ...bars.map((b) => b.value)) * 1.1);
  const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - v / yMax);
  for (const f of [0, 0.5, 1]) {
    svg.append(s('line', { class: 'axis', x1: PAD.l, x2: W - PAD.r, y1: y(yMax * f), y2: y(yMax * f) }));
    svg.append(s('text', { x: PAD.l - 4, y: y(yMax * f) + 4, 'text-anchor': 'end' }, `${unit}${Math.round(yMax * f * 100) / 100}`));
  }
  const slot = (W - PAD.l - PAD.r) / Math.max(bars.length, 1);
  bars.forEach((b, i) => {
    const x = PAD.l + slot * i + slot * 0.15;
    const rect = s('rect', { class: 'bar', x: x.toFixed(1), y: y(b.value).toFixed(1), width: (slot * 0.7).toFixed(1), height: Math.max(0, H - PAD.b - y(b.value)).toFixed(1) });
    rect.append(s('title', {}, b.title));
    svg.append(rect);
    if (bars.length <= 31 && (i % Math.ceil(bars.length / 16) === 0)) {
      svg.append(s('text', { x: (x + slot * 0.35).toFixed(1), y: H - 8, 'text-anchor': 'middle' }, b.label));
    }
  });
  svg.dataset.bars = String(bars.filter((b) => b.value > 0).length);
  return svg;
}
