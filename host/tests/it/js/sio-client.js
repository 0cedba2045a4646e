// A socket.io client for the stream tests: `node sio-client.js <client module> <url>
// <path> <query> <transports>`. Prints one line per event it sees ("connect <sid>",
// "<event> <args as JSON>", "disconnect <reason>", ...) and runs commands from stdin:
// "emit <event> <string arg>" and "close".
const io = require(process.argv[2]);
const [url, path, query, transports] = process.argv.slice(3);
const out = (...a) =>
  console.log(a.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' '));
const sock = io(url, {
  path,
  query,
  transports: transports.split(','),
  forceNew: true,
  reconnectionDelay: 100,
  reconnectionDelayMax: 200,
});
sock.on('connect', () => out('connect', sock.id));
sock.on('disconnect', (r) => out('disconnect', r));
sock.on('reconnect_attempt', () => out('reconnect_attempt'));
sock.io.on('reconnect_attempt', () => out('reconnect_attempt'));
sock.on('connect_error', (e) => out('connect_error', (e && e.message) || String(e)));
sock.on('error', (e) => out('error', typeof e === 'string' ? e : (e && e.message) || JSON.stringify(e)));
for (const ev of ['message', 'subscribed', 'unsubscribed', 'ping-back', 'echo']) {
  sock.on(ev, (...args) => out(ev, ...args));
}
require('readline')
  .createInterface({ input: process.stdin })
  .on('line', (line) => {
    const [cmd, ev, ...rest] = line.split(' ');
    if (cmd === 'emit') sock.emit(ev, rest.join(' '));
    if (cmd === 'close') sock.close();
  })
  .on('close', () => process.exit(0));
