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

$('join').addEventListener('submit', async (event) => {
  event.preventDefault();
  socket?.close();
  // The /chat route sits behind a session check, for the WebSocket upgrade as for HTTP.
  await fetch('session', { method: 'POST' });
  const room = encodeURIComponent($('room').value || 'lobby');
  const url = new URL(`chat/room/${room}`, location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url);
  socket = ws;
  setChatEnabled(false, 'connecting…');
  ws.addEventListener('open', () => setChatEnabled(true, `in room ${decodeURIComponent(room)}`));
  ws.addEventListener('message', (message) => addMessage(message.data));
  ws.addEventListener('close', () => socket === ws && setChatEnabled(false, 'disconnected'));
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
