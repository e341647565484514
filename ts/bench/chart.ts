/**
 * The report's chart: one panel per figure (requests/s, latency p50/p99 at saturation and at a fixed rate, Gbit/s with 1 and 8
 * streams, new connections/s), a bar per configuration at the median with a whisker from the
 * smallest to the largest repetition. Plain SVG, no dependencies.
 */
import { CONFIG_LABEL, type ConfigName } from './env.js';
import { configsOf } from './report.js';
import type { Row, Stat } from './stats.js';

const COLORS: Record<ConfigName, string> = { nomesh: '#7f7f7f', iptables: '#d62728', ebpf: '#1f77b4', nomesh6: '#bcbcbc', iptables6: '#f08080', ebpf6: '#6baed6', 'proxy-iptables': '#ff9896', 'proxy-ebpf': '#aec7e8', 'proxy-passthrough': '#c5b0d5', 'proxy-fastpath': '#2ca02c', 'proxy-h2default': '#8c564b', 'proxy-native': '#17becf' };

interface Panel {
  title: string;
  unit: string;
  bars: { label: string; sub?: string; config: ConfigName; s: Stat | undefined }[];
  /** scale to the medians (whiskers clipped at the top): for figures with wild outliers */
  scaleToMedians?: boolean;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** A round axis maximum at or above v, and how many grid intervals divide it evenly. */
function niceAxis(v: number): { max: number; steps: number } {
  if (!(v > 0)) return { max: 1, steps: 5 };
  const p = 10 ** Math.floor(Math.log10(v));
  for (const [m, steps] of [[1, 5], [1.5, 3], [2, 4], [2.5, 5], [3, 3], [4, 4], [5, 5], [6, 3], [8, 4], [10, 5]] as const) if (v <= m * p * 1.0001) return { max: m * p, steps };
  return { max: 10 * p, steps: 5 };
}

function fmt(v: number): string {
  if (v >= 1000) return `${Number((v / 1000).toPrecision(3))}k`;
  return String(Number(v.toPrecision(3)));
}

function panel(p: Panel, x0: number, y0: number, w: number, h: number): string {
  const top = 34;
  const bottom = 46;
  const left = 44;
  const plotH = h - top - bottom;
  const ceiling = Math.max(...p.bars.map((b) => (p.scaleToMedians ? (b.s?.median ?? 0) * 1.5 : b.s?.max ?? 0)));
  const { max, steps } = niceAxis(ceiling);
  const y = (v: number): number => y0 + top + plotH - (Math.min(v, max) / max) * plotH;
  const bw = (w - left - 10) / p.bars.length;
  const out: string[] = [
    `<text x="${x0 + w / 2}" y="${y0 + 16}" text-anchor="middle" font-weight="bold">${esc(p.title)}</text>`,
    `<text x="${x0 + w / 2}" y="${y0 + 29}" text-anchor="middle" font-size="10" fill="#555">${esc(p.unit)}</text>`,
  ];
  for (let i = 0; i <= steps; i++) {
    const v = (max * i) / steps;
    out.push(`<line x1="${x0 + left}" x2="${x0 + w - 8}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`);
    out.push(`<text x="${x0 + left - 4}" y="${y(v) + 3}" text-anchor="end" font-size="9">${fmt(v)}</text>`);
  }
  p.bars.forEach((b, i) => {
    const bx = x0 + left + i * bw + bw * 0.15;
    const w2 = bw * 0.7;
    if (b.s && Number.isFinite(b.s.median)) {
      out.push(`<rect x="${bx}" y="${y(b.s.median)}" width="${w2}" height="${y(0) - y(b.s.median)}" fill="${COLORS[b.config]}"/>`);
      const cx = bx + w2 / 2;
      out.push(`<line x1="${cx}" x2="${cx}" y1="${y(b.s.min)}" y2="${y(b.s.max)}" stroke="#000"/>`);
      for (const v of [b.s.min, b.s.max]) if (v <= max) out.push(`<line x1="${cx - 4}" x2="${cx + 4}" y1="${y(v)}" y2="${y(v)}" stroke="#000"/>`);
      if (b.s.max > max) out.push(`<text x="${cx + 3}" y="${y(max) + 9}" font-size="9">↑${fmt(b.s.max)}</text>`);
      const labelY = b.s.max > max ? y(b.s.median) - 3 : y(b.s.max) - 3;
      out.push(`<text x="${cx + (b.s.max > max ? 9 : 0)}" y="${labelY}" text-anchor="${b.s.max > max ? 'start' : 'middle'}" font-size="9">${fmt(b.s.median)}</text>`);
    }
    out.push(`<text x="${bx + w2 / 2}" y="${y(0) + 12}" text-anchor="middle" font-size="9">${esc(b.label)}</text>`);
    if (b.sub) out.push(`<text x="${bx + w2 / 2}" y="${y(0) + 23}" text-anchor="middle" font-size="9">${esc(b.sub)}</text>`);
  });
  return out.join('\n');
}

export function chartSvg(rows: Row[], title: string): string {
  const get = (w: Row['workload'], c: ConfigName, k: string): Stat | undefined => rows.find((r) => r.workload === w && r.config === c)?.metrics[k];
  const short: Record<ConfigName, string> = { nomesh: 'none', iptables: 'iptables', ebpf: 'eBPF', nomesh6: 'none 6', iptables6: 'ipt 6', ebpf6: 'eBPF 6', 'proxy-iptables': 'px ipt', 'proxy-ebpf': 'px eBPF', 'proxy-passthrough': 'px pass', 'proxy-fastpath': 'px fast', 'proxy-h2default': 'px h2 def', 'proxy-native': 'px native' };
  const configs = configsOf(rows);
  const per = (w: Row['workload'], k: string, sub?: string): Panel['bars'] =>
    configs.map((c) => ({ label: short[c], sub, config: c, s: get(w, c, k) }));
  const panels: Panel[] = [
    { title: 'HTTP requests/s', unit: 'wrk, 1 KiB, kept-alive', bars: per('http', 'rps') },
    { title: 'HTTP latency', unit: 'ms, p50 | p99 (axis fits the medians)', bars: [...per('http', 'p50', 'p50'), ...per('http', 'p99', 'p99')], scaleToMedians: true },
    { title: 'HTTP latency at a fixed rate', unit: 'ms, p50 | p99 (axis fits the medians)', bars: [...per('latency', 'p50', 'p50'), ...per('latency', 'p99', 'p99')], scaleToMedians: true },
    { title: 'Bulk throughput', unit: 'Gbit/s, 1 | 8 streams', bars: [...per('bulk1', 'gbps', '1 stream'), ...per('bulk8', 'gbps', '8 streams')] },
    { title: 'New connections/s', unit: 'one request per connection', bars: per('connrate', 'cps') },
  ];
  const pw = 380;
  const ph = 240;
  const cols = 2;
  const width = pw * cols;
  const height = ph * Math.ceil(panels.length / cols) + 60;
  const step = Math.floor((width - 20) / configs.length);
  const legend = configs.map(
    (c, i) => `<rect x="${20 + i * step}" y="${height - 22}" width="12" height="12" fill="${COLORS[c]}"/>` +
      `<text x="${36 + i * step}" y="${height - 12}" font-size="11">${esc(CONFIG_LABEL[c])}</text>`,
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="${width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>`,
    ...panels.map((p, i) => panel(p, (i % cols) * pw, 24 + Math.floor(i / cols) * ph, pw, ph)),
    ...legend,
    `<text x="${width - 8}" y="${height - 36}" text-anchor="end" font-size="9" fill="#555">bars: median; whiskers: min..max over repetitions</text>`,
    '</svg>',
    '',
  ].join('\n');
}
