package io.github.s3uploadgateway.example;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.util.Durations;
import com.google.protobuf.util.JsonFormat;
import com.google.rpc.ErrorDetailsProto;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.util.Optional;

/**
 * The gateway's errors: the {@code google.rpc.Status} of the grpc-status-details-bin trailer, with
 * its ErrorInfo (reason, metadata) and RetryInfo, decoded by {@link StatusProto#fromThrowable}.
 */
final class Errors {
    /** Every google.rpc detail type, so that JsonFormat can print any detail the gateway sends. */
    private static final JsonFormat.TypeRegistry DETAILS =
            JsonFormat.TypeRegistry.newBuilder().add(ErrorDetailsProto.getDescriptor().getMessageTypes()).build();

    private Errors() {}

    /** The rich status of a failed call; one made of the code and message when there is none. */
    static com.google.rpc.Status status(Throwable t) {
        com.google.rpc.Status rich = StatusProto.fromThrowable(t);
        if (rich != null) {
            return rich;
        }
        Status status = Status.fromThrowable(t);
        return com.google.rpc.Status.newBuilder()
                .setCode(status.getCode().value())
                .setMessage(status.getDescription() == null ? "" : status.getDescription())
                .build();
    }

    static Optional<ErrorInfo> errorInfo(Throwable t) {
        return detail(t, ErrorInfo.class);
    }

    static Optional<RetryInfo> retryInfo(Throwable t) {
        return detail(t, RetryInfo.class);
    }

    /** The ErrorInfo's reason, "" without one. */
    static String reason(Throwable t) {
        return errorInfo(t).map(ErrorInfo::getReason).orElse("");
    }

    /** The RetryInfo's delay in milliseconds, or -1 without one. */
    static long retryDelayMillis(Throwable t) {
        return retryInfo(t).filter(RetryInfo::hasRetryDelay).map(r -> Durations.toMillis(r.getRetryDelay())).orElse(-1L);
    }

    private static <T extends com.google.protobuf.Message> Optional<T> detail(Throwable t, Class<T> type) {
        for (Any any : status(t).getDetailsList()) {
            if (any.is(type)) {
                try {
                    return Optional.of(any.unpack(type));
                } catch (InvalidProtocolBufferException e) {
                    return Optional.empty();
                }
            }
        }
        return Optional.empty();
    }

    /** One line: {@code NOT_FOUND (5): message}. */
    static String summary(Throwable t) {
        Status status = Status.fromThrowable(t);
        return status.getCode() + " (" + status.getCode().value() + "): " + status.getDescription();
    }

    /** {code, codeName, message, details: [{"@type": …, …}]}, the details as JsonFormat prints them. */
    static JsonObject describe(Throwable t) {
        com.google.rpc.Status status = status(t);
        JsonObject out = new JsonObject();
        out.addProperty("code", status.getCode());
        out.addProperty("codeName", Status.fromCodeValue(status.getCode()).getCode().name());
        out.addProperty("message", status.getMessage());
        JsonArray details = new JsonArray();
        for (Any any : status.getDetailsList()) {
            details.add(detailJson(any));
        }
        out.add("details", details);
        return out;
    }

    private static JsonElement detailJson(Any any) {
        try {
            return Json.tree(JsonFormat.printer().usingTypeRegistry(DETAILS).preservingProtoFieldNames().print(any));
        } catch (InvalidProtocolBufferException e) { // a type outside google/rpc/error_details.proto
            JsonObject unknown = new JsonObject();
            unknown.addProperty("@type", any.getTypeUrl());
            return unknown;
        }
    }
}
