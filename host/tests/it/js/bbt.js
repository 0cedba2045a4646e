// Drives Beebotte's official Node SDK (npm beebotte@1.7.0, unchanged) for the beebotte
// tests: one JSON command per stdin line, one JSON event per stdout line.
// Usage: node bbt.js <node_modules dir>
'use strict'
const path = require('path')
const readline = require('readline')
const bbt = require(path.join(process.argv[2], 'beebotte'))

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const text = (e) => (e === undefined || e === null) ? null : String(e.message || e)
const streams = {}
let connector = null

function stream (c) {
  const s = new bbt.Stream(c.opts)
  const name = c.name
  streams[name] = s
  for (const ev of ['connected', 'disconnected', 'reconnected']) {
    s.on(ev, () => out({ ev, name }))
  }
  s.on('error', (e) => out({ ev: 'error', name, error: text(e) }))
  for (const ev of ['subscribed', 'unsubscribed']) {
    s.on(ev, (sub) => out({ ev, name, channel: sub.channel, resource: sub.resource }))
  }
  for (const ev of ['subscribeError', 'unsubscribeError']) {
    s.on(ev, (msg, sub) => out({ ev, name, message: text(msg), channel: sub && sub.channel, resource: sub && sub.resource }))
  }
  for (const ev of ['publishError', 'writeError']) {
    s.on(ev, (msg) => out({ ev, name, message: text(msg) }))
  }
}

function sid (c) {
  const conn = streams[c.name].connection
  // socket.io: the id `getsid` delivered; MQTT: the client id.
  const mqtt = conn.connection && conn.connection.options
  const id = conn._id || (mqtt && mqtt.clientId)
  out({ ev: 'sid', id: c.id, sid: id || null })
}

function call (c) {
  let done = false
  // The SDK calls back twice on a network error: report the first.
  connector[c.method](...c.args, (err, res) => {
    if (done) return
    done = true
    out({ ev: 'result', id: c.id, err: err === undefined ? null : err, res: res === undefined ? null : res })
  })
}

function handle (c) {
  const s = streams[c.name]
  switch (c.op) {
    case 'connector': connector = new bbt.Connector(c.opts); out({ ev: 'ok', id: c.id }); break
    case 'call': call(c); break
    case 'stream': stream(c); break
    case 'sid': sid(c); break
    case 'subscribe':
      // Without a resource the SDK subscribes to the whole channel (its wildcard).
      if (c.resource === undefined) {
        s.subscribe(c.channel, c.args || {}, (msg) => out({ ev: 'message', name: c.name, msg }))
      } else {
        s.subscribe(c.channel, c.resource, c.args || {}, (msg) => out({ ev: 'message', name: c.name, msg }))
      }
      break
    case 'unsubscribe': s.unsubscribe(c.channel, c.resource); break
    case 'publish': s.publish(c.channel, c.resource, c.data, c.args); break
    case 'write': s.write(c.channel, c.resource, c.data, c.args); break
    case 'disconnect': s.disconnect(); out({ ev: 'ok', id: c.id }); break
    default: out({ ev: 'throw', id: c.id, error: 'unknown op ' + c.op })
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let c = null
  try {
    c = JSON.parse(line)
    handle(c)
  } catch (e) {
    out({ ev: 'throw', id: c && c.id, error: String(e && e.stack) })
  }
})
// A crash in the SDK (e.g. a topic it cannot parse) must show, not hang the test.
process.on('uncaughtException', (e) => out({ ev: 'crash', error: String(e && e.stack) }))
