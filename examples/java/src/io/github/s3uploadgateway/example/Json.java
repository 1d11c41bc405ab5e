package io.github.s3uploadgateway.example;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonElement;
import com.google.gson.JsonParser;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.MessageOrBuilder;
import com.google.protobuf.util.JsonFormat;

/**
 * Messages as JSON the way the other examples print them: the .proto's field names (snake_case),
 * only the fields that are set, int64 values as strings, enums by name.
 */
final class Json {
    private static final JsonFormat.Printer PRINTER = JsonFormat.printer().preservingProtoFieldNames();
    private static final Gson GSON = new GsonBuilder().setPrettyPrinting().disableHtmlEscaping().create();

    private Json() {}

    static JsonElement tree(MessageOrBuilder message) {
        try {
            return tree(PRINTER.print(message));
        } catch (InvalidProtocolBufferException e) {
            throw new IllegalStateException(e);
        }
    }

    static JsonElement tree(String json) {
        return JsonParser.parseString(json);
    }

    static String pretty(JsonElement json) {
        return GSON.toJson(json);
    }

    static String pretty(MessageOrBuilder message) {
        return pretty(tree(message));
    }
}
