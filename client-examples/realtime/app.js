// chatwire's voice proxy from a browser: Smriti's protocol (welcome, openai_event,
// audio_data / audio_commit, text_message, error) over one WebSocket. The microphone
// goes out as base64 PCM16 at 24 kHz in ~100 ms chunks; the answer's audio deltas are
// played in order; the user's transcription and the assistant's transcript are shown.

const RATE = 24000;
const CHUNK_SAMPLES = RATE / 10;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$('server').value = params.get('server') || `ws://${location.hostname || 'localhost'}:8000/realtime`;
$('token').value = params.get('token') || '';
$('preset').value = params.get('preset') || 'default';

let socket = null;
let audio = null; // { context, source, node, stream }
let pending = [];
let playAt = 0;
let player = null;
const answers = new Map(); // response_id -> <li>

function status(text, state) {
  $('status').textContent = text;
  $('status').dataset.state = state;
}

function enable(connected) {
  for (const id of ['mic', 'message', 'send-text']) $(id).disabled = !connected;
  $('send-audio').disabled = true;
}

function line(who, text) {
  const li = document.createElement('li');
  li.className = who;
  li.innerHTML = `<span class="who">${who === 'user' ? 'You' : 'Assistant'}</span><span class="text"></span>`;
  li.querySelector('.text').textContent = text;
  $('transcript').append(li);
  return li;
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Float32 samples in [-1, 1] to PCM16 little-endian, sent in 100 ms chunks. */
function capture(samples) {
  for (const s of samples) pending.push(Math.max(-1, Math.min(1, s)));
  let peak = 0;
  for (const s of samples) peak = Math.max(peak, Math.abs(s));
  $('level').style.setProperty('--level', `${Math.round(peak * 100)}%`);
  while (pending.length >= CHUNK_SAMPLES) {
    const chunk = pending.splice(0, CHUNK_SAMPLES);
    const pcm = new DataView(new ArrayBuffer(chunk.length * 2));
    chunk.forEach((s, i) => pcm.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true));
    send({ type: 'audio_data', payload: { audio: toBase64(new Uint8Array(pcm.buffer)) } });
    window.chatwireAudioChunks = (window.chatwireAudioChunks || 0) + 1;
  }
}

async function startMic() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  const context = new AudioContext({ sampleRate: RATE });
  await context.audioWorklet.addModule('pcm-worklet.js');
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, 'pcm-capture');
  node.port.onmessage = (e) => capture(e.data);
  source.connect(node);
  audio = { context, source, node, stream };
  $('mic').disabled = true;
  $('send-audio').disabled = false;
  status('Listening…', 'connected');
}

function stopMic() {
  if (!audio) return;
  audio.source.disconnect();
  audio.node.disconnect();
  audio.stream.getTracks().forEach((t) => t.stop());
  audio.context.close();
  audio = null;
  pending = [];
  send({ type: 'audio_commit', payload: {} });
  $('mic').disabled = false;
  $('send-audio').disabled = true;
  status('Connected', 'connected');
}

/** Plays one PCM16 delta right after the previous one. */
function play(delta) {
  player ||= new AudioContext({ sampleRate: RATE });
  const bytes = fromBase64(delta);
  const view = new DataView(bytes.buffer);
  const samples = new Float32Array(bytes.length / 2);
  for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * 2, true) / 0x8000;
  if (!samples.length) return;
  const buffer = player.createBuffer(1, samples.length, RATE);
  buffer.copyToChannel(samples, 0);
  const node = player.createBufferSource();
  node.buffer = buffer;
  node.connect(player.destination);
  playAt = Math.max(playAt, player.currentTime);
  node.start(playAt);
  playAt += buffer.duration;
}

function answer(id) {
  if (!answers.has(id)) answers.set(id, line('assistant', ''));
  return answers.get(id).querySelector('.text');
}

function onEvent(event) {
  switch (event.type) {
    case 'response.output_audio.delta':
      play(event.delta);
      break;
    case 'response.output_audio_transcript.delta':
    case 'response.output_text.delta':
      answer(event.response_id).textContent += event.delta;
      break;
    case 'response.done':
      // The answer is complete (and stored by the server).
      if (answers.has(event.response?.id)) answers.get(event.response.id).dataset.done = 'true';
      break;
    case 'conversation.item.input_audio_transcription.completed':
      line('user', event.transcript);
      break;
    case 'error':
      status(`Upstream: ${event.error?.message || 'error'}`, 'error');
      break;
  }
}

function connect(e) {
  e.preventDefault();
  socket?.close();
  const url = new URL($('server').value);
  if ($('token').value) url.searchParams.set('token', $('token').value);
  if ($('preset').value) url.searchParams.set('preset', $('preset').value);
  status('Connecting…', 'idle');
  socket = new WebSocket(url);
  socket.onmessage = (m) => {
    const frame = JSON.parse(m.data);
    if (frame.type === 'welcome') {
      status(`Connected as ${frame.payload.userId} (session ${frame.payload.sessionId})`, 'connected');
      enable(true);
    } else if (frame.type === 'openai_event') {
      onEvent(frame.payload);
    } else if (frame.type === 'session_expiring') {
      status(`Session ends in ${frame.payload.secondsLeft} s`, 'connected');
    } else if (frame.type === 'error') {
      status(`${frame.payload.details?.code || 'ERROR'}: ${frame.payload.message}`, 'error');
    }
  };
  socket.onclose = (c) => {
    enable(false);
    if ($('status').dataset.state !== 'error') status(`Disconnected (${c.code})`, 'idle');
  };
}

$('connect').addEventListener('submit', connect);
$('mic').addEventListener('click', () => startMic().catch((e) => status(`Microphone: ${e.message}`, 'error')));
$('send-audio').addEventListener('click', stopMic);
$('text').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('message').value.trim();
  if (!text) return;
  line('user', text);
  send({ type: 'text_message', payload: { text } });
  $('message').value = '';
});
