package io.github.s3uploadgateway.example;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.util.concurrent.Callable;

/**
 * Retries a call the gateway answered UNAVAILABLE (S3 throttling or failing; RESOURCE_EXHAUSTED
 * too when it carries a RetryInfo), after the RetryInfo's delay when the status has one, else with
 * exponential backoff. Every other status is final.
 */
final class Retry {
    static final int MAX_ATTEMPTS = 5;
    private static final long FIRST_BACKOFF_MS = 500;
    private static final long MAX_BACKOFF_MS = 10_000;

    private Retry() {}

    static <T> T call(String what, Callable<T> call) throws Exception {
        for (int attempt = 1; ; attempt++) {
            try {
                return call.call();
            } catch (StatusRuntimeException e) {
                if (!retryable(e) || attempt >= MAX_ATTEMPTS) {
                    throw e;
                }
                pause(what, e, attempt);
            }
        }
    }

    /** UNAVAILABLE, or RESOURCE_EXHAUSTED with a RetryInfo (a gateway limit that will pass). */
    static boolean retryable(Throwable t) {
        Status.Code code = Status.fromThrowable(t).getCode();
        return code == Status.Code.UNAVAILABLE
                || (code == Status.Code.RESOURCE_EXHAUSTED && Errors.retryInfo(t).isPresent());
    }

    /** Waits before attempt {@code attempt + 1}, as the status's RetryInfo says or with backoff. */
    static void pause(String what, Throwable t, int attempt) throws InterruptedException {
        long delay = Errors.retryDelayMillis(t);
        String source = "RetryInfo";
        if (delay < 0) {
            delay = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS << (attempt - 1));
            source = "backoff";
        }
        System.err.printf("%s: %s: %s; retrying in %d ms (%s, attempt %d of %d)%n", Client.PROG, what,
                Errors.summary(t), delay, source, attempt + 1, MAX_ATTEMPTS);
        Thread.sleep(delay);
    }
}
