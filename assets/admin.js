// chatwire's admin page: polls /admin/api/answers and /admin/api/stats once a second,
// draws the last ten minutes on a canvas, and stops answers. Everything is written with
// textContent: user ids and models are never read as HTML.
'use strict';

const POLL_MS = 1000;
const WINDOW_MS = 10 * 60 * 1000;
const $ = (id) => document.getElementById(id);

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h}h ${m % 60}m` : `${Math.floor(h / 24)}d ${h % 24}h`;
}

function status(text, isError) {
  const el = $('status');
  el.textContent = text;
  el.className = isError ? 'error' : 'muted';
}

async function getJson(path) {
  const res = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

async function stop(messageId, button) {
  button.disabled = true;
  try {
    const res = await fetch(`/admin/api/answers/${encodeURIComponent(messageId)}/stop`, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-Chatwire-Admin': '1' },
    });
    const body = await res.json();
    status(body.stopped ? 'answer stopped' : 'that answer had already ended', !res.ok);
  } catch (e) {
    status(`stop failed: ${e.message}`, true);
    button.disabled = false;
  }
  refresh();
}

function renderAnswers({ answers }) {
  const body = $('answers-body');
  const rows = answers.map((a) => {
    const tr = document.createElement('tr');
    tr.dataset.messageId = a.messageId;
    tr.append(cell(a.userId), cell(a.model), cell(String(a.tokens), 'num'), cell(duration(a.ageMs), 'num'), cell(a.messageId, 'id'));
    const td = document.createElement('td');
    const button = document.createElement('button');
    button.className = 'stop';
    button.textContent = 'Stop';
    button.addEventListener('click', () => stop(a.messageId, button));
    td.append(button);
    tr.append(td);
    return tr;
  });
  body.replaceChildren(...rows);
  $('answers-empty').hidden = answers.length > 0;
  $('answers-count').textContent = answers.length ? `(${answers.length})` : '';
}

function renderNodes({ nodes }) {
  $('nodes-body').replaceChildren(
    ...nodes.map((n) => {
      const tr = document.createElement('tr');
      tr.dataset.node = n.id;
      tr.append(
        cell(n.id), cell(n.hostname), cell(String(n.pid), 'num'), cell(duration(n.uptimeSeconds * 1000), 'num'),
        cell(String(n.sockets), 'num'), cell(String(n.running), 'num'), cell(String(n.totals.tokens), 'num'),
        cell(String(n.totals.failed), 'num'), cell(String(n.totals.refused), 'num'),
        cell(String(n.feed.dropped + n.feed.undelivered), 'num'),
      );
      return tr;
    }),
  );
  const here = nodes[0];
  if (here) $('node-line').textContent = `node ${here.id} · ${here.hostname} · pid ${here.pid}`;
}

/** Per-second samples of every node, added up by second. */
function merged(nodes) {
  const bySecond = new Map();
  for (const n of nodes) {
    for (const s of n.samples) {
      const key = Math.ceil(s.at / 1000) * 1000;
      const m = bySecond.get(key) || { at: key, tokens: 0, failed: 0, refused: 0 };
      m.tokens += s.tokens;
      m.failed += s.failed;
      m.refused += s.refused;
      bySecond.set(key, m);
    }
  }
  return [...bySecond.values()].sort((a, b) => a.at - b.at);
}

/** 1, 2 or 5 times a power of ten, at least `x`. */
function niceStep(x) {
  const power = 10 ** Math.floor(Math.log10(Math.max(x, 1e-9)));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= x);
}

function drawChart(stats) {
  const canvas = $('chart-canvas');
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  const pad = { left: 44, right: 44, top: 10, bottom: 22 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const samples = merged(stats.nodes);
  const now = samples.length ? samples[samples.length - 1].at : Date.now();
  // The last ten minutes, or less while the server is younger (at least one minute).
  const span = samples.length ? now - samples[0].at : 0;
  const windowMs = Math.min(WINDOW_MS, Math.max(60_000, Math.ceil(span / 60_000) * 60_000));
  const shown = samples.filter((s) => s.at > now - windowMs);
  const x = (at) => pad.left + plotW * (1 - (now - at) / windowMs);
  const tokenStep = niceStep(Math.max(4, ...shown.map((s) => s.tokens)) / 4);
  const maxTokens = tokenStep * 4;
  const errorStep = niceStep(Math.max(4, ...shown.map((s) => s.failed + s.refused)) / 4);
  const maxErrors = errorStep * 4;
  const y = (v, max) => pad.top + plotH * (1 - v / max);

  ctx.clearRect(0, 0, width, height);
  ctx.font = '11px system-ui, sans-serif';
  ctx.strokeStyle = '#e4e7ec';
  for (let i = 0; i <= 4; i++) {
    const yy = y(tokenStep * i, maxTokens);
    ctx.beginPath();
    ctx.moveTo(pad.left, yy);
    ctx.lineTo(width - pad.right, yy);
    ctx.stroke();
    ctx.fillStyle = '#2563eb';
    ctx.fillText(String(tokenStep * i), 4, yy + 4);
    ctx.fillStyle = '#dc2626';
    ctx.fillText(String(errorStep * i), width - pad.right + 6, yy + 4);
  }
  ctx.fillStyle = '#667085';
  const minutes = windowMs / 60_000;
  const labelEvery = minutes <= 2 ? 0.25 : minutes <= 5 ? 1 : 2;
  for (let m = minutes; m >= 0; m -= labelEvery) {
    const label = m === 0 ? 'now' : m >= 1 ? `-${m}m` : `-${Math.round(m * 60)}s`;
    ctx.fillText(label, Math.min(x(now - m * 60_000) - 10, width - pad.right - 20), height - 6);
  }
  const bar = Math.max(2, plotW / (windowMs / 1000));
  for (const s of shown) {
    const failedTop = y(s.failed, maxErrors);
    if (s.failed) {
      ctx.fillStyle = '#dc2626';
      ctx.fillRect(x(s.at) - bar, failedTop, bar, pad.top + plotH - failedTop);
    }
    if (s.refused) {
      ctx.fillStyle = '#f59e0b';
      const top = y(s.failed + s.refused, maxErrors);
      ctx.fillRect(x(s.at) - bar, top, bar, failedTop - top);
    }
  }
  ctx.strokeStyle = '#2563eb';
  ctx.lineWidth = 2;
  ctx.beginPath();
  shown.forEach((s, i) => (i ? ctx.lineTo(x(s.at), y(s.tokens, maxTokens)) : ctx.moveTo(x(s.at), y(s.tokens, maxTokens))));
  ctx.stroke();
  ctx.lineWidth = 1;
  canvas.dataset.seconds = String(shown.filter((s) => s.tokens > 0).length);
  // The second in progress is partial: the rate is that of the five before it.
  const last = samples.slice(-6, -1);
  const rate = last.length ? last.reduce((sum, s) => sum + s.tokens, 0) / last.length : 0;
  $('rate').textContent = `· ${rate.toFixed(1)} tokens/s now`;
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [answers, stats] = await Promise.all([getJson('/admin/api/answers'), getJson('/admin/api/stats')]);
    renderAnswers(answers);
    renderNodes(stats);
    drawChart(stats);
    if ($('status').className === 'error') status('');
  } catch (e) {
    status(e.message, true);
  } finally {
    busy = false;
  }
}

refresh();
setInterval(refresh, POLL_MS);
