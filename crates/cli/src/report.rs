//! `rs2p demo --report FILE.html`: a self-contained page (no network access
//! needed to view it) with the mesh graph, per-node deliveries, the latency
//! histogram and the synced dictionary's convergence curve.
//!
//! The figures travel as one JSON document inside the page; a small script
//! in the page draws them as SVG. When it has drawn everything it marks the
//! page `data-rendered="ok"` (and `data-error` if anything failed), which is
//! what the headless-browser test checks.

use serde_json::{json, Value as Json};

/// What the demo measured, for the page.
#[derive(Debug, Default)]
pub struct Report {
    /// Short ids of the nodes.
    pub nodes: Vec<String>,
    /// Links of the mesh, as node index pairs (each once).
    pub links: Vec<(usize, usize)>,
    /// Per node: deliveries received and expected.
    pub deliveries: Vec<(usize, usize)>,
    /// Every delivery's latency, in microseconds.
    pub latencies_us: Vec<u64>,
    /// The dictionary's convergence: (milliseconds since the writes began,
    /// replicas holding every key).
    pub convergence: Vec<(f64, usize)>,
    /// Headline figures, as label and value, in order.
    pub summary: Vec<(String, String)>,
}

/// Buckets of the latency histogram.
const HISTOGRAM_BUCKETS: usize = 40;

impl Report {
    /// The latency histogram: equal-width buckets from 0 to the p99
    /// latency (slower deliveries go into the last bucket), as (upper edge
    /// in ms, count).
    fn histogram(&self) -> Vec<(f64, usize)> {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let Some(&top) = sorted.get(((sorted.len() as f64 - 1.0) * 0.99) as usize) else { return Vec::new() };
        let width = (top.max(1) as f64) / HISTOGRAM_BUCKETS as f64;
        let mut counts = vec![0usize; HISTOGRAM_BUCKETS];
        for &l in &sorted {
            let b = ((l as f64 / width) as usize).min(HISTOGRAM_BUCKETS - 1);
            counts[b] += 1;
        }
        counts.into_iter().enumerate().map(|(i, c)| ((i + 1) as f64 * width / 1000.0, c)).collect()
    }

    /// The page.
    pub fn to_html(&self) -> String {
        let data = json!({
            "nodes": self.nodes,
            "links": self.links,
            "deliveries": self.deliveries,
            "histogram": self.histogram(),
            "convergence": self.convergence,
            "summary": self.summary,
        });
        // Inside <script>, "</" would end the element early.
        let data = Json::to_string(&data).replace("</", "<\\/");
        PAGE.replace("{{DATA}}", &data)
    }
}

const PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>rs2p demo report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td { padding: 2px 12px 2px 0; }
svg { background: #fafafa; border: 1px solid #ddd; }
.axis { font-size: 11px; fill: #555; }
</style>
</head>
<body>
<h1>rs2p demo report</h1>
<table id="summary"></table>
<h2>The mesh</h2>
<svg id="mesh" width="640" height="640" role="img" aria-label="mesh graph"></svg>
<h2>Deliveries per node</h2>
<svg id="deliveries" width="640" height="220" role="img" aria-label="deliveries per node"></svg>
<h2>Latency, publish to delivery</h2>
<svg id="latency" width="640" height="240" role="img" aria-label="latency histogram"></svg>
<h2>Synced dictionary: replicas holding every key</h2>
<svg id="convergence" width="640" height="240" role="img" aria-label="convergence curve"></svg>
<script type="application/json" id="data">{{DATA}}</script>
<script>
"use strict";
window.addEventListener("error", function (e) { document.body.dataset.error = String(e.message); });
const NS = "http://www.w3.org/2000/svg";
function el(parent, name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
function axes(svg, w, h, pad, xlabel, ylabel, xmax, ymax) {
  el(svg, "line", {x1: pad, y1: h - pad, x2: w - 10, y2: h - pad, stroke: "#888"});
  el(svg, "line", {x1: pad, y1: 10, x2: pad, y2: h - pad, stroke: "#888"});
  el(svg, "text", {x: w / 2, y: h - 6, class: "axis", "text-anchor": "middle"}, xlabel + " (max " + xmax + ")");
  el(svg, "text", {x: 4, y: 20, class: "axis"}, ylabel + " (max " + ymax + ")");
}
function draw(d) {
  const summary = document.getElementById("summary");
  for (const [k, v] of d.summary) {
    const tr = summary.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  // The mesh: nodes on a circle, links as lines; a node is green when it
  // received every broadcast it should have.
  const mesh = document.getElementById("mesh");
  const n = d.nodes.length, cx = 320, cy = 320, r = 270;
  const pos = d.nodes.map((_, i) => [cx + r * Math.cos(2 * Math.PI * i / n), cy + r * Math.sin(2 * Math.PI * i / n)]);
  for (const [a, b] of d.links) {
    el(mesh, "line", {x1: pos[a][0], y1: pos[a][1], x2: pos[b][0], y2: pos[b][1], stroke: "#9ab", "stroke-width": 1});
  }
  d.nodes.forEach((id, i) => {
    const [got, want] = d.deliveries[i] || [0, 0];
    const c = el(mesh, "circle", {cx: pos[i][0], cy: pos[i][1], r: n > 60 ? 4 : 8,
                                  fill: got >= want ? "#2a9d4b" : "#d1495b", "data-node": i});
    el(c, "title", {}, id + ": " + got + "/" + want + " deliveries");
  });
  // Deliveries per node, as bars.
  const dv = document.getElementById("deliveries");
  const maxWant = Math.max(1, ...d.deliveries.map(x => x[1]));
  const bw = (640 - 50) / Math.max(1, n);
  axes(dv, 640, 220, 40, "node", "deliveries", n - 1, maxWant);
  d.deliveries.forEach(([got, want], i) => {
    const h = 160 * got / maxWant;
    el(dv, "rect", {x: 40 + i * bw, y: 180 - h, width: Math.max(1, bw - 1), height: h,
                    fill: got >= want ? "#4a7fb5" : "#d1495b"});
  });
  // The latency histogram.
  const lat = document.getElementById("latency");
  const hist = d.histogram, maxCount = Math.max(1, ...hist.map(x => x[1]));
  const hw = (640 - 50) / Math.max(1, hist.length);
  axes(lat, 640, 240, 40, "latency, ms", "deliveries",
       hist.length ? hist[hist.length - 1][0].toFixed(2) : 0, maxCount);
  hist.forEach(([edge, count], i) => {
    const h = 180 * count / maxCount;
    el(lat, "rect", {x: 40 + i * hw, y: 200 - h, width: Math.max(1, hw - 1), height: h, fill: "#e39b2d"},
       undefined);
  });
  // The convergence curve.
  const cv = document.getElementById("convergence");
  const pts = d.convergence, tmax = Math.max(1, ...pts.map(p => p[0]));
  axes(cv, 640, 240, 40, "ms since the writes began", "replicas complete", tmax.toFixed(1), n);
  const path = pts.map(([t, k], i) => (i ? "L" : "M") + (40 + 580 * t / tmax).toFixed(1) + "," + (200 - 180 * k / Math.max(1, n)).toFixed(1)).join(" ");
  if (path) el(cv, "path", {d: path, fill: "none", stroke: "#2a9d4b", "stroke-width": 2});
}
try {
  draw(JSON.parse(document.getElementById("data").textContent));
  document.body.dataset.rendered = "ok";
} catch (e) {
  document.body.dataset.error = String(e);
}
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_its_data_safely() {
        let r = Report {
            nodes: vec!["a</script>".into(), "b".into()],
            links: vec![(0, 1)],
            deliveries: vec![(1, 1), (0, 1)],
            latencies_us: vec![100, 200, 300, 10_000],
            convergence: vec![(0.0, 0), (5.0, 2)],
            summary: vec![("verdict".into(), "healthy".into())],
        };
        let html = r.to_html();
        assert!(!html.contains("a</script>"), "the data cannot close the script element");
        assert!(html.contains(r#""links":[[0,1]]"#));
        let h = r.histogram();
        assert_eq!(h.len(), HISTOGRAM_BUCKETS);
        assert_eq!(h.iter().map(|b| b.1).sum::<usize>(), 4);
        // Self-contained: nothing is fetched (the only URL is the SVG namespace).
        assert_eq!(html.matches("http").count(), 1);
        assert!(!html.contains("src="));
    }
}
