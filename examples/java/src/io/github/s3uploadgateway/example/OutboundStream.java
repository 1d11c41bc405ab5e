package io.github.s3uploadgateway.example;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.function.Consumer;
import java.util.function.Function;

/**
 * The sending side of a client- or bidi-streaming call on the async stub, with flow control: {@link
 * #send} blocks while gRPC's outbound buffer is full (until the call's onReady), so a file of any
 * size is read only as fast as the gateway takes it. Responses go to a consumer as they arrive;
 * {@link #await} answers the last one once the call ended, or throws the call's status.
 */
final class OutboundStream<Req, Resp> implements ClientResponseObserver<Req, Resp> {
    private final Consumer<Resp> onResponse;
    private final CompletableFuture<Resp> done = new CompletableFuture<>();
    private final Object lock = new Object();
    private ClientCallStreamObserver<Req> call;
    private volatile Resp last;

    private OutboundStream(Consumer<Resp> onResponse) {
        this.onResponse = onResponse;
    }

    /** Starts the call: {@code rpc} is a method of the async stub, e.g. {@code stub::writeObject}. */
    static <Req, Resp> OutboundStream<Req, Resp> open(
            Function<StreamObserver<Resp>, StreamObserver<Req>> rpc, Consumer<Resp> onResponse) {
        OutboundStream<Req, Resp> stream = new OutboundStream<>(onResponse);
        rpc.apply(stream);
        return stream;
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<Req> requestStream) {
        call = requestStream;
        call.setOnReadyHandler(this::wake);
    }

    /** Sends one message once gRPC can take it; throws the call's status if it ended. */
    void send(Req message) throws InterruptedException {
        synchronized (lock) {
            while (!call.isReady() && !done.isDone()) {
                lock.wait(1000);
            }
        }
        if (done.isDone()) {
            await(); // the gateway answered early: an error (it stops reading), thrown here
            throw Status.INTERNAL.withDescription("the call ended before the stream did").asRuntimeException();
        }
        call.onNext(message);
    }

    /** Half-closes the stream and waits for the call to end: its last response. */
    Resp complete() throws InterruptedException {
        call.onCompleted();
        return await();
    }

    /** Cancels the call (after a local failure), so that the gateway commits nothing. */
    void cancel(String why, Throwable cause) {
        call.cancel(why, cause);
    }

    /** The call's end: a future that fails with the call's status. */
    CompletableFuture<Resp> done() {
        return done;
    }

    Resp await() throws InterruptedException {
        try {
            return done.get();
        } catch (ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof StatusRuntimeException) {
                throw (StatusRuntimeException) cause;
            }
            throw Status.fromThrowable(cause).asRuntimeException();
        }
    }

    @Override
    public void onNext(Resp response) {
        last = response;
        onResponse.accept(response);
    }

    @Override
    public void onError(Throwable t) {
        done.completeExceptionally(t);
        wake();
    }

    @Override
    public void onCompleted() {
        done.complete(last);
        wake();
    }

    private void wake() {
        synchronized (lock) {
            lock.notifyAll();
        }
    }
}
