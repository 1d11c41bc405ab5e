'use strict';
// A small client library for s3-upload-gateway: load the service from the repository's proto and
// upload a file as a multipart upload, streaming each part in 1 MiB messages.

const fs = require('node:fs');
const path = require('node:path');
const { once } = require('node:events');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { crc32c, crc32cBase64 } = require('./crc32c');

/** The repository's proto/ directory (this package lives in examples/node). */
const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const PROTO_FILE = 'gateway/v1/upload_service.proto';

const MiB = 1024 * 1024;
const MIN_PART_SIZE = 5 * MiB; // S3's minimum for every part but the last.
const MAX_PARTS = 10000;

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

let cachedService;

/** The UploadService client constructor, loaded once from proto/. */
function loadService() {
  if (!cachedService) {
    const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    cachedService = grpc.loadPackageDefinition(definition).gateway.v1.UploadService;
  }
  return cachedService;
}

/** A client for the gateway at `address` ("host:port"); plaintext unless credentials are given. */
function createClient(address, credentials = grpc.credentials.createInsecure(), options = {}) {
  const UploadService = loadService();
  return new UploadService(address, credentials, options);
}

/** Promisified unary call. */
function unary(client, method, request, callOptions = {}) {
  return new Promise((resolve, reject) => {
    client[method](request, callOptions, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

/** "CRC32C" or "CHECKSUM_ALGORITHM_CRC32C" -> "CHECKSUM_ALGORITHM_CRC32C"; empty -> undefined. */
function normaliseAlgorithm(name) {
  if (!name) return undefined;
  const upper = String(name).toUpperCase();
  return upper.startsWith('CHECKSUM_ALGORITHM_') ? upper : `CHECKSUM_ALGORITHM_${upper}`;
}

/**
 * Stream one part: a header, then `data` messages of `chunkSize` bytes read lazily from the file,
 * then (for CRC32C) a trailer with the part's checksum.
 *
 * Backpressure: grpc-js's writable buffers up to 16 messages before write() returns false, so
 * besides waiting for 'drain' when write() says so, sending also pauses while `maxBuffered`
 * messages are not yet handed to HTTP/2 (whose flow control then holds back the file reads): at
 * most about maxBuffered chunks of a part are in memory. Resolves with the UploadPartResponse;
 * rejects with the gRPC error, which may come before all bytes were sent when the gateway refuses
 * the part early.
 */
async function uploadPart(client, { header, filePath, start, length, chunkSize, withCrc32c, maxBuffered = 4, callOptions }) {
  let call;
  const response = new Promise((resolve, reject) => {
    call = client.UploadPart(callOptions, (err, res) => (err ? reject(err) : resolve(res)));
  });
  // Settles as soon as the call ends, so that no wait below outlives a failed call.
  const ended = response.then(
    () => 'ended',
    () => 'ended',
  );
  let unwritten = 0;
  let wake;
  const written = () => {
    unwritten--;
    wake?.();
  };
  const send = async (message) => {
    unwritten++;
    if (!call.write(message, written)) {
      if ((await Promise.race([once(call, 'drain').then(() => 'drain'), ended])) === 'ended') return false;
    }
    while (unwritten >= maxBuffered) {
      const more = new Promise((resolve) => {
        wake = () => resolve('written');
      });
      const outcome = await Promise.race([more, ended]);
      wake = undefined;
      if (outcome === 'ended') return false;
    }
    return true;
  };

  try {
    let sending = await send({ header: { ...header, content_length: String(length) } });
    let partCrc = 0;
    if (sending && length > 0) {
      const stream = fs.createReadStream(filePath, { start, end: start + length - 1, highWaterMark: chunkSize });
      try {
        for await (const chunk of stream) {
          const data = { content: chunk };
          if (withCrc32c) {
            data.crc32c = crc32c(chunk); // checked by the gateway as the chunk arrives
            partCrc = crc32c(chunk, partCrc);
          }
          if (!(sending = await send({ data }))) break; // the gateway already answered
        }
      } finally {
        stream.destroy();
      }
    }
    if (sending && withCrc32c) sending = await send({ trailer: { checksum_crc32c: crc32cBase64(partCrc) } });
    if (sending) call.end();
  } catch (localError) {
    call.cancel(); // e.g. the file could not be read: nothing of this part is committed
    throw localError;
  }
  return response;
}

/** The checksum_* fields that are set on `message`. */
function checksumsOf(message) {
  return Object.fromEntries(Object.entries(message).filter(([name, value]) => name.startsWith('checksum_') && name !== 'checksum_type' && value));
}

/**
 * Upload the file at `path` to s3://bucket/key through the gateway: CreateMultipartUpload, one
 * streamed UploadPart per `partSize` bytes (in order), CompleteMultipartUpload. Resolves with the
 * CompleteMultipartUploadResponse. On any failure the upload is aborted (best effort) and the
 * gRPC error is rethrown (see errors.describeError).
 *
 * checksumAlgorithm (e.g. "CRC32C", "SHA256") is given to S3 at Create; for CRC32C the part
 * checksum is computed here and sent in each part's trailer (and every 1 MiB chunk carries its own
 * CRC-32C), for other algorithms the gateway computes the part checksum itself. chunkSize is the
 * size of each `data` message (1 MiB), maxBuffered how many of them may wait in grpc-js (4);
 * callOptions (e.g. { deadline }) apply to every call.
 */
async function uploadFile(client, { bucket, key, path: filePath, partSize = 8 * MiB, checksumAlgorithm, chunkSize = MiB, maxBuffered = 4, callOptions = {} }) {
  if (!bucket || !key || !filePath) throw new TypeError('bucket, key and path are required');
  const size = (await fs.promises.stat(filePath)).size;
  const partCount = Math.max(1, Math.ceil(size / partSize));
  if (!(partSize >= MIN_PART_SIZE || partCount === 1)) {
    throw new RangeError(`partSize must be at least ${MIN_PART_SIZE} bytes when the file needs more than one part`);
  }
  if (partCount > MAX_PARTS) throw new RangeError(`${partCount} parts: S3 allows ${MAX_PARTS}; raise partSize`);
  const algorithm = normaliseAlgorithm(checksumAlgorithm);
  const withCrc32c = algorithm === 'CHECKSUM_ALGORITHM_CRC32C';

  const created = await unary(client, 'CreateMultipartUpload', { bucket, key, ...(algorithm && { checksum_algorithm: algorithm }) }, callOptions);
  const { upload_id } = created;
  try {
    const parts = [];
    for (let number = 1; number <= partCount; number++) {
      const start = (number - 1) * partSize;
      const header = { bucket, key, upload_id, part_number: number, ...(algorithm && { checksum_algorithm: algorithm }) };
      const length = Math.min(partSize, size - start);
      const uploaded = await uploadPart(client, { header, filePath, start, length, chunkSize, withCrc32c, maxBuffered, callOptions });
      parts.push({ etag: uploaded.etag, part_number: number, ...checksumsOf(uploaded) });
    }
    return await unary(client, 'CompleteMultipartUpload', { bucket, key, upload_id, parts }, callOptions);
  } catch (err) {
    try {
      await unary(client, 'AbortMultipartUpload', { bucket, key, upload_id }, callOptions);
    } catch {
      // The original error matters more; the gateway's reaper cleans up what is left.
    }
    throw err;
  }
}

module.exports = { PROTO_ROOT, LOADER_OPTIONS, loadService, createClient, uploadFile, uploadPart, MiB };
