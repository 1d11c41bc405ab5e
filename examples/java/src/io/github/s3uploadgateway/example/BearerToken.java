package io.github.s3uploadgateway.example;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.Status;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Executor;

/** {@code authorization: Bearer TOKEN} on every call, the token read from a file. */
final class BearerToken extends CallCredentials {
    private static final Metadata.Key<String> AUTHORIZATION =
            Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private final String token;

    private BearerToken(String token) {
        this.token = token;
    }

    /** The token is the file's first line (as `s3-upload-gateway hash-token --generate` prints it). */
    static BearerToken fromFile(Path file) throws IOException {
        String text = Files.readString(file, StandardCharsets.UTF_8).strip();
        String token = text.lines().findFirst().orElse("").strip();
        if (token.isEmpty()) {
            throw new IOException(file + " holds no token");
        }
        return new BearerToken(token);
    }

    @Override
    public void applyRequestMetadata(RequestInfo info, Executor executor, MetadataApplier applier) {
        try {
            Metadata headers = new Metadata();
            headers.put(AUTHORIZATION, "Bearer " + token);
            applier.apply(headers);
        } catch (RuntimeException e) {
            applier.fail(Status.UNAUTHENTICATED.withDescription("bearer token").withCause(e));
        }
    }

    @Override
    public void thisUsesUnstableApi() {}

    @Override
    public String toString() {
        return "BearerToken[redacted]";
    }
}
