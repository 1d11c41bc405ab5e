'use strict';
// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), slicing-by-8 in plain JavaScript.
// Node 20 has no built-in CRC-32C; this runs at a few hundred MiB/s, plenty for an example.

const POLY = 0x82f63b78;
const TABLES = (() => {
  const t = Array.from({ length: 8 }, () => new Int32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[0][n] = c;
  }
  for (let n = 0; n < 256; n++) {
    for (let s = 1; s < 8; s++) t[s][n] = (t[s - 1][n] >>> 8) ^ t[0][t[s - 1][n] & 0xff];
  }
  return t;
})();
const [T0, T1, T2, T3, T4, T5, T6, T7] = TABLES;

/**
 * Continue a CRC-32C over `buf`. Start with crc32c(buf) and feed the result back in as `crc`
 * for the next buffer. Returns an unsigned 32-bit integer.
 */
function crc32c(buf, crc = 0) {
  let c = ~crc;
  let i = 0;
  const end8 = buf.length - (buf.length % 8);
  for (; i < end8; i += 8) {
    const lo = c ^ (buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24));
    c =
      T7[lo & 0xff] ^
      T6[(lo >>> 8) & 0xff] ^
      T5[(lo >>> 16) & 0xff] ^
      T4[lo >>> 24] ^
      T3[buf[i + 4]] ^
      T2[buf[i + 5]] ^
      T1[buf[i + 6]] ^
      T0[buf[i + 7]];
  }
  for (; i < buf.length; i++) c = (c >>> 8) ^ T0[(c ^ buf[i]) & 0xff];
  return ~c >>> 0;
}

/** The base64 of the big-endian 4-byte digest: how S3 (and the gateway) write a CRC-32C. */
function crc32cBase64(crc) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(crc >>> 0);
  return b.toString('base64');
}

module.exports = { crc32c, crc32cBase64 };
