// Command client is a small Go client of the s3-upload-gateway (proto/gateway/v1/upload_service.proto).
//
//	client write FILE BUCKET KEY                   one WriteObject stream; prints the WrittenObject
//	client resumable FILE BUCKET KEY [--die-after-bytes N]
//	                                               a resumable write (StartResumableWrite + WriteObject)
//	client resume TOKEN FILE                       continues a resumable write from its token alone
//	client multipart FILE BUCKET KEY [--part-size N]
//	                                               CreateMultipartUpload, UploadPart…, CompleteMultipartUpload
//	client listparts BUCKET KEY UPLOAD_ID          one page of ListParts
//
// Every subcommand takes --endpoint HOST:PORT (default $GATEWAY_ENDPOINT, else localhost:50051),
// --ca FILE (TLS, trusting the CAs in FILE), --tls (TLS with the system's CAs), --token-file FILE
// (sends "authorization: Bearer TOKEN") and --retries N (UNAVAILABLE is retried after the
// RetryInfo delay, else with backoff).
//
// Results go to stdout as JSON, with the .proto's field names. A gRPC error goes to stderr: a line
// "client: CODE (n): message", then the decoded google.rpc.Status (ErrorInfo, RetryInfo, every
// detail) as JSON; the exit status is 1. A usage error exits 2; a write stopped by
// --die-after-bytes exits 3 after printing its latest token.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

const (
	exitError       = 1
	exitUsage       = 2
	exitInterrupted = 3
)

const usageText = `usage: client SUBCOMMAND ARGS [flags]
  client write FILE BUCKET KEY [--content-type TYPE]
  client resumable FILE BUCKET KEY [--content-type TYPE] [--die-after-bytes N]
  client resume TOKEN FILE
  client multipart FILE BUCKET KEY [--content-type TYPE] [--part-size N]
  client listparts BUCKET KEY UPLOAD_ID
flags of every subcommand:
  --endpoint HOST:PORT  the gateway (default $GATEWAY_ENDPOINT, else localhost:50051)
  --ca FILE             use TLS, trusting the CA certificates in FILE
  --tls                 use TLS with the system's CA certificates
  --token-file FILE     send the bearer token in FILE (its first line)
  --retries N           retries after UNAVAILABLE (default 3)
sizes take a suffix: KiB, MiB, GiB (e.g. 20MiB)
`

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	err := dispatch(args, stdout)
	if err == nil {
		return 0
	}
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(stderr, "client: %s\n%s", usage.msg, usageText)
		return exitUsage
	}
	reportError(stderr, err)
	return exitError
}

// sizeFlag is a byte count with an optional KiB/MiB/GiB suffix.
type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeFlag) Set(value string) error {
	n, err := parseSize(value)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

func parseSize(value string) (int64, error) {
	units := []struct {
		suffix string
		factor int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}}
	factor := int64(1)
	for _, unit := range units {
		if strings.HasSuffix(value, unit.suffix) {
			value, factor = strings.TrimSuffix(value, unit.suffix), unit.factor
			break
		}
	}
	n, err := strconv.ParseInt(value, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("not a size: %q", value)
	}
	return n * factor, nil
}

// parse parses flags anywhere among the positional arguments, which it returns.
func parse(fs *flag.FlagSet, args []string, want int) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if len(positional) != want {
		return nil, usageError{fmt.Sprintf("%s takes %d arguments, not %d", fs.Name(), want, len(positional))}
	}
	return positional, nil
}

func dispatch(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"no subcommand"}
	}
	command, args := args[0], args[1:]
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	conn := connectionFlags(fs)
	contentType := fs.String("content-type", "", "the object's Content-Type")
	var dieAfter, partSize sizeFlag = 0, 8 << 20
	fs.Var(&dieAfter, "die-after-bytes", "resumable: stop sending after N bytes, exit once a part is persisted")
	fs.Var(&partSize, "part-size", "multipart: the part size (at least 5 MiB but for the last part)")

	ctx := context.Background()
	switch command {
	case "write":
		pos, err := parse(fs, args, 3)
		if err != nil {
			return err
		}
		client, err := conn.dial()
		if err != nil {
			return err
		}
		defer client.Close()
		written, err := writeFile(ctx, client, pos[0], objectSpec(pos[1], pos[2], *contentType))
		if err != nil {
			return err
		}
		return printProto(stdout, written)
	case "resumable":
		pos, err := parse(fs, args, 3)
		if err != nil {
			return err
		}
		client, err := conn.dial()
		if err != nil {
			return err
		}
		defer client.Close()
		var die func(token string, persisted, sent int64)
		if dieAfter > 0 {
			die = func(token string, persisted, sent int64) {
				printJSON(stdout, map[string]interface{}{
					"write_token": token, "persisted_size": persisted, "sent_bytes": sent,
				})
				os.Exit(exitInterrupted) // as a crash would: no cancel, no goodbye
			}
		}
		w := resumable{client: client, path: pos[0], stopAfter: int64(dieAfter), die: die}
		written, err := w.start(ctx, objectSpec(pos[1], pos[2], *contentType))
		if err != nil {
			return err
		}
		return printProto(stdout, written)
	case "resume":
		pos, err := parse(fs, args, 2)
		if err != nil {
			return err
		}
		client, err := conn.dial()
		if err != nil {
			return err
		}
		defer client.Close()
		w := resumable{client: client, path: pos[1]}
		written, err := w.resume(ctx, pos[0])
		if err != nil {
			return err
		}
		return printProto(stdout, written)
	case "multipart":
		pos, err := parse(fs, args, 3)
		if err != nil {
			return err
		}
		if partSize < 1<<20 {
			return usageError{"--part-size must be at least 1MiB (S3 wants 5MiB but for the last part)"}
		}
		client, err := conn.dial()
		if err != nil {
			return err
		}
		defer client.Close()
		result, err := multipartUpload(ctx, client, pos[0], pos[1], pos[2], *contentType, int64(partSize))
		if err != nil {
			return err
		}
		printJSON(stdout, result)
		return nil
	case "listparts":
		pos, err := parse(fs, args, 3)
		if err != nil {
			return err
		}
		client, err := conn.dial()
		if err != nil {
			return err
		}
		defer client.Close()
		page, err := listParts(ctx, client, pos[0], pos[1], pos[2])
		if err != nil {
			return err
		}
		return printProto(stdout, page)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return nil
	default:
		return usageError{fmt.Sprintf("unknown subcommand %q", command)}
	}
}
