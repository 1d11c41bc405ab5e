package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	pb "github.com/s3-upload-gateway/s3-upload-gateway/gen/go/gateway/v1"
	"google.golang.org/grpc/codes"
)

// chunkSize is the size of the data messages: 1 MiB is the gateway's fastest.
const chunkSize = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcBase64 is S3's spelling of a CRC: base64 of its big-endian bytes.
func crcBase64(value uint32) string {
	var digest [4]byte
	binary.BigEndian.PutUint32(digest[:], value)
	return base64.StdEncoding.EncodeToString(digest[:])
}

// objectSpec is the spec of an object with a full-object CRC32C.
func objectSpec(bucket, key, contentType string) *pb.WriteObjectSpec {
	return &pb.WriteObjectSpec{Object: &pb.CreateMultipartUploadRequest{
		Bucket:            bucket,
		Key:               key,
		ContentType:       contentType,
		ChecksumAlgorithm: pb.ChecksumAlgorithm_CHECKSUM_ALGORITHM_CRC32C,
		ChecksumType:      pb.ChecksumType_CHECKSUM_TYPE_FULL_OBJECT,
	}}
}

// objectCRC is the whole object's checksum, computed while the bytes are read, for the finish.
type objectCRC struct {
	algorithm pb.ChecksumAlgorithm
	table     *crc32.Table // nil for an algorithm this client does not compute
	value     uint32
}

func newObjectCRC(algorithm pb.ChecksumAlgorithm) *objectCRC {
	crc := &objectCRC{algorithm: algorithm}
	switch algorithm {
	case pb.ChecksumAlgorithm_CHECKSUM_ALGORITHM_CRC32C:
		crc.table = castagnoli
	case pb.ChecksumAlgorithm_CHECKSUM_ALGORITHM_CRC32:
		crc.table = crc32.IEEETable
	}
	return crc
}

func (c *objectCRC) update(p []byte) {
	if c.table != nil {
		c.value = crc32.Update(c.value, c.table, p)
	}
}

// finish carries the value for the gateway to check; without one (CRC64NVME, resumed from
// another client's token) the gateway's own checksum stands.
func (c *objectCRC) finish() *pb.FinishWrite {
	switch c.algorithm {
	case pb.ChecksumAlgorithm_CHECKSUM_ALGORITHM_CRC32C:
		return &pb.FinishWrite{ChecksumCrc32C: crcBase64(c.value)}
	case pb.ChecksumAlgorithm_CHECKSUM_ALGORITHM_CRC32:
		return &pb.FinishWrite{ChecksumCrc32: crcBase64(c.value)}
	}
	return &pb.FinishWrite{}
}

// readPrefix feeds the first n bytes of f to crc: a resumed stream does not send them again, but
// the finish covers the whole object.
func (c *objectCRC) readPrefix(f *os.File, n int64) error {
	if c.table == nil || n == 0 {
		return nil
	}
	buf := make([]byte, chunkSize)
	_, err := io.CopyBuffer(crcWriter{c}, io.NewSectionReader(f, 0, n), buf)
	return err
}

type crcWriter struct{ c *objectCRC }

func (w crcWriter) Write(p []byte) (int, error) { w.c.update(p); return len(p), nil }

func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, info.Size(), nil
}

// stream is one WriteObject call: the first message (spec or resume), the file's bytes from
// offset to size in 1 MiB data messages each with its CRC32C, and the finish.
type stream struct {
	first      *pb.WriteObjectRequest
	file       *os.File
	offset     int64
	size       int64
	crc        *objectCRC // covering the bytes before offset
	onProgress func(*pb.WriteProgress)
	// stopAfter > 0: stop sending after that many bytes, and call die once a part is persisted.
	stopAfter int64
	die       func(token string, persisted, sent int64)
}

type received struct {
	object *pb.WrittenObject
	err    error
}

// progressState is the latest progress message, shared with the receiving goroutine.
type progressState struct {
	mu        sync.Mutex
	persisted int64
	token     string
	changed   chan struct{}
}

func (p *progressState) set(progress *pb.WriteProgress) {
	p.mu.Lock()
	p.persisted, p.token = progress.GetPersistedSize(), progress.GetWriteToken()
	p.mu.Unlock()
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

func (p *progressState) get() (int64, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.persisted, p.token
}

func (s *stream) run(ctx context.Context, g *gateway) (*pb.WrittenObject, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	call, err := g.rpc.WriteObject(ctx)
	if err != nil {
		return nil, err
	}
	progress := &progressState{persisted: s.offset, changed: make(chan struct{}, 1)}
	answers := make(chan received, 1)
	go func() { // the answers: progress as parts land, the object last
		var written *pb.WrittenObject
		for {
			answer, err := call.Recv()
			if err == io.EOF && written != nil {
				answers <- received{object: written}
				return
			}
			if err == io.EOF {
				err = errors.New("WriteObject ended without the written object")
			}
			if err != nil {
				answers <- received{err: err}
				return
			}
			switch m := answer.Message.(type) {
			case *pb.WriteObjectResponse_Progress:
				progress.set(m.Progress)
				if s.onProgress != nil {
					s.onProgress(m.Progress)
				}
			case *pb.WriteObjectResponse_Object:
				written = m.Object
			}
		}
	}()

	sendErr := s.send(call, progress, answers)
	if errors.Is(sendErr, io.EOF) {
		// The gateway ended the call while we were sending: its status comes with the answers.
		answer := <-answers
		if answer.err == nil {
			answer.err = errors.New("WriteObject answered before the finish")
		}
		return nil, answer.err
	}
	if sendErr != nil {
		return nil, sendErr // the deferred cancel ends the call; a failed plain write commits nothing
	}
	answer := <-answers
	return answer.object, answer.err
}

var errEnded = errors.New("ended")

func (s *stream) send(call pb.UploadService_WriteObjectClient, progress *progressState, answers chan received) error {
	if err := call.Send(s.first); err != nil {
		return err
	}
	body := io.NewSectionReader(s.file, s.offset, s.size-s.offset)
	buf := make([]byte, chunkSize)
	var sent int64
	for remaining := s.size - s.offset; sent < remaining; {
		want := int64(len(buf))
		if remaining-sent < want {
			want = remaining - sent
		}
		n, err := io.ReadFull(body, buf[:want])
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return fmt.Errorf("%s: shorter than the %d bytes announced (did it change?)", s.file.Name(), s.size)
		} else if err != nil {
			return err
		}
		chunk := buf[:n]
		crc := crc32.Checksum(chunk, castagnoli)
		s.crc.update(chunk)
		// Send serializes the message before it returns, so buf can be reused.
		data := &pb.ChecksummedData{Content: chunk, Crc32C: &crc}
		if err := call.Send(&pb.WriteObjectRequest{Message: &pb.WriteObjectRequest_Data{Data: data}}); err != nil {
			return err
		}
		sent += int64(n)
		if s.stopAfter > 0 && sent >= s.stopAfter && s.die != nil {
			return s.waitAndDie(progress, answers, sent)
		}
	}
	if err := call.Send(&pb.WriteObjectRequest{Message: &pb.WriteObjectRequest_Finish{Finish: s.crc.finish()}}); err != nil {
		return err
	}
	return call.CloseSend()
}

// waitAndDie sends nothing more and, once S3 holds more of the object than when the stream
// began, hands the latest token to die (which exits the process, as a crash would).
func (s *stream) waitAndDie(progress *progressState, answers chan received, sent int64) error {
	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	for {
		if persisted, token := progress.get(); persisted > s.offset {
			s.die(token, persisted, sent)
			return errEnded // die returned: stop this stream anyway
		}
		select {
		case <-progress.changed:
		case answer := <-answers:
			if answer.err != nil {
				return answer.err
			}
			return errors.New("WriteObject answered before the finish")
		case <-timeout.C:
			return fmt.Errorf("--die-after-bytes: no part persisted within 2 minutes after %d bytes", sent)
		}
	}
}

// writeFile writes the file as one object with one WriteObject stream. After UNAVAILABLE (the
// gateway aborted the upload: nothing was committed) the whole write is retried.
func writeFile(ctx context.Context, g *gateway, path string, spec *pb.WriteObjectSpec) (*pb.WrittenObject, error) {
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	spec.ObjectSize = &size // optional scalars are pointers
	var written *pb.WrittenObject
	err = g.withRetry("WriteObject", false, func() error {
		s := &stream{
			first:  &pb.WriteObjectRequest{Message: &pb.WriteObjectRequest_Spec{Spec: spec}},
			file:   f,
			size:   size,
			crc:    newObjectCRC(spec.GetObject().GetChecksumAlgorithm()),
			offset: 0,
		}
		var err error
		written, err = s.run(ctx, g)
		return err
	})
	return written, err
}

// resumable writes a file resumably: the write survives the stream, the gateway replica, and
// this process; its token is all another process needs to finish it.
type resumable struct {
	client    *gateway
	path      string
	stopAfter int64
	die       func(token string, persisted, sent int64)
}

// start begins the write (StartResumableWrite) and streams it.
func (w resumable) start(ctx context.Context, spec *pb.WriteObjectSpec) (*pb.WrittenObject, error) {
	f, size, err := openSized(w.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	spec.ObjectSize = &size
	var started *pb.StartResumableWriteResponse
	err = w.client.withRetry("StartResumableWrite", false, func() (err error) {
		started, err = w.client.rpc.StartResumableWrite(ctx, &pb.StartResumableWriteRequest{Spec: spec})
		return err
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "client: resumable write: %s\n", started.GetWriteToken())
	return w.continueFrom(ctx, f, size, spec, started.GetWriteToken(), 0)
}

// resume continues a write from its token alone: QueryWriteStatus says how much S3 holds.
func (w resumable) resume(ctx context.Context, token string) (*pb.WrittenObject, error) {
	f, size, err := openSized(w.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	state, err := w.query(ctx, token)
	if err != nil {
		return nil, err
	}
	if state.GetObject() != nil { // finished already: the object it wrote
		return state.GetObject(), nil
	}
	spec := state.GetSpec()
	if spec.ObjectSize != nil && spec.GetObjectSize() != size {
		return nil, fmt.Errorf("%s has %d bytes; the write is of %d", w.path, size, spec.GetObjectSize())
	}
	return w.continueFrom(ctx, f, size, spec, state.GetWriteToken(), state.GetPersistedSize())
}

func (w resumable) query(ctx context.Context, token string) (*pb.QueryWriteStatusResponse, error) {
	var state *pb.QueryWriteStatusResponse
	err := w.client.withRetry("QueryWriteStatus", true, func() (err error) {
		state, err = w.client.rpc.QueryWriteStatus(ctx, &pb.QueryWriteStatusRequest{WriteToken: token})
		return err
	})
	return state, err
}

// continueFrom streams the write from persisted on. After UNAVAILABLE or DEADLINE_EXCEEDED it asks
// QueryWriteStatus where the write stands and continues from there, until --retries streams in a
// row persisted nothing new.
func (w resumable) continueFrom(ctx context.Context, f *os.File, size int64, spec *pb.WriteObjectSpec,
	token string, persisted int64) (*pb.WrittenObject, error) {
	failures := 0
	for {
		crc := newObjectCRC(spec.GetObject().GetChecksumAlgorithm())
		if err := crc.readPrefix(f, persisted); err != nil {
			return nil, err
		}
		latest := token
		var mu sync.Mutex
		s := &stream{
			first: &pb.WriteObjectRequest{Message: &pb.WriteObjectRequest_Resume{
				Resume: &pb.ResumeWrite{WriteToken: token, WriteOffset: persisted},
			}},
			file: f, offset: persisted, size: size, crc: crc,
			onProgress: func(p *pb.WriteProgress) {
				mu.Lock()
				latest = p.GetWriteToken()
				mu.Unlock()
			},
			stopAfter: w.stopAfter, die: w.die,
		}
		written, err := s.run(ctx, w.client)
		if err == nil {
			return written, nil
		}
		mu.Lock()
		token = latest
		mu.Unlock()
		before := persisted
		if codeOf(err) == codes.FailedPrecondition && reason(err) == "WRITE_OFFSET_MISMATCH" {
			// Another stream got further (or less far): resync from the error's metadata.
			decoded, _ := decode(err)
			metadata := decoded.ErrorInfo.GetMetadata()
			offset, perr := strconv.ParseInt(metadata["persistedSize"], 10, 64)
			if perr != nil {
				return nil, err
			}
			persisted = offset
			token = metadata["writeToken"]
		} else {
			delay, retry := retryDelay(err, failures+1, true)
			if !retry || failures >= w.client.retries {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "client: WriteObject: %s (%s), asking where the write stands in %s\n",
				codeName(codeOf(err)), reason(err), delay)
			time.Sleep(delay)
			state, qerr := w.query(ctx, token)
			if qerr != nil {
				return nil, qerr
			}
			if state.GetObject() != nil {
				return state.GetObject(), nil
			}
			persisted, token = state.GetPersistedSize(), state.GetWriteToken()
		}
		if persisted > before {
			failures = 0
		} else {
			failures++
		}
		if failures > w.client.retries {
			return nil, err
		}
	}
}
