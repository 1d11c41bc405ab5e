#!/usr/bin/env node
'use strict';
// Upload a file to S3 through s3-upload-gateway and print CompleteMultipartUpload's answer as JSON.
//
//   node upload.js FILE s3://BUCKET/KEY [--endpoint HOST:PORT] [--part-size N] [--checksum-algorithm ALG]
//
// --endpoint defaults to $GATEWAY_ENDPOINT or localhost:50051; --part-size takes bytes or a size
// with a binary suffix (5MiB, 8M, 1G; default 8MiB). On a gRPC error it prints the status code and
// the decoded google.rpc.Status details (ErrorInfo, RetryInfo, BadRequest) to stderr and exits 1;
// on a usage error it exits 2.

const { parseArgs } = require('node:util');
const { createClient, uploadFile } = require('./lib/gateway');
const { describeError } = require('./lib/errors');

const USAGE =
  'usage: upload.js FILE s3://BUCKET/KEY [--endpoint HOST:PORT] [--part-size N] [--checksum-algorithm ALG]';
const UNITS = { '': 1, K: 1024, KI: 1024, KIB: 1024, M: 1024 ** 2, MI: 1024 ** 2, MIB: 1024 ** 2, G: 1024 ** 3, GI: 1024 ** 3, GIB: 1024 ** 3 };

class UsageError extends Error {}

function parseSize(text) {
  const match = /^(\d+)\s*([a-z]*)$/i.exec(String(text).trim());
  const unit = match && UNITS[match[2].toUpperCase()];
  if (!unit) throw new UsageError(`bad size: ${text}`);
  return Number(match[1]) * unit;
}

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
      'part-size': { type: 'string', default: '8MiB' },
      'checksum-algorithm': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (positionals.length !== 2) throw new UsageError('expected FILE and s3://BUCKET/KEY');
  return {
    endpoint: values.endpoint,
    path: positionals[0],
    ...parseS3Url(positionals[1]),
    partSize: parseSize(values['part-size']),
    checksumAlgorithm: values['checksum-algorithm'],
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
  const { endpoint, ...upload } = options;
  const client = createClient(endpoint);
  try {
    const result = await uploadFile(client, upload);
    console.log(JSON.stringify(result, null, 2));
    return 0;
  } catch (err) {
    if (err instanceof RangeError || err instanceof TypeError || err.code === 'ENOENT') {
      console.error(`upload.js: ${err.message}`);
      return err.code === 'ENOENT' ? 1 : 2;
    }
    if (typeof err.code !== 'number') throw err;
    const described = describeError(err);
    console.error(`upload.js: ${described.codeName} (${described.code}): ${described.message}`);
    console.error(JSON.stringify(described, null, 2));
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
