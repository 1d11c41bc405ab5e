package io.netty.handler.ssl;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

/**
 * A client SslContext negotiating HTTP/2 with the JDK's own ALPN (Java 9+), for Debian's netty.
 *
 * <p>Debian's libnetty-java (4.1.48) ships without {@code JdkAlpnApplicationProtocolNegotiator}
 * (upstream's glue to Jetty ALPN, Conscrypt, BouncyCastle and the JDK), so {@code
 * GrpcSslContexts.forClient().build()} fails with "JDK provider does not support ALPN protocol".
 * The part that drives the JDK's ALPN, {@code Java9SslEngine}, is still in the jar, package-private:
 * this class, in netty's package, wires it up as upstream does on Java 9+. With upstream's netty (a
 * Maven or Gradle build) it is not needed: the client uses it only when the usual way fails.
 */
public final class JdkAlpnClientContext {
    private JdkAlpnClientContext() {}

    /** Trusts the CA certificates of the PEM file {@code caFile}; offers {@code protocols} (h2). */
    @SuppressWarnings("deprecation") // JdkApplicationProtocolNegotiator, as upstream uses it
    public static SslContext forClient(Path caFile, String... protocols) throws IOException, GeneralSecurityException {
        KeyStore trusted = KeyStore.getInstance(KeyStore.getDefaultType());
        trusted.load(null, null);
        try (InputStream in = Files.newInputStream(caFile)) {
            int n = 0;
            for (Certificate certificate : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                trusted.setCertificateEntry("ca-" + n++, certificate);
            }
            if (n == 0) {
                throw new IOException(caFile + " holds no certificate");
            }
        }
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(trusted);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, trust.getTrustManagers(), null);
        if (!Java9SslUtils.supportsAlpn()) {
            throw new UnsupportedOperationException("this JDK has no ALPN");
        }
        JdkApplicationProtocolNegotiator alpn = new JdkBaseApplicationProtocolNegotiator(
                (engine, negotiator, isServer) -> new Java9SslEngine(engine, negotiator, isServer),
                JdkBaseApplicationProtocolNegotiator.FAIL_SELECTOR_FACTORY,
                JdkBaseApplicationProtocolNegotiator.FAIL_SELECTION_LISTENER_FACTORY,
                protocols);
        return new JdkSslContext(tls, true, null, IdentityCipherSuiteFilter.INSTANCE, alpn, ClientAuth.NONE, null, false);
    }
}
