// The example page: fetches through /api, chats through the /chat tunnel, shows /stats.
const $ = (id) => document.getElementById(id);

async function show(promise) {
  try {
    const res = await promise;
    $('api-result').textContent = `${res.status} ${JSON.stringify(await res.json(), null, 2)}`;
  } catch (error) {
    $('api-result').textContent = `failed: ${error.message}`;
  }
}

$('time').addEventListener('click', () =>
  show(fetch('api/time', { headers: { accept: 'application/json' } })),
);
$('echo').addEventListener('submit', (event) => {
  event.preventDefault();
  const body = JSON.stringify({ text: $('echo-text').value });
  show(
    fetch('api/echo', {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body,
    }),
  );
});

let socket;

function setChatEnabled(enabled, state) {
  $('message').disabled = !enabled;
  $('say').querySelector('button').disabled = !enabled;
  $('chat-state').textContent = state;
}

function addMessage(text) {
  const item = document.createElement('li');
  item.textContent = text;
  $('messages').append(item);
  item.scrollIntoView({ block: 'nearest' });
}

// Reconnect delays after the server went away: doubling, up to 30 s, with jitter.
const FIRST_RETRY = 500;
const LONGEST_RETRY = 30_000;
let retryTimer;

/** What a close code means to the user: 1001 is viaduct (or the server) going away, e.g. a deploy. */
function closeState(event) {
  if (event.code === 1001)
    return `the server went away (1001${event.reason ? `: ${event.reason}` : ''}); reconnecting…`;
  if (event.code === 1000) return 'disconnected';
  return `connection lost (${event.code}); reconnecting…`;
}

async function connect(room, attempt = 0) {
  // The /chat route sits behind a session check, for the WebSocket upgrade as for HTTP.
  try {
    await fetch('session', { method: 'POST' });
  } catch {
    // The app is not back yet: the WebSocket attempt below fails too and schedules the next try.
  }
  const url = new URL(`chat/room/${room}`, location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url);
  socket = ws;
  let opened = false;
  setChatEnabled(false, attempt === 0 ? 'connecting…' : $('chat-state').textContent);
  ws.addEventListener('open', () => {
    opened = true;
    setChatEnabled(true, `in room ${decodeURIComponent(room)}`);
  });
  ws.addEventListener('message', (message) => addMessage(message.data));
  ws.addEventListener('close', (event) => {
    if (socket !== ws) return;
    // A retry that found the app still down keeps saying why the chat went away.
    if (opened || attempt === 0) {
      $('chat').dataset.closeCode = String(event.code);
      setChatEnabled(false, closeState(event));
    }
    if (event.code === 1000) return;
    const next = opened ? 0 : attempt + 1;
    const delay = Math.min(LONGEST_RETRY, FIRST_RETRY * 2 ** next) * (0.75 + Math.random() / 2);
    retryTimer = setTimeout(() => connect(room, next), delay);
  });
}

$('join').addEventListener('submit', (event) => {
  event.preventDefault();
  clearTimeout(retryTimer);
  const previous = socket;
  socket = undefined;
  previous?.close(1000);
  connect(encodeURIComponent($('room').value || 'lobby'));
});

$('say').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('message').value.trim();
  if (!text || socket?.readyState !== WebSocket.OPEN) return;
  socket.send(`${$('name').value || 'anonymous'}: ${text}`);
  $('message').value = '';
});

async function refreshStats() {
  try {
    const stats = await (await fetch('stats')).json();
    $('stats-rows').replaceChildren(
      ...Object.entries(stats).map(([name, s]) => {
        const row = document.createElement('tr');
        for (const value of [
          name,
          s.requests.total,
          s.requests.active,
          s.requests.errors,
          s.tunnels.active,
          s.tunnels.total,
        ]) {
          const cell = document.createElement('td');
          cell.textContent = value;
          row.append(cell);
        }
        row.dataset.proxy = name;
        return row;
      }),
    );
  } catch {
    // The app is shutting down; the next tick tries again.
  }
}
refreshStats();
setInterval(refreshStats, 1000);

// The live chart: requests/s, p50 and p99 latency, open tunnels per proxy over the last minute,
// drawn on a canvas by the page itself from /live, once a second.
const COLOURS = { api: '#2563eb', chat: '#16a34a' };
const PANELS = [
  { title: 'requests/s', value: (p) => p.requests },
  { title: 'latency ms (p50 solid, p99 dashed)', value: (p) => p.p50, dashed: (p) => p.p99 },
  { title: 'open tunnels', value: (p) => p.tunnels },
];

function drawChart(history) {
  const canvas = $('chart');
  const g = canvas.getContext('2d');
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  const panelHeight = height / PANELS.length;
  const names = Object.keys(history.at(-1)?.proxies ?? COLOURS);
  PANELS.forEach((panel, index) => {
    const top = index * panelHeight;
    const values = history.flatMap((sample) =>
      names.flatMap((name) => [
        panel.value(sample.proxies[name]),
        panel.dashed?.(sample.proxies[name]) ?? 0,
      ]),
    );
    const max = Math.max(1, ...values);
    g.strokeStyle = '#d4d4d8';
    g.strokeRect(40, top + 16, width - 50, panelHeight - 26);
    g.fillStyle = '#3f3f46';
    g.font = '12px sans-serif';
    g.fillText(`${panel.title}, max ${Math.round(max)}`, 44, top + 12);
    const x = (i) => 40 + ((width - 50) * i) / 59;
    const y = (v) => top + panelHeight - 10 - ((panelHeight - 30) * v) / max;
    for (const name of names) {
      for (const [line, dash] of [
        [panel.value, []],
        ...(panel.dashed ? [[panel.dashed, [4, 3]]] : []),
      ]) {
        g.beginPath();
        g.setLineDash(dash);
        g.strokeStyle = COLOURS[name] ?? '#71717a';
        history.forEach((sample, i) => {
          const at = [x(i + 60 - history.length), y(line(sample.proxies[name]))];
          if (i === 0) g.moveTo(...at);
          else g.lineTo(...at);
        });
        g.stroke();
      }
      g.setLineDash([]);
    }
  });
  names.forEach((name, i) => {
    g.fillStyle = COLOURS[name] ?? '#71717a';
    g.fillText(name, width - 100 + i * 45, 12);
  });
  canvas.dataset.samples = String(history.length);
}

async function refreshChart() {
  try {
    drawChart(await (await fetch('live')).json());
  } catch {
    // The app is shutting down; the next tick tries again.
  }
}
refreshChart();
setInterval(refreshChart, 1000);
