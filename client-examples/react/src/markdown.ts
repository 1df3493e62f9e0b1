// The model's answer as Markdown, made safe for innerHTML. The same file is in
// client-examples/react/src and client-examples/vue/src (each app resolves its own
// `marked` and `dompurify`).
//
// Two layers, so that no HTML written by the model ever reaches the DOM:
// 1. marked renders Markdown, but raw HTML in the text (`<script>`, `<img onerror>`,
//    ...) is escaped and shown as text, and images become links (a remote image in an
//    answer would be fetched at once: a tracking pixel, or a way to leak the chat);
// 2. DOMPurify then keeps only the elements and attributes Markdown produces, and
//    URLs that are not http(s), mailto or relative (no `javascript:`).

import DOMPurify from 'dompurify';
import { Marked } from 'marked';

const escapeHtml = (s: string) =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

const marked = new Marked({
  async: false,
  gfm: true,
  breaks: true, // a single newline in an answer is a line break, as chat UIs show it
  renderer: {
    // Raw HTML as text: a block of it as a paragraph of its own.
    html: ({ text, block }) => (block ? `<p>${escapeHtml(text.trim())}</p>\n` : escapeHtml(text)),
    image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`,
  },
});

const ALLOWED_TAGS = [
  'a', 'blockquote', 'br', 'code', 'del', 'em', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr',
  'li', 'ol', 'p', 'pre', 'strong', 'table', 'tbody', 'td', 'th', 'thead', 'tr', 'ul',
];
const ALLOWED_ATTR = ['href', 'title', 'class', 'start', 'align'];
const SAFE_URL = /^(?:https?:|mailto:|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i;

// Links open in a new tab, without giving it a handle on this one (set after the
// attribute allowlist, which would drop them).
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

/** Markdown to sanitized HTML (trimmed: plain text gives exactly `<p>text</p>`). */
export function renderMarkdown(markdown: string): string {
  const html = marked.parse(markdown, { async: false });
  return DOMPurify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    ALLOWED_URI_REGEXP: SAFE_URL,
  }).trim();
}
