"use strict";
// A small Markdown renderer for model replies: fenced code blocks, inline
// code, headings, lists, quotes, rules, bold, italics, strikethrough and
// links. Safety first: every piece of the reply is HTML-escaped before any
// markup is added, and only http(s) URLs become links, so a reply can never
// inject markup or script into the page.
(function (global) {
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  // Code spans and links are cut out into placeholders first, so the
  // emphasis rules never reach inside them (or into a link's href).
  function inline(raw) {
    const held = [];
    const hold = (html) => "\u0000" + (held.push(html) - 1) + "\u0000";
    let s = raw.replace(/`([^`\n]+)`/g, (_, code) => hold("<code>" + escapeHtml(code) + "</code>"));
    s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s()]+)\)/g, (_, text, url) =>
      hold(
        '<a href="' + escapeHtml(url) + '" target="_blank" rel="noopener noreferrer">' +
          escapeHtml(text) + "</a>"
      )
    );
    s = escapeHtml(s);
    s = s.replace(/\*\*(?=\S)([^*\n]*?\S)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^\w])__(?=\S)([^_\n]*?\S)__(?!\w)/g, "$1<strong>$2</strong>");
    s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![*\w])/g, "$1<em>$2</em>");
    s = s.replace(/(^|[^_\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?![_\w])/g, "$1<em>$2</em>");
    s = s.replace(/~~(?=\S)([^~\n]*?\S)~~/g, "<del>$1</del>");
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => held[+i]);
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^`]*$/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}>\s?(.*)$/;
  const BULLET = /^(\s*)[-*+]\s+(.*)$/;
  const NUMBER = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;

  function render(text) {
    // NULs are the placeholders' delimiters; a reply never needs one.
    const lines = String(text).replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let para = [];
    let list = null; // { tag, start, items: [lines] }

    const flushPara = () => {
      if (para.length) out.push("<p>" + para.map(inline).join("<br>") + "</p>");
      para = [];
    };
    const flushList = () => {
      if (!list) return;
      const start = list.tag === "ol" && list.start !== 1 ? ' start="' + list.start + '"' : "";
      const items = list.items.map((item) => "<li>" + item.map(inline).join("<br>") + "</li>");
      out.push("<" + list.tag + start + ">" + items.join("") + "</" + list.tag + ">");
      list = null;
    };
    const flush = () => {
      flushPara();
      flushList();
    };

    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if ((m = line.match(FENCE))) {
        flush();
        const code = [];
        // An unclosed fence runs to the end: a reply still streaming.
        while (++i < lines.length && !lines[i].trim().startsWith(m[1])) code.push(lines[i]);
        const lang = m[2] ? escapeHtml(m[2]) : "";
        out.push(
          "<pre>" + (lang ? '<span class="lang">' + lang + "</span>" : "") +
            "<code" + (lang ? ' class="language-' + lang + '"' : "") + ">" +
            escapeHtml(code.join("\n")) + "</code></pre>"
        );
      } else if ((m = line.match(HEADING))) {
        flush();
        const n = m[1].length;
        out.push("<h" + n + ">" + inline(m[2]) + "</h" + n + ">");
      } else if (RULE.test(line)) {
        flush();
        out.push("<hr>");
      } else if ((m = line.match(QUOTE))) {
        flush();
        const quoted = [m[1]];
        while (i + 1 < lines.length && (m = lines[i + 1].match(QUOTE))) {
          quoted.push(m[1]);
          i++;
        }
        out.push("<blockquote>" + render(quoted.join("\n")) + "</blockquote>");
      } else if ((m = line.match(BULLET)) || (m = line.match(NUMBER))) {
        flushPara();
        const ordered = m.length === 4;
        const tag = ordered ? "ol" : "ul";
        if (!list || list.tag !== tag) {
          flushList();
          list = { tag, start: ordered ? parseInt(m[2], 10) : 1, items: [] };
        }
        list.items.push([ordered ? m[3] : m[2]]);
      } else if (!line.trim()) {
        flush();
      } else if (list && /^\s+\S/.test(line)) {
        list.items[list.items.length - 1].push(line.trim());
      } else {
        flushList();
        para.push(line);
      }
    }
    flush();
    return out.join("\n");
  }

  global.renderMarkdown = render;
  global.escapeHtml = escapeHtml;
})(window);
