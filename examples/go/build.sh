#!/bin/sh
# Generates the Go code of proto/gateway/v1/upload_service.proto and builds the client with Debian's
# Go toolchain (GOPATH mode: no module proxy needed). The generated code goes to a temporary
# GOPATH that is removed afterwards; nothing is written into the repository but OUTPUT.
#
#   examples/go/build.sh [OUTPUT]     (default: examples/go/build/client, ignored by git)
#
# Needs: apt-get install -y golang-go golang-google-grpc-dev golang-google-protobuf-dev \
#          golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev \
#          protoc-gen-go protoc-gen-go-grpc protobuf-compiler
# GOCACHE is honoured (a warm cache makes a rebuild take a second or two).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUTPUT=${1:-$HERE/build/client}
GOCODE=/usr/share/gocode
PACKAGES="golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler"

missing=""
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" > /dev/null 2>&1 || missing="$missing $tool"
done
for dir in google.golang.org/grpc google.golang.org/protobuf google.golang.org/genproto/googleapis/rpc/errdetails \
    github.com/golang/protobuf/ptypes; do
    [ -d "$GOCODE/src/$dir" ] || missing="$missing $dir"
done
# Without golang-github-golang-protobuf-1-5-dev (1.3 instead), grpc-go 1.33 uses the old codec and
# panics with "protobuf tag not enough fields" on the first response.
[ -f "$GOCODE/src/github.com/golang/protobuf/proto/proto.go" ] &&
    grep -q 'google.golang.org/protobuf' "$GOCODE/src/github.com/golang/protobuf/proto/proto.go" ||
    missing="$missing golang-github-golang-protobuf-1-5-dev"
if [ -n "$missing" ]; then
    echo "build.sh: missing:$missing" >&2
    echo "build.sh: apt-get install -y $PACKAGES" >&2
    exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gateway-go.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
PROGRAM=$WORK/src/example.com/gateway-client
mkdir -p "$PROGRAM"

# The generated package lands under its go_package path:
# $WORK/src/github.com/s3-upload-gateway/s3-upload-gateway/gen/go/gateway/v1 (package gatewayv1).
protoc -I "$ROOT/proto" -I /usr/include \
    --go_out="$WORK/src" --go_opt=paths=import \
    --go-grpc_out="$WORK/src" --go-grpc_opt=paths=import \
    "$ROOT/proto/gateway/v1/upload_service.proto"
cp "$HERE"/*.go "$PROGRAM/"

if [ -z "${GOCACHE:-}" ]; then
    GOCACHE=$(go env GOCACHE 2> /dev/null || true)
    case "$GOCACHE" in "" | off) GOCACHE=$WORK/cache ;; esac
fi
mkdir -p "$(dirname "$OUTPUT")"
case "$OUTPUT" in /*) ;; *) OUTPUT=$PWD/$OUTPUT ;; esac
cd "$PROGRAM"
# CGO_ENABLED=0: no C compiler needed, and a static binary that runs anywhere.
GOPATH=$WORK:$GOCODE GO111MODULE=off GOFLAGS= GOCACHE=$GOCACHE GOPROXY=off CGO_ENABLED=0 \
    go vet example.com/gateway-client
GOPATH=$WORK:$GOCODE GO111MODULE=off GOFLAGS= GOCACHE=$GOCACHE GOPROXY=off CGO_ENABLED=0 \
    go build -trimpath -o "$OUTPUT" example.com/gateway-client
echo "build.sh: built $OUTPUT" >&2
