// A minimal DOM for running gongji's inline report scripts in node (no browser here): enough for the calls the
// scripts make. Usage: node dom_shim.js page.html  → prints JSON {ready, error, texts: [{x, anchor, text}], ...}
"use strict";
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
function node(tag) {
  return {tag, attrs: {}, children: [], style: {}, textContent: "", className: "",
    setAttribute(k, v) { this.attrs[k] = String(v); }, getAttribute(k) { return this.attrs[k]; },
    appendChild(c) { this.children.push(c); c.parent = this; return c; },
    addEventListener() {}, get lastChild() { return this.children[this.children.length - 1]; }};
}
const ids = {};
const re = /id="([^"]+)"/g;
let m;
while ((m = re.exec(html))) { ids[m[1]] = node("div"); ids[m[1]].id = m[1]; }
const jsonRe = /<script type="application\/json" id="([^"]+)">([\s\S]*?)<\/script>/g;
while ((m = jsonRe.exec(html))) { ids[m[1]].textContent = m[2].replace(/<\\\//g, "</"); }
const body = node("body");
global.window = global;
global.document = {body, title: "t", createElementNS: (_ns, tag) => node(tag), createElement: (tag) => node(tag),
  createTextNode: (t) => ({tag: "#text", textContent: t, children: []}), getElementById: (id) => ids[id] || null,
  querySelectorAll: () => []};
const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((x) => x[1]);
let error = null;
try { scripts.forEach((s) => eval(s)); } catch (e) { error = String(e && e.message || e); }
const texts = [], svgs = [], legends = [];
function walk(n, box) {
  if (n.tag === "svg") { svgs.push({box, viewBox: n.attrs.viewBox}); }
  if (n.tag === "text") { texts.push({box, x: +n.attrs.x, anchor: n.attrs["text-anchor"] || "start",
    cls: n.attrs.class || "", size: +(n.attrs["font-size"] || 11), text: n.textContent}); }
  if (n.className === "legend") { legends.push({box, items: n.children.map((c) => c.children.map((x) => x.textContent).join(""))}); }
  (n.children || []).forEach((c) => walk(c, box));
}
Object.values(ids).forEach((n) => walk(n, n.id));
console.log(JSON.stringify({ready: body.attrs["data-report-ready"] || null, error: error || body.attrs["data-report-error"] || null,
  texts, svgs, legends}));
