package io.github.s3uploadgateway.example;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.protobuf.ByteString;
import io.github.s3uploadgateway.gateway.v1.AbortMultipartUploadRequest;
import io.github.s3uploadgateway.gateway.v1.ChecksumAlgorithm;
import io.github.s3uploadgateway.gateway.v1.ChecksumType;
import io.github.s3uploadgateway.gateway.v1.ChecksummedData;
import io.github.s3uploadgateway.gateway.v1.CompleteMultipartUploadRequest;
import io.github.s3uploadgateway.gateway.v1.CompleteMultipartUploadResponse;
import io.github.s3uploadgateway.gateway.v1.CompletedPart;
import io.github.s3uploadgateway.gateway.v1.CreateMultipartUploadRequest;
import io.github.s3uploadgateway.gateway.v1.CreateMultipartUploadResponse;
import io.github.s3uploadgateway.gateway.v1.FinishWrite;
import io.github.s3uploadgateway.gateway.v1.ListPartsRequest;
import io.github.s3uploadgateway.gateway.v1.ListPartsResponse;
import io.github.s3uploadgateway.gateway.v1.QueryWriteStatusRequest;
import io.github.s3uploadgateway.gateway.v1.QueryWriteStatusResponse;
import io.github.s3uploadgateway.gateway.v1.ResumeWrite;
import io.github.s3uploadgateway.gateway.v1.StartResumableWriteRequest;
import io.github.s3uploadgateway.gateway.v1.StartResumableWriteResponse;
import io.github.s3uploadgateway.gateway.v1.UploadPartHeader;
import io.github.s3uploadgateway.gateway.v1.UploadPartRequest;
import io.github.s3uploadgateway.gateway.v1.UploadPartResponse;
import io.github.s3uploadgateway.gateway.v1.UploadServiceGrpc;
import io.github.s3uploadgateway.gateway.v1.WriteObjectRequest;
import io.github.s3uploadgateway.gateway.v1.WriteObjectResponse;
import io.github.s3uploadgateway.gateway.v1.WriteObjectSpec;
import io.github.s3uploadgateway.gateway.v1.WriteProgress;
import io.github.s3uploadgateway.gateway.v1.WrittenObject;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.NettyChannelBuilder;
import io.netty.handler.ssl.ApplicationProtocolNames;
import io.netty.handler.ssl.JdkAlpnClientContext;
import io.netty.handler.ssl.SslContext;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.zip.CRC32C;

/**
 * A command-line client of the s3-upload-gateway, on stubs generated from
 * proto/gateway/v1/upload_service.proto. See examples/java/README.md.
 */
public final class Client {
    static final String PROG = "client";
    static final long MiB = 1 << 20;

    static final String USAGE = String.join("\n",
            "usage: client [--endpoint HOST:PORT] [--ca FILE] [--token-file FILE] COMMAND ARGS",
            "  write FILE BUCKET KEY                  one WriteObject stream (CRC32C, FULL_OBJECT)",
            "  resumable FILE BUCKET KEY [--die-after-bytes N]",
            "                                         a resumable write (StartResumableWrite, WriteObject)",
            "  resume TOKEN FILE                      continue a resumable write from its token",
            "  multipart FILE BUCKET KEY [--part-size BYTES]",
            "                                         CreateMultipartUpload, UploadPart…, CompleteMultipartUpload",
            "  listparts BUCKET KEY UPLOAD_ID         ListParts (every page)",
            "options: --endpoint defaults to $GATEWAY_ENDPOINT, else localhost:50051; --ca FILE trusts",
            "  FILE's CA and connects with TLS; --token-file FILE sends `authorization: Bearer <token>`;",
            "  --content-type TYPE for the object.");

    /** A bad command line: exit 2 with the usage. */
    static final class UsageError extends Exception {
        private static final long serialVersionUID = 1L;

        UsageError(String message) {
            super(message);
        }
    }

    private final Options options;
    private final ManagedChannel channel;
    private final UploadServiceGrpc.UploadServiceBlockingStub blocking;
    private final UploadServiceGrpc.UploadServiceStub async;
    /** The newest token of the resumable write: StartResumableWrite's, a progress's, QueryWriteStatus's. */
    private volatile String latestToken = "";

    private Client(Options options) throws Exception {
        this.options = options;
        NettyChannelBuilder builder = NettyChannelBuilder.forTarget(options.endpoint);
        if (options.ca != null) {
            builder.sslContext(tls(Path.of(options.ca)));
        } else {
            builder.usePlaintext();
        }
        channel = builder.build();
        UploadServiceGrpc.UploadServiceBlockingStub b = UploadServiceGrpc.newBlockingStub(channel);
        UploadServiceGrpc.UploadServiceStub a = UploadServiceGrpc.newStub(channel);
        if (options.tokenFile != null) {
            BearerToken token = BearerToken.fromFile(Path.of(options.tokenFile));
            b = b.withCallCredentials(token);
            a = a.withCallCredentials(token);
        }
        blocking = b;
        async = a;
    }

    /** TLS trusting the CA file's certificates, HTTP/2 negotiated with ALPN. */
    private static SslContext tls(Path ca) throws Exception {
        try {
            return GrpcSslContexts.forClient().trustManager(ca.toFile()).build();
        } catch (UnsupportedOperationException e) { // Debian's netty: see JdkAlpnClientContext
            return JdkAlpnClientContext.forClient(ca, ApplicationProtocolNames.HTTP_2);
        }
    }

    public static void main(String[] args) {
        int code;
        Client client = null;
        try {
            Options options = Options.parse(args);
            if (options.help) {
                System.out.println(USAGE);
                System.exit(0);
            }
            client = new Client(options);
            client.run();
            code = 0;
        } catch (UsageError e) {
            System.err.println(PROG + ": " + e.getMessage());
            System.err.println(USAGE);
            code = 2;
        } catch (StatusRuntimeException e) {
            System.err.println(PROG + ": " + Errors.summary(e));
            System.err.println(Json.pretty(Errors.describe(e)));
            code = 1;
        } catch (Exception e) {
            System.err.println(PROG + ": " + e);
            code = 1;
        } finally {
            if (client != null) {
                client.channel.shutdownNow();
            }
        }
        System.exit(code);
    }

    private void run() throws Exception {
        List<String> a = options.args;
        switch (a.get(0)) {
            case "write":
                expect(a, 4, "write FILE BUCKET KEY");
                write(Path.of(a.get(1)), a.get(2), a.get(3));
                break;
            case "resumable":
                expect(a, 4, "resumable FILE BUCKET KEY [--die-after-bytes N]");
                resumable(Path.of(a.get(1)), a.get(2), a.get(3));
                break;
            case "resume":
                expect(a, 3, "resume TOKEN FILE");
                print(continueWrite(a.get(1), -1, Path.of(a.get(2))));
                break;
            case "multipart":
                expect(a, 4, "multipart FILE BUCKET KEY [--part-size BYTES]");
                multipart(Path.of(a.get(1)), a.get(2), a.get(3));
                break;
            case "listparts":
                expect(a, 4, "listparts BUCKET KEY UPLOAD_ID");
                listParts(a.get(1), a.get(2), a.get(3));
                break;
            default:
                throw new UsageError("unknown command " + a.get(0));
        }
    }

    private static void expect(List<String> args, int count, String usage) throws UsageError {
        if (args.size() != count) {
            throw new UsageError("expected: " + usage);
        }
    }

    // --- WriteObject ------------------------------------------------------------------------------

    private WriteObjectSpec spec(Path file, String bucket, String key) throws Exception {
        CreateMultipartUploadRequest.Builder object = CreateMultipartUploadRequest.newBuilder()
                .setBucket(bucket)
                .setKey(key)
                .setChecksumAlgorithm(ChecksumAlgorithm.CHECKSUM_ALGORITHM_CRC32C)
                .setChecksumType(ChecksumType.CHECKSUM_TYPE_FULL_OBJECT);
        if (options.contentType != null) {
            object.setContentType(options.contentType);
        }
        return WriteObjectSpec.newBuilder().setObject(object).setObjectSize(Files.size(file)).build();
    }

    /** One WriteObject stream; a retry after UNAVAILABLE writes the whole object again. */
    private void write(Path file, String bucket, String key) throws Exception {
        WriteObjectRequest first = WriteObjectRequest.newBuilder().setSpec(spec(file, bucket, key)).build();
        print(Retry.call("WriteObject", () -> stream(first, file, 0)));
    }

    /**
     * Streams {@code file} from {@code offset} after the {@code first} message (a spec or a resume):
     * 1 MiB data messages, each with its CRC-32C, then a finish with the whole file's CRC-32C (the
     * bytes before {@code offset} are read for it, not sent). Answers the written object.
     */
    private WrittenObject stream(WriteObjectRequest first, Path file, long offset) throws Exception {
        long size = Files.size(file);
        CRC32C whole = Checksums.update(new CRC32C(), file, 0, offset);
        CompletableFuture<WriteProgress> persisted = new CompletableFuture<>();
        OutboundStream<WriteObjectRequest, WriteObjectResponse> call = OutboundStream.open(async::writeObject,
                response -> {
                    if (response.hasProgress()) {
                        WriteProgress progress = response.getProgress();
                        if (!progress.getWriteToken().isEmpty()) {
                            latestToken = progress.getWriteToken();
                        }
                        if (progress.getPersistedSize() > 0) {
                            persisted.complete(progress);
                        }
                    }
                });
        long[] sent = {0};
        try {
            call.send(first);
            Checksums.read(file, offset, size - offset, (buffer, n) -> {
                whole.update(buffer, 0, n);
                call.send(WriteObjectRequest.newBuilder()
                        .setData(ChecksummedData.newBuilder()
                                .setContent(ByteString.copyFrom(buffer, 0, n))
                                .setCrc32C(Checksums.crc32c(buffer, n)))
                        .build());
                sent[0] += n;
                if (options.dieAfterBytes >= 0 && sent[0] >= options.dieAfterBytes) {
                    die(call, persisted, sent[0]);
                }
            });
            call.send(WriteObjectRequest.newBuilder()
                    .setFinish(FinishWrite.newBuilder().setChecksumCrc32C(Checksums.base64(whole.getValue())))
                    .build());
        } catch (StatusRuntimeException e) {
            throw e;
        } catch (Exception e) {
            call.cancel("client failed: " + e, e); // nothing is committed
            throw e;
        }
        WriteObjectResponse last = call.complete();
        if (last == null || !last.hasObject()) {
            throw Status.INTERNAL.withDescription("WriteObject ended without the object").asRuntimeException();
        }
        return last.getObject();
    }

    /**
     * --die-after-bytes: stop sending, wait until S3 holds a part of the object, print the latest
     * token and end the process on the spot, mid-stream, as a crash would.
     */
    private void die(OutboundStream<?, ?> call, CompletableFuture<WriteProgress> persisted, long sent)
            throws Exception {
        try {
            CompletableFuture.anyOf(persisted, call.done()).get(120, TimeUnit.SECONDS);
        } catch (ExecutionException e) {
            call.await(); // the stream failed first: its status
        } catch (TimeoutException e) {
            throw new IllegalStateException("--die-after-bytes: no part persisted within 120 s of "
                    + sent + " bytes sent (is N at least the gateway's part size?)");
        }
        if (!persisted.isDone()) {
            call.await(); // the stream failed: its status
            throw new IllegalStateException("the stream ended before S3 held a part of the object");
        }
        JsonObject out = new JsonObject();
        out.addProperty("write_token", latestToken);
        out.addProperty("persisted_size", persisted.get().getPersistedSize());
        out.addProperty("sent_bytes", sent);
        System.out.println(Json.pretty(out));
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }

    // --- Resumable writes ---------------------------------------------------------------------------

    private void resumable(Path file, String bucket, String key) throws Exception {
        StartResumableWriteResponse started = blocking.startResumableWrite(
                StartResumableWriteRequest.newBuilder().setSpec(spec(file, bucket, key)).build());
        latestToken = started.getWriteToken();
        // Announced at once: with it another process can finish the write if this one dies.
        System.err.println(PROG + ": resumable write: " + started.getWriteToken());
        print(continueWrite(started.getWriteToken(), 0, file));
    }

    /**
     * Continues a resumable write: from {@code offset} when it is known (>= 0), else from where
     * QueryWriteStatus says S3 stands. After UNAVAILABLE or DEADLINE_EXCEEDED it asks again and
     * resumes from there, until MAX_ATTEMPTS streams in a row persisted nothing new.
     */
    private WrittenObject continueWrite(String token, long offset, Path file) throws Exception {
        latestToken = token;
        long best = -1;
        int idle = 0;
        while (true) {
            if (offset < 0) {
                String current = latestToken;
                QueryWriteStatusResponse status = Retry.call("QueryWriteStatus", () -> blocking.queryWriteStatus(
                        QueryWriteStatusRequest.newBuilder().setWriteToken(current).build()));
                if (status.hasObject()) {
                    return status.getObject(); // finished already: what it wrote
                }
                latestToken = status.getWriteToken();
                offset = status.getPersistedSize();
                WriteObjectSpec spec = status.getSpec();
                if (spec.hasObjectSize() && spec.getObjectSize() != Files.size(file)) {
                    throw new UsageError(file + " has " + Files.size(file) + " bytes, the write "
                            + spec.getObjectSize() + ": not the same file");
                }
            }
            if (offset > best) {
                best = offset;
                idle = 0;
            }
            WriteObjectRequest first = WriteObjectRequest.newBuilder()
                    .setResume(ResumeWrite.newBuilder().setWriteToken(latestToken).setWriteOffset(offset))
                    .build();
            try {
                return stream(first, file, offset);
            } catch (StatusRuntimeException e) {
                Map<String, String> metadata = Errors.errorInfo(e).map(i -> i.getMetadataMap()).orElse(Map.of());
                if (Errors.reason(e).equals("WRITE_OFFSET_MISMATCH") && metadata.containsKey("persistedSize")
                        && ++idle < Retry.MAX_ATTEMPTS) {
                    latestToken = metadata.getOrDefault("writeToken", latestToken);
                    offset = Long.parseLong(metadata.get("persistedSize")); // resync in one round trip
                    continue;
                }
                Status.Code code = e.getStatus().getCode();
                boolean again = Retry.retryable(e) || code == Status.Code.DEADLINE_EXCEEDED;
                if (!again || ++idle >= Retry.MAX_ATTEMPTS) {
                    throw e;
                }
                Retry.pause("WriteObject (resumable)", e, idle);
                offset = -1;
            }
        }
    }

    // --- Multipart upload, part by part -------------------------------------------------------------

    private void multipart(Path file, String bucket, String key) throws Exception {
        CreateMultipartUploadRequest.Builder create = CreateMultipartUploadRequest.newBuilder()
                .setBucket(bucket)
                .setKey(key)
                .setChecksumAlgorithm(ChecksumAlgorithm.CHECKSUM_ALGORITHM_CRC32C);
        if (options.contentType != null) {
            create.setContentType(options.contentType);
        }
        CreateMultipartUploadResponse created = blocking.createMultipartUpload(create.build());
        String uploadId = created.getUploadId();
        try {
            long size = Files.size(file);
            CompleteMultipartUploadRequest.Builder complete = CompleteMultipartUploadRequest.newBuilder()
                    .setBucket(bucket)
                    .setKey(key)
                    .setUploadId(uploadId)
                    .setMpuObjectSize(size);
            JsonArray parts = new JsonArray();
            int number = 1;
            for (long start = 0; start < size || number == 1; start += options.partSize, number++) {
                long length = Math.min(options.partSize, size - start);
                String crc32c = Checksums.base64(Checksums.update(new CRC32C(), file, start, length).getValue());
                UploadPartHeader header = UploadPartHeader.newBuilder()
                        .setBucket(bucket)
                        .setKey(key)
                        .setUploadId(uploadId)
                        .setPartNumber(number)
                        .setContentLength(length)
                        .setChecksumAlgorithm(ChecksumAlgorithm.CHECKSUM_ALGORITHM_CRC32C)
                        .setChecksumCrc32C(crc32c) // known up front: the gateway and S3 check it
                        .build();
                long offset = start;
                UploadPartResponse uploaded = Retry.call("UploadPart " + number,
                        () -> uploadPart(header, file, offset, length));
                complete.addParts(CompletedPart.newBuilder()
                        .setPartNumber(number)
                        .setEtag(uploaded.getEtag())
                        .setChecksumCrc32C(crc32c));
                JsonObject part = Json.tree(uploaded).getAsJsonObject();
                part.addProperty("part_number", number);
                part.addProperty("size", Long.toString(length));
                part.addProperty("declared_checksum_crc32c", crc32c);
                parts.add(part);
            }
            CompleteMultipartUploadResponse done =
                    Retry.call("CompleteMultipartUpload", () -> blocking.completeMultipartUpload(complete.build()));
            JsonObject out = new JsonObject();
            out.addProperty("upload_id", uploadId);
            out.add("parts", parts);
            out.add("object", Json.tree(done));
            System.out.println(Json.pretty(out));
        } catch (Exception e) {
            try { // leave no upload behind
                blocking.abortMultipartUpload(AbortMultipartUploadRequest.newBuilder()
                        .setBucket(bucket).setKey(key).setUploadId(uploadId).build());
            } catch (StatusRuntimeException abort) {
                System.err.println(PROG + ": AbortMultipartUpload " + uploadId + ": " + Errors.summary(abort));
            }
            throw e;
        }
    }

    /** One UploadPart stream: the header, then 1 MiB data messages each with its CRC-32C. */
    private UploadPartResponse uploadPart(UploadPartHeader header, Path file, long offset, long length)
            throws Exception {
        OutboundStream<UploadPartRequest, UploadPartResponse> call =
                OutboundStream.open(async::uploadPart, response -> {});
        try {
            call.send(UploadPartRequest.newBuilder().setHeader(header).build());
            Checksums.read(file, offset, length, (buffer, n) -> call.send(UploadPartRequest.newBuilder()
                    .setData(ChecksummedData.newBuilder()
                            .setContent(ByteString.copyFrom(buffer, 0, n))
                            .setCrc32C(Checksums.crc32c(buffer, n)))
                    .build()));
        } catch (StatusRuntimeException e) {
            throw e;
        } catch (Exception e) {
            call.cancel("client failed: " + e, e);
            throw e;
        }
        return call.complete();
    }

    private void listParts(String bucket, String key, String uploadId) throws Exception {
        ListPartsResponse.Builder all = null;
        ListPartsResponse page;
        int marker = 0;
        do {
            ListPartsRequest request = ListPartsRequest.newBuilder()
                    .setBucket(bucket).setKey(key).setUploadId(uploadId).setPartNumberMarker(marker).build();
            page = Retry.call("ListParts", () -> blocking.listParts(request));
            if (all == null) {
                all = page.toBuilder();
            } else {
                all.addAllParts(page.getPartsList());
            }
            marker = page.getNextPartNumberMarker();
        } while (page.getIsTruncated() && page.hasNextPartNumberMarker());
        all.setIsTruncated(false).clearNextPartNumberMarker();
        print(all);
    }

    private static void print(com.google.protobuf.MessageOrBuilder message) {
        System.out.println(Json.pretty(message));
    }

    // --- The command line -------------------------------------------------------------------------

    static final class Options {
        String endpoint = System.getenv().getOrDefault("GATEWAY_ENDPOINT", "localhost:50051");
        String ca;
        String tokenFile;
        String contentType;
        long dieAfterBytes = -1;
        long partSize = 8 * MiB;
        boolean help;
        final List<String> args = new ArrayList<>();

        static Options parse(String[] argv) throws UsageError {
            Options o = new Options();
            for (int i = 0; i < argv.length; i++) {
                String arg = argv[i];
                if (!arg.startsWith("--")) {
                    o.args.add(arg);
                    continue;
                }
                if (arg.equals("--help")) {
                    o.help = true;
                    continue;
                }
                String name = arg;
                String value;
                int eq = arg.indexOf('=');
                if (eq >= 0) {
                    name = arg.substring(0, eq);
                    value = arg.substring(eq + 1);
                } else if (i + 1 < argv.length) {
                    value = argv[++i];
                } else {
                    throw new UsageError(arg + " needs a value");
                }
                switch (name) {
                    case "--endpoint": o.endpoint = value; break;
                    case "--ca": o.ca = value; break;
                    case "--token-file": o.tokenFile = value; break;
                    case "--content-type": o.contentType = value; break;
                    case "--die-after-bytes": o.dieAfterBytes = number(name, value, 1); break;
                    case "--part-size": o.partSize = number(name, value, 1); break;
                    default: throw new UsageError("unknown option " + name);
                }
            }
            if (o.args.isEmpty() && !o.help) {
                throw new UsageError("no command");
            }
            return o;
        }

        private static long number(String name, String value, long min) throws UsageError {
            try {
                long n = Long.parseLong(value);
                if (n >= min) {
                    return n;
                }
            } catch (NumberFormatException e) {
                // below
            }
            throw new UsageError(name + " takes a whole number of bytes >= " + min + ", not " + value);
        }
    }
}
