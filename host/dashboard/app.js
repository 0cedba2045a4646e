// The Apiary dashboard: one page over the broker's REST API (see README.md here).
// Preact + htm, no build step; every request carries the API key the user logged in with.
import { html, render, useState, useEffect, useRef } from './vendor/preact-htm.js';

const AUTH = 'apiary.dashboard.auth';
const WHO = 'apiary.dashboard.key';
let loggedOut = () => {};

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

const basic = (key, secret) => btoa(String.fromCharCode(...new TextEncoder().encode(`${key}:${secret}`)));

async function call(method, path, body, auth = sessionStorage.getItem(AUTH)) {
  // X-Requested-With keeps the browser's own login prompt away on a 401.
  const headers = { 'X-Requested-With': 'apiary-dashboard' };
  if (auth) headers.Authorization = `Basic ${auth}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method, headers, cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = text; } }
  if (!r.ok) {
    const why = (data && data.message) || `${r.status} ${r.statusText}`;
    throw new ApiError(r.status, why);
  }
  return data;
}

async function api(method, path, body) {
  try {
    return await call(method, path, body);
  } catch (e) {
    if (e.status === 401) loggedOut('The broker refused the key (revoked, disabled or expired): log in again.');
    throw e;
  }
}
const get = (path) => api('GET', path);

const query = (o) => {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v !== undefined && v !== null && v !== '') s.append(k, v);
  const t = s.toString();
  return t ? `?${t}` : '';
};
const enc = encodeURIComponent;

// ---- formatting ----
const num = (n) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US'));
const rate = (n) => (n === undefined ? '–' : `${n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString('en-US')}/s`);
const when = (t) => {
  if (t === undefined || t === null || t === '') return '–';
  const d = typeof t === 'number' ? new Date(t) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
};
const bytes = (n) => {
  if (n === undefined || n === null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
};
const duration = (s) => {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
};
const ms = (x) => (x === undefined || x === null ? '–' : `${x < 1 ? x.toFixed(2) : x.toFixed(1)} ms`);

// ---- hooks ----
function useHash() {
  const [h, set] = useState(location.hash);
  useEffect(() => {
    const on = () => set(location.hash);
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return h.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
}

// Runs `load` when `deps` change (and every `every` ms if given); {data, error, reload}.
function useLoad(load, deps, every) {
  const [state, set] = useState({ data: null, error: null });
  const [n, bump] = useState(0);
  useEffect(() => {
    let live = true;
    const run = () => load().then(
      (data) => live && set({ data, error: null, status: 200 }),
      (e) => live && set((s) => ({ data: s.data, error: e.message, status: e.status })),
    );
    run();
    const t = every ? setInterval(run, every) : null;
    return () => { live = false; if (t) clearInterval(t); };
  }, [...deps, n]);
  return { ...state, reload: () => bump((x) => x + 1) };
}

// ---- small parts ----
const Err = ({ error }) => (error ? html`<div class="error" role="alert">${error}</div>` : null);
const Notice = ({ text }) => (text ? html`<div class="notice" role="status">${text}</div>` : null);
const Card = ({ label, value, id }) => html`
  <div class="card" id=${id}><div class="label">${label}</div><div class="value">${value}</div></div>`;
const YesNo = ({ v }) => html`<span class=${v ? 'yes' : 'no'}>${v ? 'yes' : 'no'}</span>`;

function Pager({ page, hasnext, onPage, count }) {
  return html`<div class="pager">
    <button id="prev-page" disabled=${page <= 1} onClick=${() => onPage(page - 1)}>‹ Previous</button>
    <span>page ${page}${count !== undefined ? html` · ${num(count)} in all` : ''}</span>
    <button id="next-page" disabled=${!hasnext} onClick=${() => onPage(page + 1)}>Next ›</button>
  </div>`;
}

// A button that asks once more before it acts.
function Confirm({ label, confirm, onYes, id, cls = 'danger' }) {
  const [asking, setAsking] = useState(false);
  if (!asking) return html`<button id=${id} class=${cls} onClick=${() => setAsking(true)}>${label}</button>`;
  return html`<span>
    <button id=${id ? `${id}-confirm` : undefined} class=${cls} onClick=${() => { setAsking(false); onYes(); }}>${confirm}</button>
    <button onClick=${() => setAsking(false)}>Cancel</button>
  </span>`;
}

// ---- login ----
function Login({ message, onIn }) {
  const [key, setKey] = useState('');
  const [secret, setSecret] = useState('');
  const [error, setError] = useState(message);
  const [busy, setBusy] = useState(false);
  const submit = async (ev) => {
    ev.preventDefault();
    setBusy(true);
    setError('');
    const auth = basic(key.trim(), secret.trim());
    try {
      await call('GET', '/api/v5/monitor_current', undefined, auth);
    } catch (e) {
      if (e.status !== 403) {
        setBusy(false);
        setError(e.status === 401 ? 'Wrong API key or secret.' : e.message);
        return;
      }
      // A key without metrics:read may still manage what it has rights for.
    }
    sessionStorage.setItem(AUTH, auth);
    sessionStorage.setItem(WHO, key.trim());
    onIn(key.trim());
  };
  return html`<form class="login" id="login-form" onSubmit=${submit}>
    <h1>Apiary</h1>
    <p class="muted">Log in with an API key (<code>apiary ctl keys create</code>, or the key in
      <code>data/api-keys.txt</code> of a fresh broker).</p>
    <${Err} error=${error} />
    <label for="key">API key</label>
    <input id="key" autocomplete="username" value=${key} onInput=${(e) => setKey(e.target.value)} required />
    <label for="secret">Secret</label>
    <input id="secret" type="password" autocomplete="current-password" value=${secret}
      onInput=${(e) => setSecret(e.target.value)} required />
    <button id="login" class="primary" type="submit" disabled=${busy}>Log in</button>
  </form>`;
}

// ---- overview ----
const WINDOW_SECS = 900;

function Chart({ series }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    if (!box.current || !window.uPlot) return;
    const data = [series.map((p) => p.t), series.map((p) => p.received), series.map((p) => p.sent), series.map((p) => p.dropped)];
    if (!plot.current) {
      plot.current = new window.uPlot({
        width: box.current.clientWidth || 800,
        height: 240,
        series: [
          {},
          { label: 'received/s', stroke: '#d97706', width: 2 },
          { label: 'sent/s', stroke: '#2563eb', width: 2 },
          { label: 'dropped/s', stroke: '#b42318', width: 1 },
        ],
        // Always the whole window (server time), however few points there are yet.
        scales: { x: { time: true, range: (u, lo, hi) => [hi - WINDOW_SECS, hi] } },
        axes: [{}, { size: 60 }],
      }, data, box.current);
    } else {
      plot.current.setData(data);
    }
  }, [series]);
  useEffect(() => () => { if (plot.current) plot.current.destroy(); plot.current = null; }, []);
  return html`<div id="rate-chart" ref=${box}></div>`;
}

function Overview() {
  const [cur, setCur] = useState(null);
  const [series, setSeries] = useState([]);
  const [error, setError] = useState('');
  useEffect(() => {
    let live = true;
    get(`/api/v5/monitor?latest=${WINDOW_SECS}`).then((h) => {
      if (!live) return;
      const pts = [];
      for (let i = 1; i < h.length; i += 1) {
        const secs = (h[i].time_stamp - h[i - 1].time_stamp) / 1000 || 1;
        pts.push({ t: h[i].time_stamp / 1000, received: h[i].received / secs, sent: h[i].sent / secs, dropped: h[i].dropped / secs });
      }
      setSeries((s) => [...pts, ...s]);
    }, (e) => live && setError(e.message));
    const poll = () => !document.hidden && get('/api/v5/monitor_current').then((c) => {
      if (!live) return;
      setCur(c);
      setError('');
      // The broker's clock, as the history's: the browser's may differ.
      const t = c.time_stamp / 1000;
      setSeries((s) => [...s.filter((p) => p.t > t - WINDOW_SECS && p.t < t), { t, received: c.received_msg_rate, sent: c.sent_msg_rate, dropped: c.dropped_msg_rate }]);
    }, (e) => live && setError(e.message));
    poll();
    const timer = setInterval(poll, 2000);
    return () => { live = false; clearInterval(timer); };
  }, []);
  return html`<section id="overview">
    <h1>Overview</h1>
    <${Err} error=${error} />
    ${cur && html`<div class="cards">
      <${Card} id="card-connections" label="Connections" value=${num(cur.live_connections)} />
      <${Card} id="card-sessions" label="Sessions" value=${num(cur.sessions)} />
      <${Card} id="card-subscriptions" label="Subscriptions" value=${num(cur.subscriptions)} />
      <${Card} id="card-retained" label="Retained" value=${num(cur.retained)} />
      <${Card} id="card-received" label="Received" value=${rate(cur.received_msg_rate)} />
      <${Card} id="card-sent" label="Sent" value=${rate(cur.sent_msg_rate)} />
      <${Card} id="card-dropped" label="Dropped" value=${rate(cur.dropped_msg_rate)} />
      <${Card} id="card-uptime" label=${`Uptime · v${cur.version}`} value=${duration(cur.uptime_secs)} />
    </div>`}
    <div class="panel"><h2>Messages per second, last ${WINDOW_SECS / 60} minutes</h2><${Chart} series=${series} /></div>
    ${cur && html`<div class="panel"><h2>Listeners</h2>
      <table id="listeners"><thead><tr><th>Listener</th><th>Bound to</th><th class="num">Open connections</th><th class="num">Accepted since start</th></tr></thead>
      <tbody>${cur.listeners.map((l) => html`<tr>
        <td>${l.type}</td><td class="mono">${l.bind}</td><td class="num">${num(l.current_connections)}</td><td class="num">${num(l.accepted)}</td>
      </tr>`)}</tbody></table></div>`}
  </section>`;
}

// ---- clients ----
function Clients() {
  const [form, setForm] = useState({ like_clientid: '', like_username: '', conn_state: '' });
  const [filter, setFilter] = useState(form);
  const [page, setPage] = useState(1);
  const r = useLoad(() => get(`/api/v5/clients${query({ ...filter, page, limit: 50 })}`), [filter, page], 5000);
  const field = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  const search = (ev) => { ev.preventDefault(); setPage(1); setFilter(form); };
  const meta = (r.data && r.data.meta) || {};
  return html`<section id="clients">
    <h1>Clients</h1>
    <form class="bar" onSubmit=${search}>
      <input id="client-search" placeholder="client id contains" value=${form.like_clientid} onInput=${field('like_clientid')} />
      <input id="username-search" placeholder="username contains" value=${form.like_username} onInput=${field('like_username')} />
      <select id="conn-state" value=${form.conn_state} onChange=${field('conn_state')}>
        <option value="">online and offline</option><option value="connected">online</option><option value="disconnected">offline</option>
      </select>
      <button id="search" class="primary" type="submit">Search</button>
    </form>
    <${Err} error=${r.error} />
    <table id="clients-table"><thead><tr>
      <th>Client ID</th><th>Username</th><th>Online</th><th>Address</th><th>Protocol</th>
      <th class="num">Subscriptions</th><th class="num">Queued</th><th>Connected at</th>
    </tr></thead><tbody>
      ${((r.data && r.data.data) || []).map((c) => html`<tr data-clientid=${c.clientid}>
        <td><a class="client-link" href=${`#/clients/${enc(c.clientid)}`}>${c.clientid}</a></td>
        <td>${c.username || html`<span class="muted">–</span>`}</td>
        <td><${YesNo} v=${c.connected} /></td>
        <td class="mono">${c.ip_address ? `${c.ip_address}:${c.port}` : '–'}</td>
        <td>${c.proto_name || ''} ${c.proto_ver || ''}</td>
        <td class="num">${num(c.subscriptions_cnt)}</td>
        <td class="num">${num(c.mqueue_len)}</td>
        <td>${when(c.connected_at)}</td>
      </tr>`)}
    </tbody></table>
    ${r.data && !r.data.data.length ? html`<p class="muted" id="no-clients">No client matches.</p>` : ''}
    <${Pager} page=${page} hasnext=${meta.hasnext} count=${meta.count} onPage=${setPage} />
  </section>`;
}

function ClientDetail({ id }) {
  const path = `/api/v5/clients/${enc(id)}`;
  const c = useLoad(() => get(path), [id], 5000);
  const subs = useLoad(() => get(`${path}/subscriptions`), [id], 5000);
  const queued = useLoad(() => get(`${path}/mqueue_messages?limit=20&payload=plain`), [id]);
  const [notice, setNotice] = useState('');
  const [error, setError] = useState('');
  const kick = () => api('DELETE', path).then(
    () => { setNotice(`Client ${id} was kicked.`); c.reload(); subs.reload(); },
    (e) => setError(e.message),
  );
  // A session that ended (a kicked clean session, an expired one) answers 404.
  const gone = c.status === 404;
  const d = gone ? null : c.data;
  const shown = d ? [
    ['Client ID', d.clientid], ['Username', d.username], ['Online', html`<${YesNo} v=${d.connected} />`],
    ['Address', d.ip_address ? `${d.ip_address}:${d.port}` : '–'], ['Protocol', `${d.proto_name || ''} ${d.proto_ver || ''}`],
    ['Keepalive', `${d.keepalive ?? '–'} s`], ['Clean start', String(d.clean_start)], ['Expiry interval', `${d.expiry_interval ?? '–'} s`],
    ['Connected at', when(d.connected_at)], ['Disconnected at', when(d.disconnected_at)], ['Created at', when(d.created_at)],
    ['Subscriptions', num(d.subscriptions_cnt)], ['Queued / max', `${num(d.mqueue_len)} / ${num(d.mqueue_max)}`],
    ['In flight / max', `${num(d.inflight_cnt)} / ${num(d.inflight_max)}`],
    ['Messages received / sent', `${num(d.recv_msg)} / ${num(d.send_msg)}`], ['Dropped', num(d.mqueue_dropped)],
  ] : [];
  return html`<section id="client-detail">
    <p><a href="#/clients">‹ Clients</a></p>
    <h1>Client <code id="detail-clientid">${id}</code></h1>
    <${Err} error=${error || (gone ? '' : c.error)} /><${Notice} text=${notice} />
    ${gone && html`<p class="muted" id="gone">Offline, and its session has ended.</p>`}
    ${d && html`<div class="bar">
      ${d.connected ? html`<${Confirm} id="kick" label="Kick" confirm="Disconnect it now" onYes=${kick} />` : html`<span class="muted" id="offline">Offline: nothing to kick.</span>`}
    </div>
    <div class="panel"><dl class="kv" id="client-fields">${shown.map(([k, v]) => html`<dt>${k}</dt><dd>${v ?? '–'}</dd>`)}</dl></div>`}
    <div class="panel"><h2>Subscriptions</h2>
      <table id="client-subscriptions"><thead><tr><th>Topic</th><th>QoS</th><th>No local</th><th>Retain as published</th><th>Retain handling</th></tr></thead>
      <tbody>${(subs.data || []).map((s) => html`<tr><td class="mono">${s.topic}</td><td>${s.qos}</td><td>${String(s.nl ?? '–')}</td><td>${String(s.rap ?? '–')}</td><td>${s.rh ?? '–'}</td></tr>`)}</tbody></table>
    </div>
    <div class="panel"><h2>Queued messages (first 20)</h2>
      <table id="client-mqueue"><thead><tr><th>Topic</th><th>QoS</th><th>Payload</th><th>Published at</th></tr></thead>
      <tbody>${((queued.data && queued.data.data) || []).map((m) => html`<tr><td class="mono">${m.topic}</td><td>${m.qos}</td><td class="mono">${String(m.payload ?? '').slice(0, 120)}</td><td>${when(m.publish_at)}</td></tr>`)}</tbody></table>
    </div>
  </section>`;
}

// ---- subscriptions ----
function Subscriptions() {
  const [form, setForm] = useState({ clientid: '', match_topic: '' });
  const [filter, setFilter] = useState(form);
  const [page, setPage] = useState(1);
  const r = useLoad(() => get(`/api/v5/subscriptions${query({ ...filter, page, limit: 50 })}`), [filter, page], 5000);
  const meta = (r.data && r.data.meta) || {};
  return html`<section id="subscriptions">
    <h1>Subscriptions</h1>
    <form class="bar" onSubmit=${(ev) => { ev.preventDefault(); setPage(1); setFilter(form); }}>
      <input id="sub-clientid" placeholder="client id" value=${form.clientid} onInput=${(e) => setForm({ ...form, clientid: e.target.value })} />
      <input id="sub-topic" placeholder="topic the filter matches" value=${form.match_topic} onInput=${(e) => setForm({ ...form, match_topic: e.target.value })} />
      <button class="primary" type="submit">Search</button>
    </form>
    <${Err} error=${r.error} />
    <table id="subscriptions-table"><thead><tr><th>Client ID</th><th>Topic filter</th><th>QoS</th><th>No local</th><th>Retain as published</th><th>Retain handling</th></tr></thead>
    <tbody>${((r.data && r.data.data) || []).map((s) => html`<tr>
      <td><a href=${`#/clients/${enc(s.clientid)}`}>${s.clientid}</a></td><td class="mono">${s.topic}</td><td>${s.qos}</td>
      <td>${String(s.nl ?? '–')}</td><td>${String(s.rap ?? '–')}</td><td>${s.rh ?? '–'}</td></tr>`)}</tbody></table>
    <${Pager} page=${page} hasnext=${meta.hasnext} count=${meta.count} onPage=${setPage} />
  </section>`;
}

// ---- retained ----
function Retained() {
  const [topic, setTopic] = useState('#');
  const [filter, setFilter] = useState('#');
  const [afters, setAfters] = useState([null]);
  const [notice, setNotice] = useState('');
  const [error, setError] = useState('');
  const after = afters[afters.length - 1];
  const r = useLoad(() => get(`/retained${query({ topic: filter, limit: 50, after })}`), [filter, after]);
  const remove = (t) => api('DELETE', `/retained${query({ topic: t })}`).then(
    () => { setNotice(`Deleted the retained message on ${t}.`); r.reload(); },
    (e) => setError(e.message),
  );
  const meta = (r.data && r.data.meta) || {};
  return html`<section id="retained">
    <h1>Retained messages</h1>
    <form class="bar" onSubmit=${(ev) => { ev.preventDefault(); setAfters([null]); setFilter(topic || '#'); }}>
      <input id="retained-filter" placeholder="topic filter, e.g. sensors/#" value=${topic} onInput=${(e) => setTopic(e.target.value)} />
      <button class="primary" type="submit">Show</button>
    </form>
    <${Err} error=${error || r.error} /><${Notice} text=${notice} />
    <table id="retained-table"><thead><tr><th>Topic</th><th>QoS</th><th class="num">Size</th><th>Payload</th><th>Published at</th><th></th></tr></thead>
    <tbody>${((r.data && r.data.data) || []).map((m) => html`<tr key=${m.topic}>
      <td class="mono">${m.topic}</td><td>${m.qos}</td><td class="num">${bytes(m.size)}</td>
      <td class="mono">${m.payload === null ? html`<span class="muted">binary</span>` : m.payload.slice(0, 120)}</td>
      <td>${when(m.publish_at_ms)}</td>
      <td><${Confirm} label="Delete" confirm="Delete it" onYes=${() => remove(m.topic)} /></td></tr>`)}</tbody></table>
    <div class="pager">
      <button disabled=${afters.length < 2} onClick=${() => setAfters(afters.slice(0, -1))}>‹ Previous</button>
      <span>${num(meta.count)} in all</span>
      <button disabled=${!meta.hasnext} onClick=${() => setAfters([...afters, meta.next])}>Next ›</button>
    </div>
  </section>`;
}

// ---- plugins ----
function PluginLogs({ name }) {
  const r = useLoad(() => get(`/plugins/${enc(name)}/logs?limit=200`), [name], 5000);
  const lines = (r.data && r.data.lines) || [];
  return html`<tr><td colspan="12"><${Err} error=${r.error} />
    <pre class="logs" id=${`logs-${name}`}>${lines.length ? lines.map((l) => `${new Date(l.at_ms).toLocaleTimeString()} ${l.level.toUpperCase()} ${l.message}\n`) : 'No log lines yet.'}</pre></td></tr>`;
}

function Plugins() {
  const r = useLoad(() => get('/plugins'), [], 5000);
  const [open, setOpen] = useState('');
  const [notice, setNotice] = useState('');
  const [error, setError] = useState('');
  const reload = (name) => api('POST', `/plugins/${enc(name)}/reload`).then(
    () => { setNotice(`Plugin ${name} reloaded.`); r.reload(); },
    (e) => setError(`${name}: ${e.message}`),
  );
  return html`<section id="plugins">
    <h1>Plugins</h1>
    <${Err} error=${error || r.error} /><${Notice} text=${notice} />
    <table id="plugins-table"><thead><tr>
      <th>Plugin</th><th>State</th><th>Roles</th><th>Version</th><th class="num">Calls</th><th class="num">Errors</th>
      <th class="num">Mean</th><th class="num">p99 ≤</th><th class="num">Instances</th><th class="num">Memory</th><th>Loaded at</th><th></th>
    </tr></thead><tbody>
      ${(r.data || []).map((p) => html`<tr data-plugin=${p.name}>
        <td><strong>${p.name}</strong>${p.mount ? html`<div class="muted mono">${p.mount}</div>` : ''}${p.last_error ? html`<div class="no" title=${p.last_error}>${p.last_error.slice(0, 80)}</div>` : ''}</td>
        <td class=${`state-${p.state}`}>${p.state}</td>
        <td>${(p.roles || []).join(', ')}</td>
        <td class="mono">${p.version || '–'}</td>
        <td class="num">${num(p.calls)}</td><td class="num">${num(p.errors)}</td>
        <td class="num">${ms(p.latency && p.latency.mean_ms)}</td><td class="num">${!p.latency ? '–' : p.latency.p99_ms === null ? '> 2500 ms' : ms(p.latency.p99_ms)}</td>
        <td class="num">${num(p.instances)}</td><td class="num">${bytes(p.memory_bytes)}</td>
        <td>${when(p.loaded_at)}</td>
        <td><button class="reload" onClick=${() => reload(p.name)}>Reload</button>
          <button class="logs" onClick=${() => setOpen(open === p.name ? '' : p.name)}>${open === p.name ? 'Hide logs' : 'Logs'}</button></td>
      </tr>${open === p.name ? html`<${PluginLogs} name=${p.name} />` : ''}`)}
    </tbody></table>
  </section>`;
}

// ---- API keys ----
function NewKey({ onMade }) {
  const [f, setF] = useState({ name: '', role: 'viewer', desc: '', expires: '' });
  const [error, setError] = useState('');
  const submit = (ev) => {
    ev.preventDefault();
    const body = { name: f.name, role: f.role, desc: f.desc };
    if (f.expires) body.expired_at = new Date(f.expires).toISOString().replace(/\.\d+Z$/, 'Z');
    api('POST', '/api/v5/api_key', body).then((k) => { setError(''); setF({ ...f, name: '', desc: '' }); onMade(k); }, (e) => setError(e.message));
  };
  const field = (k) => (e) => setF({ ...f, [k]: e.target.value });
  return html`<form class="bar" id="new-key" onSubmit=${submit}>
    <input id="new-key-name" placeholder="name" value=${f.name} onInput=${field('name')} required />
    <select id="new-key-role" value=${f.role} onChange=${field('role')}>
      <option value="administrator">administrator</option><option value="viewer">viewer</option><option value="publisher">publisher</option>
    </select>
    <input id="new-key-desc" placeholder="description" value=${f.desc} onInput=${field('desc')} />
    <label class="muted">expires <input id="new-key-expires" type="datetime-local" value=${f.expires} onInput=${field('expires')} /></label>
    <button class="primary" type="submit">Create key</button>
    <${Err} error=${error} />
  </form>`;
}

function Keys() {
  const r = useLoad(() => get('/api/v5/api_key'), []);
  const [secret, setSecret] = useState(null);
  const [error, setError] = useState('');
  const act = (p) => p.then(() => { setError(''); r.reload(); }, (e) => setError(e.message));
  const path = (k) => `/api/v5/api_key/${enc(k.name)}`;
  const mine = (k) => k.api_key === sessionStorage.getItem(WHO);
  const shown = (k) => {
    // Rotating the key this page logged in with: carry on with its new secret.
    if (mine(k)) sessionStorage.setItem(AUTH, basic(k.api_key, k.api_secret));
    setSecret(k);
    r.reload();
  };
  return html`<section id="keys">
    <h1>API keys</h1>
    <${NewKey} onMade=${shown} />
    ${secret && html`<div class="notice" id="new-secret">
      <p>Key <strong>${secret.name}</strong>: <code>${secret.api_key}</code>, secret <code id="new-secret-value">${secret.api_secret}</code></p>
      <p>Copy the secret now: it is not shown again. <button onClick=${() => setSecret(null)}>Done</button></p></div>`}
    <${Err} error=${error || r.error} />
    <table id="keys-table"><thead><tr><th>Name</th><th>Key</th><th>Role</th><th>Tenant</th><th>Enabled</th><th>Expires</th><th>Last used</th><th>Source</th><th>Description</th><th></th></tr></thead>
    <tbody>${(r.data || []).map((k) => html`<tr key=${k.name} data-key=${k.name}>
      <td>${k.name}</td><td class="mono">${k.api_key}</td><td>${k.role || k.rights.join(', ')}</td><td>${k.tenant}</td>
      <td><${YesNo} v=${k.enable && !k.expired} /></td><td>${k.expired_at === 'infinity' ? 'never' : when(k.expired_at)}</td>
      <td>${when(k.last_used_at)}</td><td>${k.source}</td><td>${k.desc}</td>
      <td>${k.source === 'api' ? html`
        ${k.enable && mine(k)
          ? html`<${Confirm} label="Disable" confirm="Disable (logs you out)" onYes=${() => act(api('PUT', path(k), { enable: false }))} />`
          : html`<button onClick=${() => act(api('PUT', path(k), { enable: !k.enable }))}>${k.enable ? 'Disable' : 'Enable'}</button>`}
        <${Confirm} label="Rotate" confirm="New secret" cls="" onYes=${() => api('POST', `${path(k)}/rotate`).then(shown, (e) => setError(e.message))} />
        <${Confirm} label="Delete" confirm=${mine(k) ? 'Delete (logs you out)' : 'Delete it'} onYes=${() => act(api('DELETE', path(k)))} />` : html`<span class="muted">from the keys file</span>`}</td>
    </tr>`)}</tbody></table>
  </section>`;
}

// ---- the frame ----
const PAGES = [
  ['overview', 'Overview', Overview], ['clients', 'Clients', Clients], ['subscriptions', 'Subscriptions', Subscriptions],
  ['retained', 'Retained', Retained], ['plugins', 'Plugins', Plugins], ['keys', 'API keys', Keys],
];

function App() {
  const [who, setWho] = useState(sessionStorage.getItem(AUTH) ? sessionStorage.getItem(WHO) || '' : null);
  const [message, setMessage] = useState('');
  const [page, arg] = useHash();
  loggedOut = (why) => {
    sessionStorage.removeItem(AUTH);
    sessionStorage.removeItem(WHO);
    setWho(null);
    setMessage(why);
  };
  if (who === null) {
    return html`<${Login} message=${message} onIn=${(k) => { setMessage(''); setWho(k); if (!page) location.hash = '#/overview'; }} />`;
  }
  const found = PAGES.find(([p]) => p === page) || PAGES[0];
  const body = found[0] === 'clients' && arg ? html`<${ClientDetail} id=${arg} />` : html`<${found[2]} />`;
  return html`
    <header><span class="brand">Apiary</span>
      <nav>${PAGES.map(([p, label]) => html`<a id=${`nav-${p}`} class=${p === found[0] ? 'active' : ''} href=${`#/${p}`}>${label}</a>`)}</nav>
      <span class="who">key <code>${who}</code></span>
      <button id="logout" onClick=${() => loggedOut('Logged out.')}>Log out</button>
    </header>
    <main key=${`${found[0]}/${arg || ''}`}>${body}</main>`;
}

const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);
