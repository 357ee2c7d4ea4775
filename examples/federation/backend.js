#!/usr/bin/env node
// A tiny legacy backend for caddy-mimi's "delivery backend" target
// (docs/protocol.md §11), in Node.js with no dependency. It checks each
// POST's HMAC-SHA256 signature (compared in constant time) and timestamp,
// drops deliveries it has seen (by Mimi-Delivery-Id), and prints one line
// per message it takes:
//
//   delivery <id> group <hex> from <sender> to <uri,...> <kind> <n> bytes
//
// Usage:
//   node backend.js -listen 127.0.0.1:9000 -key-file backend.key
//   MIMI_BACKEND_KEY=... node backend.js -listen 127.0.0.1:9000
//   node backend.js -self-test        checks the worked example of §11.3
//
// A real backend would hand the message to its recipients' devices and keep
// the seen delivery ids on disk for at least the gateway's give_up_after
// (72 h by default); this one keeps them in memory for 7 days.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');

const WINDOW_SECONDS = 300; // accepted distance of Mimi-Timestamp from now
const KEEP_IDS_MS = 7 * 24 * 3600 * 1000;
const MAX_BODY = 2 << 20; // a 1 MiB message in base64 and 64 URIs
const KINDS = { 1: 'public_message', 2: 'private_message', 3: 'welcome', 4: 'group_info', 5: 'key_package' };

// signature computes the Mimi-Signature value of a request.
function signature(key, timestamp, id, body) {
  const mac = crypto.createHmac('sha256', key);
  mac.update(`mimi-backend-v1\n${timestamp}\n${id}\n`);
  mac.update(body);
  return 'v1=' + mac.digest('hex');
}

// check returns null for a request whose signature and timestamp are good,
// else the reason to refuse it.
function check(key, headers, body, nowSeconds) {
  const ts = headers['mimi-timestamp'] || '';
  const id = headers['mimi-delivery-id'] || '';
  const got = Buffer.from(headers['mimi-signature'] || '');
  if (!/^[0-9]{1,19}$/.test(ts) || Math.abs(nowSeconds - Number(ts)) > WINDOW_SECONDS) {
    return 'stale or missing timestamp';
  }
  if (!/^[0-9a-f]{32}$/.test(id)) {
    return 'missing delivery id';
  }
  const want = Buffer.from(signature(key, ts, id, body));
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) {
    return 'bad signature';
  }
  return null;
}

// describe is the line printed for one message.
function describe(id, msg) {
  const bytes = Buffer.from(msg.message, 'base64');
  const kind = bytes.length >= 4 ? KINDS[bytes.readUInt16BE(2)] || 'unknown' : 'unknown';
  return `delivery ${id} group ${Buffer.from(msg.group_id, 'base64').toString('hex')} from ${msg.sender} ` +
    `to ${msg.recipients.join(',')} ${kind} ${bytes.length} bytes`;
}

function serve(listen, key) {
  const seen = new Map(); // delivery id -> time first taken
  const server = http.createServer((req, res) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        res.writeHead(413).end();
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (res.writableEnded) return;
      if (req.method !== 'POST') return res.writeHead(405, { Allow: 'POST' }).end();
      const body = Buffer.concat(chunks);
      const refusal = check(key, req.headers, body, Math.floor(Date.now() / 1000));
      if (refusal) {
        console.log(`refused: ${refusal}`);
        return res.writeHead(401).end();
      }
      const id = req.headers['mimi-delivery-id'];
      if (seen.has(id)) {
        console.log(`duplicate ${id} dropped`);
        return res.writeHead(200).end();
      }
      let msg;
      try {
        msg = JSON.parse(body.toString('utf8'));
        if (typeof msg.group_id !== 'string' || typeof msg.sender !== 'string' ||
          !Array.isArray(msg.recipients) || typeof msg.message !== 'string') throw new Error('fields');
      } catch (e) {
        return res.writeHead(400).end();
      }
      seen.set(id, Date.now());
      for (const [k, t] of seen) {
        if (Date.now() - t > KEEP_IDS_MS) seen.delete(k); else break;
      }
      console.log(describe(id, msg));
      res.writeHead(204).end();
    });
  });
  const i = listen.lastIndexOf(':');
  server.listen(Number(listen.slice(i + 1)), listen.slice(0, i), () => {
    console.error(`legacy backend listening on http://${listen}/`);
  });
}

// selfTest recomputes the worked example of docs/protocol.md §11.3.
function selfTest() {
  const key = Buffer.from('0123456789abcdef0123456789abcdef');
  const body = Buffer.from('{"group_id":"ZzE=","sender":"b.example","recipients":["mimi://a.example/d/alice/phone",' +
    '"mimi://a.example/d/alice/laptop"],"message":"3q2+7w=="}');
  const id = crypto.createHash('sha256').update(body).digest('hex').slice(0, 32);
  const want = { id: '245e3bda5aaf2f5e8333010d1eac50ec', sig: 'v1=70186d6a0136a535fb972fe0b71255489776de31e150fef46825650a8707bf69' };
  const headers = { 'mimi-timestamp': '1790000060', 'mimi-delivery-id': id, 'mimi-signature': signature(key, '1790000060', id, body) };
  const ok = id === want.id && headers['mimi-signature'] === want.sig && body.length === 143 &&
    check(key, headers, body, 1790000060) === null && check(key, headers, body, 1790000361) !== null &&
    check(Buffer.from('another key of thirty-two bytes!'), headers, body, 1790000060) !== null;
  console.log(ok ? 'self-test ok' : `self-test FAILED: id ${id}, signature ${headers['mimi-signature']}`);
  process.exit(ok ? 0 : 1);
}

function main(args) {
  const opt = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i].replace(/^--?/, '');
    if (a === 'self-test') opt.selfTest = true;
    else opt[a] = args[++i];
  }
  if (opt.selfTest) return selfTest();
  let key = process.env.MIMI_BACKEND_KEY || '';
  if (opt['key-file']) key = fs.readFileSync(opt['key-file'], 'utf8');
  key = Buffer.from(key.trim());
  if (key.length < 32) {
    console.error('backend.js: the key (-key-file or MIMI_BACKEND_KEY) must be at least 32 bytes');
    process.exit(2);
  }
  serve(opt.listen || '127.0.0.1:9000', key);
}

main(process.argv.slice(2));
