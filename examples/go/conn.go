package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"

	pb "github.com/s3-upload-gateway/s3-upload-gateway/gen/go/gateway/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// gateway is a connection to the gateway with its stub and retry policy.
type gateway struct {
	conn    *grpc.ClientConn
	rpc     pb.UploadServiceClient
	retries int
}

func (g *gateway) Close() error { return g.conn.Close() }

// connection holds the flags that say how to reach the gateway.
type connection struct {
	endpoint  string
	caFile    string
	tls       bool
	tokenFile string
	retries   int
}

func connectionFlags(fs *flag.FlagSet) *connection {
	c := &connection{}
	endpoint := os.Getenv("GATEWAY_ENDPOINT")
	if endpoint == "" {
		endpoint = "localhost:50051"
	}
	fs.StringVar(&c.endpoint, "endpoint", endpoint, "the gateway, HOST:PORT")
	fs.StringVar(&c.caFile, "ca", "", "TLS: trust the CA certificates in this PEM file")
	fs.BoolVar(&c.tls, "tls", false, "TLS with the system's CA certificates")
	fs.StringVar(&c.tokenFile, "token-file", "", "a file whose first line is the bearer token")
	fs.IntVar(&c.retries, "retries", 3, "retries after UNAVAILABLE")
	return c
}

func (c *connection) dial() (*gateway, error) {
	// Accept the URL forms of the other clients too (https://host:port, grpc://host:port).
	target := c.endpoint
	if i := strings.Index(target, "://"); i >= 0 {
		if target[:i] == "https" || target[:i] == "grpcs" {
			c.tls = true
		}
		target = target[i+3:]
	}
	secure := c.tls || c.caFile != ""
	var options []grpc.DialOption
	if secure {
		var creds credentials.TransportCredentials
		if c.caFile != "" {
			var err error
			if creds, err = credentials.NewClientTLSFromFile(c.caFile, ""); err != nil {
				return nil, usageError{fmt.Sprintf("--ca %s: %v", c.caFile, err)}
			}
		} else {
			creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
		}
		options = append(options, grpc.WithTransportCredentials(creds))
	} else {
		// grpc-go 1.33 (Debian 12) predates insecure.NewCredentials().
		options = append(options, grpc.WithInsecure())
	}
	if c.tokenFile != "" {
		token, err := readToken(c.tokenFile)
		if err != nil {
			return nil, usageError{err.Error()}
		}
		if !secure && !isLoopback(target) {
			return nil, usageError{"refusing to send a bearer token without TLS to " + target + " (use --ca or --tls)"}
		}
		options = append(options, grpc.WithPerRPCCredentials(bearer{token: token, secure: secure}))
	}
	conn, err := grpc.Dial(target, options...)
	if err != nil {
		return nil, err
	}
	return &gateway{conn: conn, rpc: pb.NewUploadServiceClient(conn), retries: c.retries}, nil
}

// bearer sends "authorization: Bearer TOKEN" with every call.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false only for a plaintext connection to loopback (checked in dial).
func (b bearer) RequireTransportSecurity() bool { return b.secure }

func readToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %v", err)
	}
	token := strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0])
	if token == "" || strings.ContainsAny(token, " \t") {
		return "", fmt.Errorf("--token-file %s: the first line is not a token", path)
	}
	return token, nil
}

func isLoopback(target string) bool {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
