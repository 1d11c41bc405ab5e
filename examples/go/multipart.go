package main

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	pb "github.com/s3-upload-gateway/s3-upload-gateway/gen/go/gateway/v1"
)

// uploadedPart is one part as this client sent it and S3 answered it.
type uploadedPart struct {
	PartNumber int32 `json:"part_number"`
	Size       int64 `json:"size"`
	// The CRC32C this client computed and declared in the part's header (the gateway checked it).
	ChecksumCRC32C string          `json:"checksum_crc32c"`
	Response       json.RawMessage `json:"response"` // the UploadPartResponse
}

type multipartResult struct {
	UploadID string          `json:"upload_id"`
	Parts    []uploadedPart  `json:"parts"`
	Complete json.RawMessage `json:"complete"` // the CompleteMultipartUploadResponse
}

// multipartUpload runs the multipart upload itself: CreateMultipartUpload with CRC32C, one
// UploadPart stream per part (header with the part's CRC32C, then 1 MiB data messages), and
// CompleteMultipartUpload. Any failure aborts the upload.
func multipartUpload(ctx context.Context, g *gateway, path, bucket, key, contentType string,
	partSize int64) (*multipartResult, error) {
	f, size, err := openSized(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var created *pb.CreateMultipartUploadResponse
	err = g.withRetry("CreateMultipartUpload", false, func() (err error) {
		created, err = g.rpc.CreateMultipartUpload(ctx, &pb.CreateMultipartUploadRequest{
			Bucket: bucket, Key: key, ContentType: contentType,
			ChecksumAlgorithm: pb.ChecksumAlgorithm_CHECKSUM_ALGORITHM_CRC32C,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	result := &multipartResult{UploadID: created.GetUploadId()}
	abort := func(cause error) (*multipartResult, error) {
		_, abortErr := g.rpc.AbortMultipartUpload(ctx, &pb.AbortMultipartUploadRequest{
			Bucket: bucket, Key: key, UploadId: result.UploadID,
		})
		if abortErr != nil {
			fmt.Fprintf(os.Stderr, "client: AbortMultipartUpload %s failed too: %v\n", result.UploadID, abortErr)
		}
		return nil, cause
	}

	var completed []*pb.CompletedPart
	for number, offset := int32(1), int64(0); offset < size || number == 1; number++ {
		length := partSize
		if size-offset < length {
			length = size - offset
		}
		body := io.NewSectionReader(f, offset, length)
		// The header carries the part's checksum, so it is computed before the part is sent.
		hasher := crc32.New(castagnoli)
		if _, err := io.Copy(hasher, body); err != nil {
			return abort(err)
		}
		checksum := crcBase64(hasher.Sum32())
		header := &pb.UploadPartHeader{
			Bucket: bucket, Key: key, UploadId: result.UploadID, PartNumber: number,
			ContentLength:  &length,
			ChecksumCrc32C: checksum,
		}
		var answer *pb.UploadPartResponse
		err := g.withRetry(fmt.Sprintf("UploadPart %d", number), true, func() (err error) {
			// A retry re-sends the whole part: re-uploading a part number is idempotent.
			answer, err = uploadPart(ctx, g, header, io.NewSectionReader(f, offset, length))
			return err
		})
		if err != nil {
			return abort(err)
		}
		response, err := protoJSON(answer)
		if err != nil {
			return abort(err)
		}
		result.Parts = append(result.Parts, uploadedPart{
			PartNumber: number, Size: length, ChecksumCRC32C: checksum, Response: response,
		})
		completed = append(completed, &pb.CompletedPart{
			PartNumber: number, Etag: answer.GetEtag(), ChecksumCrc32C: checksum,
		})
		offset += length
	}

	var done *pb.CompleteMultipartUploadResponse
	err = g.withRetry("CompleteMultipartUpload", true, func() (err error) {
		done, err = g.rpc.CompleteMultipartUpload(ctx, &pb.CompleteMultipartUploadRequest{
			Bucket: bucket, Key: key, UploadId: result.UploadID, Parts: completed,
		})
		return err
	})
	if err != nil {
		return abort(err)
	}
	if result.Complete, err = protoJSON(done); err != nil {
		return nil, err
	}
	return result, nil
}

// uploadPart streams one part: the header, then the bytes in 1 MiB data messages, each with its
// own CRC32C.
func uploadPart(ctx context.Context, g *gateway, header *pb.UploadPartHeader, body io.Reader) (*pb.UploadPartResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	call, err := g.rpc.UploadPart(ctx)
	if err != nil {
		return nil, err
	}
	if err := call.Send(&pb.UploadPartRequest{Message: &pb.UploadPartRequest_Header{Header: header}}); err != nil {
		return closeAndRecv(call, err)
	}
	buf := make([]byte, chunkSize)
	for {
		n, err := io.ReadFull(body, buf)
		if n > 0 {
			crc := crc32.Checksum(buf[:n], castagnoli)
			data := &pb.ChecksummedData{Content: buf[:n], Crc32C: &crc}
			if err := call.Send(&pb.UploadPartRequest{Message: &pb.UploadPartRequest_Data{Data: data}}); err != nil {
				return closeAndRecv(call, err)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return call.CloseAndRecv()
}

// closeAndRecv finds out why a Send failed: io.EOF means the gateway ended the call, and its
// status comes with the answer.
func closeAndRecv(call pb.UploadService_UploadPartClient, sendErr error) (*pb.UploadPartResponse, error) {
	if sendErr != io.EOF {
		return nil, sendErr
	}
	answer, err := call.CloseAndRecv()
	if err == nil {
		err = fmt.Errorf("UploadPart answered before the whole part was sent: %v", answer)
	}
	return nil, err
}

// listParts is one page of ListParts.
func listParts(ctx context.Context, g *gateway, bucket, key, uploadID string) (*pb.ListPartsResponse, error) {
	var page *pb.ListPartsResponse
	err := g.withRetry("ListParts", true, func() (err error) {
		page, err = g.rpc.ListParts(ctx, &pb.ListPartsRequest{Bucket: bucket, Key: key, UploadId: uploadID})
		return err
	})
	return page, err
}
