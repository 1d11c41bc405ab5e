'use strict';
// Decoding of the rich error model: the gateway puts a google.rpc.Status (with an ErrorInfo, and
// a RetryInfo or BadRequest where they apply) into the `grpc-status-details-bin` trailer.
// The few google.rpc messages needed are declared here, so no extra .proto files are needed.

const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');

const root = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            RetryInfo: { fields: { retry_delay: { type: 'google.protobuf.Duration', id: 1 } } },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: {
                    field: { type: 'string', id: 1 },
                    description: { type: 'string', id: 2 },
                    reason: { type: 'string', id: 3 },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
});

const Status = root.lookupType('google.rpc.Status');
const DETAIL_TYPES = new Map(
  ['ErrorInfo', 'RetryInfo', 'BadRequest'].map((name) => [
    `type.googleapis.com/google.rpc.${name}`,
    root.lookupType(`google.rpc.${name}`),
  ]),
);
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));
const TO_OBJECT = { longs: String, enums: String, defaults: false };

/**
 * A plain object describing a gRPC error: code, code name, message and the decoded details of
 * its google.rpc.Status (each with an "@type"; unknown detail types keep their raw base64 value).
 */
function describeError(err) {
  const out = { code: err.code, codeName: CODE_NAMES[err.code] ?? 'UNKNOWN', message: err.details ?? err.message };
  const raw = err.metadata?.get?.('grpc-status-details-bin')?.[0];
  if (!raw) return out;
  try {
    const status = Status.decode(Buffer.from(raw));
    out.details = status.details.map((any) => {
      const type = DETAIL_TYPES.get(any.type_url);
      if (!type) return { '@type': any.type_url, value: Buffer.from(any.value).toString('base64') };
      return { '@type': any.type_url, ...type.toObject(type.decode(any.value), TO_OBJECT) };
    });
  } catch (decodeError) {
    out.details_error = `undecodable grpc-status-details-bin: ${decodeError.message}`;
  }
  return out;
}

/** The ErrorInfo of a gateway error, or undefined. */
function errorInfo(err) {
  return describeError(err).details?.find((d) => d['@type'].endsWith('google.rpc.ErrorInfo'));
}

module.exports = { describeError, errorInfo };
