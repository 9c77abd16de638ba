// A line chart of the last minutes of one rate, drawn as SVG (no library: a polyline, two
// axis labels and a title that screen readers read).

const NS = 'http://www.w3.org/2000/svg';
const W = 400, H = 120, PAD_L = 38, PAD_B = 16, PAD_T = 8;

function el(tag: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

export interface Point { t: number; v: number }

export class Chart {
  readonly svg: SVGSVGElement;
  private points: Point[] = [];
  constructor(private title: string, private unit: string, private windowSecs = 120) {
    this.svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', preserveAspectRatio: 'none' }) as SVGSVGElement;
    this.draw();
  }

  push(t: number, v: number): void {
    this.points.push({ t, v });
    const from = t - this.windowSecs * 1000;
    if (this.points.length > 1 && t < this.points[this.points.length - 2].t) this.points.sort((a, b) => a.t - b.t);
    while (this.points.length > 2 && this.points[0].t < from) this.points.shift();
    this.draw();
  }

  private draw(): void {
    const pts = this.points;
    const now = pts.length ? pts[pts.length - 1].t : Date.now();
    const t0 = now - this.windowSecs * 1000;
    const max = Math.max(1, ...pts.map(p => p.v));
    const top = niceCeil(max);
    const x = (t: number) => PAD_L + ((t - t0) / (this.windowSecs * 1000)) * (W - PAD_L - 4);
    const y = (v: number) => H - PAD_B - (v / top) * (H - PAD_B - PAD_T);
    const last = pts.length ? pts[pts.length - 1].v : 0;
    const kids: SVGElement[] = [
      el('title', {}, `${this.title}: ${fmt(last)} ${this.unit} now, highest ${fmt(max)} in the last ${this.windowSecs / 60} minutes`),
      el('line', { x1: PAD_L, y1: H - PAD_B, x2: W, y2: H - PAD_B, stroke: '#8a96a3', 'stroke-width': 1 }),
      el('line', { x1: PAD_L, y1: PAD_T, x2: PAD_L, y2: H - PAD_B, stroke: '#8a96a3', 'stroke-width': 1 }),
      el('text', { x: PAD_L - 4, y: PAD_T + 8, 'text-anchor': 'end', 'font-size': 10, fill: '#4a5360' }, fmt(top)),
      el('text', { x: PAD_L - 4, y: H - PAD_B, 'text-anchor': 'end', 'font-size': 10, fill: '#4a5360' }, '0'),
      el('text', { x: PAD_L, y: H - 3, 'font-size': 10, fill: '#4a5360' }, `−${this.windowSecs / 60} min`),
      el('text', { x: W - 2, y: H - 3, 'text-anchor': 'end', 'font-size': 10, fill: '#4a5360' }, new Date(now).toISOString().slice(11, 19) + 'Z'),
    ];
    if (pts.length > 1) {
      kids.push(el('polyline', {
        points: pts.map(p => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' '),
        fill: 'none', stroke: '#0b5cad', 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke',
      }));
    }
    this.svg.replaceChildren(...kids);
  }
}

function niceCeil(v: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

export function fmt(v: number): string {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (v >= 1e4) return (v / 1e3).toFixed(0) + 'k';
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1).replace(/\.0$/, '');
  return v.toFixed(2).replace(/\.?0+$/, '') || '0';
}
