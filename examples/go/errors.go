package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// codeNames are the canonical names of the status codes (codes.Code's String is "NotFound").
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

func codeName(code codes.Code) string {
	if name, ok := codeNames[code]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", code)
}

// gatewayError is what a gRPC error carries: its status and the decoded google.rpc details.
type gatewayError struct {
	Code       codes.Code
	Message    string
	ErrorInfo  *errdetails.ErrorInfo  // the gateway sends exactly one
	RetryInfo  *errdetails.RetryInfo  // when a retry can succeed
	BadRequest *errdetails.BadRequest // when the request was malformed
	Status     *status.Status
}

// decode reads the google.rpc.Status that travels in the grpc-status-details-bin trailer.
func decode(err error) (*gatewayError, bool) {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return nil, false
	}
	decoded := &gatewayError{Code: st.Code(), Message: st.Message(), Status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			decoded.ErrorInfo = d
		case *errdetails.RetryInfo:
			decoded.RetryInfo = d
		case *errdetails.BadRequest:
			decoded.BadRequest = d
		}
	}
	return decoded, true
}

// reason is the ErrorInfo reason of err ("" when there is none).
func reason(err error) string {
	if decoded, ok := decode(err); ok && decoded.ErrorInfo != nil {
		return decoded.ErrorInfo.GetReason()
	}
	return ""
}

func codeOf(err error) codes.Code { return status.Code(err) }

// report is the JSON printed on stderr for a gRPC error.
type report struct {
	Code       int               `json:"code"`
	CodeName   string            `json:"code_name"`
	Message    string            `json:"message"`
	Reason     string            `json:"reason,omitempty"`
	Domain     string            `json:"domain,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	RetryDelay string            `json:"retry_delay,omitempty"`
	Details    []json.RawMessage `json:"details"`
}

func describe(e *gatewayError) report {
	out := report{Code: int(e.Code), CodeName: codeName(e.Code), Message: e.Message, Details: []json.RawMessage{}}
	if info := e.ErrorInfo; info != nil {
		out.Reason, out.Domain, out.Metadata = info.GetReason(), info.GetDomain(), info.GetMetadata()
	}
	if e.RetryInfo != nil && e.RetryInfo.GetRetryDelay() != nil {
		out.RetryDelay = e.RetryInfo.GetRetryDelay().AsDuration().String()
	}
	// Every detail, known or not, as protojson renders an Any: {"@type": ..., fields...}.
	for _, detail := range e.Status.Proto().GetDetails() {
		text, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(detail)
		if err != nil { // a type this program does not link: keep its bytes
			text, _ = json.Marshal(map[string]string{
				"@type": detail.GetTypeUrl(), "value": base64.StdEncoding.EncodeToString(detail.GetValue()),
			})
		}
		out.Details = append(out.Details, text)
	}
	return out
}

func reportError(stderr io.Writer, err error) {
	decoded, ok := decode(err)
	if !ok {
		fmt.Fprintf(stderr, "client: %v\n", err)
		return
	}
	fmt.Fprintf(stderr, "client: %s (%d): %s\n", codeName(decoded.Code), decoded.Code, decoded.Message)
	printJSON(stderr, describe(decoded))
}

// retryDelay says whether a failed call may be sent again, and after how long: UNAVAILABLE is
// retried after the RetryInfo delay, else with exponential backoff; RESOURCE_EXHAUSTED only
// when the gateway attached a RetryInfo. With idempotent (DEADLINE_EXCEEDED too) for calls that
// can be repeated whatever happened to the first one.
func retryDelay(err error, attempt int, idempotent bool) (time.Duration, bool) {
	decoded, ok := decode(err)
	if !ok {
		return 0, false
	}
	var hint time.Duration
	if decoded.RetryInfo != nil && decoded.RetryInfo.GetRetryDelay() != nil {
		hint = decoded.RetryInfo.GetRetryDelay().AsDuration()
	}
	switch {
	case decoded.Code == codes.Unavailable:
	case decoded.Code == codes.ResourceExhausted && hint > 0:
	case decoded.Code == codes.DeadlineExceeded && idempotent:
	default:
		return 0, false
	}
	if hint > 0 {
		return hint, true
	}
	backoff := 250 * time.Millisecond << uint(attempt) // 0.5 s, 1 s, 2 s, …
	if backoff > 10*time.Second {
		backoff = 10 * time.Second
	}
	return backoff, true
}

// withRetry runs call until it succeeds, fails for good, or g.retries retries are spent.
func (g *gateway) withRetry(what string, idempotent bool, call func() error) error {
	for attempt := 1; ; attempt++ {
		err := call()
		if err == nil || attempt > g.retries {
			return err
		}
		delay, retry := retryDelay(err, attempt, idempotent)
		if !retry {
			return err
		}
		fmt.Fprintf(os.Stderr, "client: %s: %s (%s), retry %d of %d in %s\n",
			what, codeName(codeOf(err)), reason(err), attempt, g.retries, delay)
		time.Sleep(delay)
	}
}

// printJSON writes value as indented JSON.
func printJSON(w io.Writer, value interface{}) {
	text, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		panic(err) // only our own plain values get here
	}
	fmt.Fprintf(w, "%s\n", text)
}

// protoJSON renders a message with the .proto's field names, omitting unset fields (int64 values
// are strings, as in every proto3 JSON).
func protoJSON(m proto.Message) (json.RawMessage, error) {
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
}

func printProto(w io.Writer, m proto.Message) error {
	text, err := protoJSON(m)
	if err != nil {
		return err
	}
	printJSON(w, text) // re-indented: protojson's own spacing is deliberately unstable
	return nil
}
