// Safe Markdown for untrusted model output.
//
// Model output never reaches innerHTML: this renderer builds DOM nodes with createElement and
// createTextNode only, so any markup in the text stays text ("escape first"). What it does
// render is a strict allow-list: paragraphs, line breaks, headings, lists, block quotes,
// fenced code blocks, inline code, bold, italic and http(s)/mailto links. Anything else,
// including <script>, <img onerror=...> and javascript: links, is shown literally.
"use strict";

const SAFE_URL = /^(https?:\/\/|mailto:)[^\s<>"']+$/i;
const INLINE = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|__([^_\n]+)__|\*([^*\s][^*\n]*)\*|\[([^\]\n]+)\]\(([^)\s]+)\)/;

function el(tag, cls) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  return node;
}

function appendInline(parent, text) {
  let rest = text;
  while (rest.length > 0) {
    const m = INLINE.exec(rest);
    if (!m) {
      parent.appendChild(document.createTextNode(rest));
      return;
    }
    if (m.index > 0) parent.appendChild(document.createTextNode(rest.slice(0, m.index)));
    if (m[1] !== undefined) {
      const code = el("code");
      code.textContent = m[1];
      parent.appendChild(code);
    } else if (m[2] !== undefined || m[3] !== undefined) {
      const strong = el("strong");
      appendInline(strong, m[2] !== undefined ? m[2] : m[3]);
      parent.appendChild(strong);
    } else if (m[4] !== undefined) {
      const em = el("em");
      appendInline(em, m[4]);
      parent.appendChild(em);
    } else if (SAFE_URL.test(m[6])) {
      const a = el("a");
      a.href = m[6];
      a.rel = "noopener noreferrer nofollow";
      a.target = "_blank";
      a.textContent = m[5];
      parent.appendChild(a);
    } else {
      // Not an allowed scheme (javascript:, data:, relative...): show the source text.
      parent.appendChild(document.createTextNode(m[0]));
    }
    rest = rest.slice(m.index + m[0].length);
  }
}

function appendLines(parent, lines) {
  lines.forEach((line, i) => {
    if (i > 0) parent.appendChild(el("br"));
    appendInline(parent, line);
  });
}

const LIST_ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;

// Split source lines into blocks: code fences first (their content is never parsed).
function renderMarkdown(source) {
  const root = document.createDocumentFragment();
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // closing fence (or end of text: an unclosed fence runs to the end)
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.appendChild(code);
      root.appendChild(pre);
      continue;
    }
    if (line.trim() === "") {
      i += 1;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      const h = el("h" + Math.min(6, heading[1].length + 2));
      appendInline(h, heading[2]);
      root.appendChild(h);
      i += 1;
      continue;
    }
    if (LIST_ITEM.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length && LIST_ITEM.test(lines[i])) {
        const li = el("li");
        appendInline(li, LIST_ITEM.exec(lines[i])[2]);
        list.appendChild(li);
        i += 1;
      }
      root.appendChild(list);
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quote = el("blockquote");
      const body = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*>\s?/, ""));
      appendLines(quote, body);
      root.appendChild(quote);
      continue;
    }
    const para = [];
    while (
      i < lines.length && lines[i].trim() !== "" && !/^\s*(```|~~~)/.test(lines[i]) &&
      !/^#{1,6}\s/.test(lines[i]) && !LIST_ITEM.test(lines[i]) && !/^\s*>/.test(lines[i])
    ) {
      para.push(lines[i++]);
    }
    const p = el("p");
    appendLines(p, para);
    root.appendChild(p);
  }
  return root;
}

window.renderMarkdown = renderMarkdown;
