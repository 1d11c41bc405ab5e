#!/usr/bin/env node
'use strict';
// Write a file to S3 through s3-upload-gateway (one WriteObject stream) and print the WrittenObject
// as JSON.
//
//   node upload.js FILE s3://BUCKET/KEY [--endpoint HOST:PORT] [--checksum-algorithm ALG] [--content-type TYPE]
//                  [--resumable]
//   node upload.js FILE --resume TOKEN [--endpoint HOST:PORT]
//
// --resumable makes the write resumable: its token goes to stderr, and after a failure it
// continues from the bytes S3 holds (through any replica); --resume TOKEN continues it from
// another process.
//
// --endpoint defaults to $GATEWAY_ENDPOINT or localhost:50051; --checksum-algorithm to CRC32C. The
// part size is the gateway's. On a gRPC error it prints the status code and the decoded
// google.rpc.Status details (ErrorInfo, RetryInfo, BadRequest) to stderr and exits 1; on a usage
// error it exits 2.

const { parseArgs } = require('node:util');
const { createClient, writeFile, writeFileResumable } = require('./lib/gateway');
const { describeError } = require('./lib/errors');

const USAGE =
  'usage: upload.js FILE s3://BUCKET/KEY [--endpoint HOST:PORT] [--checksum-algorithm ALG] [--content-type TYPE] [--resumable]\n' +
  '       upload.js FILE --resume TOKEN [--endpoint HOST:PORT]';

class UsageError extends Error {}

function parseS3Url(text) {
  const match = /^s3:\/\/([^/]+)\/(.+)$/.exec(text);
  if (!match) throw new UsageError(`not an s3://bucket/key URL: ${text}`);
  return { bucket: match[1], key: match[2] };
}

function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      endpoint: { type: 'string', default: process.env.GATEWAY_ENDPOINT || 'localhost:50051' },
      'checksum-algorithm': { type: 'string', default: 'CRC32C' },
      'content-type': { type: 'string' },
      resumable: { type: 'boolean', default: false },
      resume: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (values.resume) {
    if (positionals.length !== 1) throw new UsageError('--resume takes FILE alone: the token holds the destination');
    return { endpoint: values.endpoint, path: positionals[0], token: values.resume, resumable: true };
  }
  if (positionals.length !== 2) throw new UsageError('expected FILE and s3://BUCKET/KEY');
  return {
    endpoint: values.endpoint,
    resumable: values.resumable,
    path: positionals[0],
    ...parseS3Url(positionals[1]),
    checksumAlgorithm: values['checksum-algorithm'],
    contentType: values['content-type'],
  };
}

async function main() {
  let options;
  try {
    options = parse(process.argv.slice(2));
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    return 2;
  }
  const { endpoint, resumable, ...write } = options;
  const client = createClient(endpoint);
  let token;
  const onToken = (newer) => {
    if (!token) console.error(`upload.js: resumable write: ${newer}`);
    token = newer;
  };
  try {
    const written = resumable ? await writeFileResumable(client, { ...write, onToken }) : await writeFile(client, write);
    console.log(JSON.stringify(written, null, 2));
    return 0;
  } catch (err) {
    if (err instanceof RangeError || err instanceof TypeError) {
      console.error(`${err.message}\n${USAGE}`);
      return 2;
    }
    if (typeof err.code === 'string') {
      console.error(`upload.js: ${err.message}`); // the file: ENOENT, EISDIR, EACCES, …
      return 1;
    }
    if (typeof err.code !== 'number') throw err;
    const described = describeError(err);
    console.error(`upload.js: ${described.codeName} (${described.code}): ${described.message}`);
    console.error(JSON.stringify(described, null, 2));
    if (token) console.error(`upload.js: continue with: node upload.js ${options.path} --resume ${token}`);
    return 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err);
    process.exitCode = 1;
  },
);
