'use strict';
// A small client library for s3-upload-gateway: load the service from the repository's proto and
// write a file as one object with one WriteObject stream (the gateway runs the multipart upload).

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { crc32c, crc32cBase64 } = require('./crc32c');

/** The repository's proto/ directory (this package lives in examples/node). */
const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const PROTO_FILE = 'gateway/v1/upload_service.proto';

const MiB = 1024 * 1024;

/**
 * Options for proto-loader. keepCase: field names stay snake_case, exactly as in the .proto (and
 * as the Python stubs spell them); int64 values are strings, enums their names.
 */
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

let cachedDefinition;

function definition() {
  cachedDefinition ??= protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
  return cachedDefinition;
}

/** The UploadService client constructor, loaded once from proto/. */
function loadService() {
  return grpc.loadPackageDefinition(definition()).gateway.v1.UploadService;
}

/** A client for the gateway at `address` ("host:port"); plaintext unless credentials are given. */
function createClient(address, credentials = grpc.credentials.createInsecure(), options = {}) {
  const UploadService = loadService();
  return new UploadService(address, credentials, options);
}

/** "crc32c" or "CHECKSUM_ALGORITHM_CRC32C" -> "CRC32C", checked against the .proto's enum. */
function algorithmName(name) {
  const strip = (text) => String(text).toUpperCase().replace(/^CHECKSUM_ALGORITHM_/, '');
  const known = definition()['gateway.v1.ChecksumAlgorithm'].type.value.map((v) => strip(v.name)).filter((n) => n !== 'UNSPECIFIED');
  if (!known.includes(strip(name))) throw new RangeError(`unknown checksum algorithm ${name} (one of ${known.join(', ')})`);
  return strip(name);
}

/** The algorithms S3 can keep as a checksum of the whole object's bytes (FULL_OBJECT). */
const FULL_OBJECT = new Set(['CRC32', 'CRC32C', 'CRC64NVME']);

function crcHash(crc) {
  let value = 0;
  return { update: (buf) => (value = crc(buf, value)), digest: () => crc32cBase64(value) }; // 4 bytes, big-endian
}

/** The whole-object checksums computed here. For the others (CRC64NVME, XXHASH*) the finish carries
 * no value: the gateway's own checksum, with every message's CRC-32C, still guards the object. */
const HASHES = {
  CRC32C: () => crcHash(crc32c),
  ...(zlib.crc32 && { CRC32: () => crcHash(zlib.crc32) }), // Node 20.15+
  SHA1: () => crypto.createHash('sha1'),
  SHA256: () => crypto.createHash('sha256'),
  SHA512: () => crypto.createHash('sha512'),
  MD5: () => crypto.createHash('md5'),
};

/**
 * Write the file at `path` to s3://bucket/key with one WriteObject stream: a spec (the object's
 * attributes and size), the file in `chunkSize` `data` messages each with its CRC-32C, then a
 * finish with the whole file's checksum, computed while reading. The gateway checks each message,
 * cuts the parts, checks the whole checksum and only then completes the object.
 *
 * Resolves with the WrittenObject. Rejects with the gRPC error (see errors.describeError): the
 * gateway has aborted its multipart upload, nothing was committed and there is nothing to clean up.
 * (writeFileResumable keeps what S3 holds instead, and continues from there.)
 *
 * checksumAlgorithm: a ChecksumAlgorithm name, "CRC32C" by default (FULL_OBJECT, as CRC32 and
 * CRC64NVME; the others COMPOSITE). contentType; attributes: other CreateMultipartUploadRequest
 * fields, snake_case as in the .proto (e.g. { metadata: { team: 'a' }, storage_class: 'STANDARD_IA' });
 * ifNoneMatch: true to write only if the key does not exist yet; onProgress(persistedBytes, size):
 * called each time S3 holds more of the object; chunkSize (1 MiB); callOptions (e.g. { deadline }).
 *
 * Backpressure: when write() returns false the file is not read further until 'drain'; grpc-js
 * queues up to 16 messages, so at most about 16 chunks are in memory whatever the file's size.
 */
async function writeFile(client, options) {
  const { bucket, key, path: filePath, checksumAlgorithm = 'CRC32C', contentType, attributes } = options;
  const { ifNoneMatch = false } = options;
  if (!bucket || !key || !filePath) throw new TypeError('bucket, key and path are required');
  const algorithm = algorithmName(checksumAlgorithm);
  const { size } = await fs.promises.stat(filePath);
  const spec = writeSpec({ bucket, key, algorithm, contentType, attributes, size, ifNoneMatch });
  return stream(client, { spec }, filePath, 0, algorithm, options);
}

/** The WriteObjectSpec of an object: its attributes, checksum algorithm (and type) and size. */
function writeSpec({ bucket, key, algorithm, contentType, attributes, size, ifNoneMatch }) {
  const object = {
    ...attributes,
    bucket,
    key,
    ...(contentType && { content_type: contentType }),
    checksum_algorithm: `CHECKSUM_ALGORITHM_${algorithm}`,
    ...(FULL_OBJECT.has(algorithm) && { checksum_type: 'CHECKSUM_TYPE_FULL_OBJECT' }),
  };
  return { object, object_size: String(size), ...(ifNoneMatch && { if_none_match: '*' }) };
}

/**
 * One WriteObject stream: `first` (a spec, or a resume), then the file from byte `offset` in
 * `data` messages each with its CRC-32C, then a finish with the whole file's checksum (the bytes
 * before `offset` are read to compute it, not sent). Resolves with the WrittenObject.
 *
 * Backpressure: when write() returns false the file is not read further until 'drain'; grpc-js
 * queues up to 16 messages, so at most about 16 chunks are in memory whatever the file's size.
 */
async function stream(client, first, filePath, offset, algorithm, options) {
  const { onProgress, onToken, chunkSize = MiB, callOptions = {} } = options;
  const hash = HASHES[algorithm]?.();
  const { size } = await fs.promises.stat(filePath);
  const call = client.WriteObject(callOptions);
  let ended = false;
  let wake = () => {};
  const written = new Promise((resolve, reject) => {
    let answer;
    const end = (settle) => (value) => {
      ended = true;
      wake();
      settle(value);
    };
    call.on('data', ({ progress, object: last }) => {
      if (progress) {
        onProgress?.(Number(progress.persisted_size), size);
        if (progress.write_token) onToken?.(progress.write_token, Number(progress.persisted_size));
      }
      if (last) answer = last;
    });
    call.on('error', end(reject)); // before 'end', which then changes nothing
    call.on('end', end(() => (answer ? resolve(answer) : reject(new Error('WriteObject ended without the written object')))));
  });
  written.catch(() => {}); // awaited below, unless a local error comes first
  // Write one message; when grpc-js's queue is full, wait for 'drain' or for the call to end (the
  // gateway may answer early, e.g. a checksum mismatch). False once the call has ended.
  const send = async (message) => {
    if (!ended && !call.write(message)) {
      await new Promise((resolve) => {
        wake = resolve;
        call.once('drain', resolve);
      });
    }
    return !ended;
  };

  try {
    if (await send(first)) {
      if (hash && offset > 0) {
        for await (const chunk of fs.createReadStream(filePath, { end: offset - 1, highWaterMark: chunkSize })) hash.update(chunk);
      }
      const file = fs.createReadStream(filePath, { start: offset, highWaterMark: chunkSize });
      try {
        for await (const chunk of file) {
          hash?.update(chunk);
          if (!(await send({ data: { content: chunk, crc32c: crc32c(chunk) } }))) break;
        }
      } finally {
        file.destroy();
      }
      const finish = hash ? { [`checksum_${algorithm.toLowerCase()}`]: hash.digest('base64') } : {};
      if (await send({ finish })) call.end();
    }
  } catch (localError) {
    call.cancel(); // e.g. the file could not be read: without a finish, nothing is committed
    throw localError;
  }
  return written;
}

const unary = (client, method, request) =>
  new Promise((resolve, reject) => client[method](request, (error, response) => (error ? reject(error) : resolve(response))));

/** The statuses after which a resumable write is asked where it stands and continued. */
const RESUMABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

/**
 * Write the file at `path` as a resumable write (StartResumableWrite, then WriteObject streams
 * that begin with `resume`): after a failure the write is continued from the bytes S3 holds,
 * through any replica of the gateway, instead of sent again from the start. Options as
 * writeFile's, plus: token (continue this write instead of starting one), onToken(token,
 * persisted) (keep the latest to resume from another process), attempts (streams in a row that
 * may fail without persisting anything new, 5). Resolves with the WrittenObject.
 */
async function writeFileResumable(client, options) {
  const { bucket, key, path: filePath, checksumAlgorithm = 'CRC32C', contentType, attributes } = options;
  const { ifNoneMatch = false, attempts = 5 } = options;
  let token = options.token;
  let algorithm = algorithmName(checksumAlgorithm);
  let offset = 0;
  if (!token) {
    const { size } = await fs.promises.stat(filePath);
    const spec = writeSpec({ bucket, key, algorithm, contentType, attributes, size, ifNoneMatch });
    ({ write_token: token } = await unary(client, 'StartResumableWrite', { spec }));
    options.onToken?.(token, 0);
  } else {
    offset = null; // ask
  }
  let failures = 0;
  for (;;) {
    if (offset === null) {
      const status = await unary(client, 'QueryWriteStatus', { write_token: token });
      if (status.object) return status.object; // finished before
      offset = Number(status.persisted_size);
      token = status.write_token || token;
      algorithm = algorithmName(status.spec?.object?.checksum_algorithm ?? algorithm);
    }
    const before = token;
    const keep = (newer, persisted) => {
      token = newer;
      options.onToken?.(newer, persisted);
    };
    try {
      const first = { resume: { write_token: token, write_offset: String(offset) } };
      return await stream(client, first, filePath, offset, algorithm, { ...options, onToken: keep });
    } catch (error) {
      if (!RESUMABLE.has(error.code)) throw error;
      failures = token === before ? failures + 1 : 0;
      if (failures >= attempts) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** failures));
      offset = null;
    }
  }
}

module.exports = { PROTO_ROOT, LOADER_OPTIONS, loadService, createClient, writeFile, writeFileResumable, MiB };
