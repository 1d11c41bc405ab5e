package io.github.s3uploadgateway.example;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Base64;
import java.util.zip.CRC32C;

/** CRC-32C in S3's encoding, and reading a file range in 1 MiB chunks. */
final class Checksums {
    static final int CHUNK = 1 << 20;

    private Checksums() {}

    /** What a chunk of a file range is handed to: the buffer holds the chunk in [0, length). */
    interface ChunkHandler {
        void accept(byte[] buffer, int length) throws Exception;
    }

    /** S3's form of a CRC-32C: base64 of the 4-byte big-endian value. */
    static String base64(long crc32c) {
        return Base64.getEncoder().encodeToString(ByteBuffer.allocate(4).putInt((int) crc32c).array());
    }

    /** The CRC-32C of {@code buffer[0, length)}, as the integer a data message's crc32c holds. */
    static int crc32c(byte[] buffer, int length) {
        CRC32C crc = new CRC32C();
        crc.update(buffer, 0, length);
        return (int) crc.getValue();
    }

    /** Feeds {@code length} bytes of {@code file} from {@code offset} to {@code handler}, in chunks. */
    static void read(Path file, long offset, long length, ChunkHandler handler) throws Exception {
        byte[] buffer = new byte[CHUNK];
        try (FileChannel channel = FileChannel.open(file, StandardOpenOption.READ)) {
            channel.position(offset);
            long left = length;
            while (left > 0) {
                ByteBuffer view = ByteBuffer.wrap(buffer, 0, (int) Math.min(CHUNK, left));
                while (view.hasRemaining()) {
                    if (channel.read(view) < 0) {
                        throw new IOException(file + " ended at " + (offset + length - left + view.position())
                                + " bytes, before " + (offset + length) + " (was it changed?)");
                    }
                }
                handler.accept(buffer, view.position());
                left -= view.position();
            }
        }
    }

    /** Updates {@code crc} with {@code length} bytes of {@code file} from {@code offset}. */
    static CRC32C update(CRC32C crc, Path file, long offset, long length) throws Exception {
        read(file, offset, length, (buffer, n) -> crc.update(buffer, 0, n));
        return crc;
    }
}
