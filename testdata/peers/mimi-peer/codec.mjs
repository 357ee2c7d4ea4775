// TLS presentation language + MLS varint (docs/protocol.md §1), strict.
export class DecodeError extends Error {}

export class Writer {
  constructor() { this.parts = []; }
  u8(v) { this.parts.push(Buffer.from([v])); return this; }
  u16(v) { const b = Buffer.alloc(2); b.writeUInt16BE(v); this.parts.push(b); return this; }
  u32(v) { const b = Buffer.alloc(4); b.writeUInt32BE(v); this.parts.push(b); return this; }
  u64(v) { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(v)); this.parts.push(b); return this; }
  raw(buf) { this.parts.push(Buffer.from(buf)); return this; }
  varint(n) { this.parts.push(encodeVarint(n)); return this; }
  opaque(buf) { buf = Buffer.from(buf); this.varint(buf.length); this.parts.push(buf); return this; }
  bytes() { return Buffer.concat(this.parts); }
}

export function encodeVarint(n) {
  if (n < 0 || n > 0x3fffffff) throw new Error('varint out of range: ' + n);
  if (n <= 63) return Buffer.from([n]);
  if (n <= 16383) return Buffer.from([0x40 | (n >> 8), n & 0xff]);
  const b = Buffer.alloc(4); b.writeUInt32BE((0x80000000 | n) >>> 0); return b;
}

export class Reader {
  constructor(buf, what = 'struct') { this.buf = Buffer.from(buf); this.off = 0; this.what = what; }
  need(n) { if (this.off + n > this.buf.length) throw new DecodeError(`${this.what}: truncated at ${this.off} (need ${n})`); }
  u8() { this.need(1); return this.buf[this.off++]; }
  u16() { this.need(2); const v = this.buf.readUInt16BE(this.off); this.off += 2; return v; }
  u32() { this.need(4); const v = this.buf.readUInt32BE(this.off); this.off += 4; return v; }
  u64() { this.need(8); const v = this.buf.readBigUInt64BE(this.off); this.off += 8; return v; }
  raw(n) { this.need(n); const v = this.buf.subarray(this.off, this.off + n); this.off += n; return v; }
  varint() {
    const first = this.u8(); const prefix = first >> 6;
    if (prefix === 0) return first & 0x3f;
    if (prefix === 1) { const v = ((first & 0x3f) << 8) | this.u8(); if (v < 64) throw new DecodeError('non-minimal varint'); return v; }
    if (prefix === 2) { this.need(3); const v = (((first & 0x3f) << 24) >>> 0) + this.buf.readUIntBE(this.off, 3); this.off += 3; if (v < 16384) throw new DecodeError('non-minimal varint'); return v; }
    throw new DecodeError('varint prefix 11');
  }
  opaque(min = 0, max = 0x3fffffff, name = 'opaque') {
    const n = this.varint();
    if (n < min || n > max) throw new DecodeError(`${name}: length ${n} outside ${min}-${max}`);
    return this.raw(n);
  }
  // vector of items: returns a Reader over exactly the vector's bytes
  vector(name = 'vector') { const n = this.varint(); return new Reader(this.raw(n), name); }
  done() { return this.off === this.buf.length; }
  end() { if (!this.done()) throw new DecodeError(`${this.what}: ${this.buf.length - this.off} trailing bytes`); }
  items(fn) { const out = []; while (!this.done()) out.push(fn(this)); return out; }
}

export const hex = (b) => Buffer.from(b).toString('hex');
