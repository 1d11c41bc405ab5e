#!/usr/bin/env bash
# Build the Java example client with Debian's toolchain (no Maven, no Gradle, no Maven Central):
# protoc + grpc-java's plugin generate the stubs into a temporary directory, javac compiles them
# with src/, and OUT_DIR receives the classes and a launcher script.
#
#   examples/java/build.sh [OUT_DIR]      (default: examples/java/build, ignored by git)
#   OUT_DIR/client [--endpoint HOST:PORT] COMMAND ...
#
# Needs (Debian 12): default-jdk-headless libgrpc-java libprotobuf-java libnetty-java
# libperfmark-java libgeronimo-annotation-1.3-spec-java libgoogle-gson-java
# protobuf-compiler-grpc-java-plugin protobuf-compiler libprotobuf-dev
# and google/rpc/{status,error_details}.proto: from GOOGLE_RPC_PROTO_DIR, else from the
# googleapis-common-protos Python package (the repository's .venv, else python3's).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$HERE/build}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
JARS=${JAVA_LIBS:-/usr/share/java}
GRPC_JAVA_PLUGIN=${GRPC_JAVA_PLUGIN:-/usr/bin/grpc_java_plugin}
WKT_INCLUDE=${PROTOBUF_INCLUDE:-/usr/include}  # google/protobuf/{timestamp,any,duration}.proto

fail() { echo "build.sh: $*" >&2; exit 1; }

for tool in protoc javac java; do
    command -v "$tool" > /dev/null || fail "$tool not found (apt-get install -y protobuf-compiler default-jdk-headless)"
done
[ -x "$GRPC_JAVA_PLUGIN" ] || fail "$GRPC_JAVA_PLUGIN not found (apt-get install -y protobuf-compiler-grpc-java-plugin)"
[ -f "$WKT_INCLUDE/google/protobuf/timestamp.proto" ] \
    || fail "$WKT_INCLUDE/google/protobuf/timestamp.proto not found (apt-get install -y libprotobuf-dev)"

# google.rpc.Status, ErrorInfo, RetryInfo…: generated from googleapis' protos, which the
# googleapis-common-protos Python package ships (a dependency of grpcio-status).
RPC_DIR=${GOOGLE_RPC_PROTO_DIR:-}
if [ -z "$RPC_DIR" ]; then
    for python in "$ROOT/.venv/bin/python" python3; do
        RPC_DIR=$("$python" -c 'import os, google.rpc.status_pb2 as m; print(os.path.dirname(m.__file__))' \
            2> /dev/null) && break
        RPC_DIR=
    done
fi
[ -f "$RPC_DIR/status.proto" ] && [ -f "$RPC_DIR/error_details.proto" ] \
    || fail "google/rpc/status.proto not found: set GOOGLE_RPC_PROTO_DIR or pip install googleapis-common-protos"

# Debian's netty-all.jar is an empty aggregator: the netty jars are listed one by one. JDK 17 has
# no javax.annotation.Generated, which the generated stub uses: the geronimo jar provides it.
# libgrpc-java does not pull in libnetty-java by itself.
NAMES="grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub
    guava protobuf protobuf-util gson jsr305 error_prone_annotations perfmark-api
    geronimo-annotation-1.3-spec netty-transport netty-buffer netty-common netty-codec
    netty-codec-http netty-codec-http2 netty-handler netty-resolver netty-handler-proxy
    netty-codec-socks"
CP=
for name in $NAMES; do
    [ -f "$JARS/$name.jar" ] || fail "$JARS/$name.jar not found (see the packages at the top of $0)"
    CP=${CP:+$CP:}$JARS/$name.jar
done

GEN=$(mktemp -d)
trap 'rm -rf "$GEN"' EXIT
mkdir -p "$GEN/include/google/rpc" "$GEN/java"
cp "$RPC_DIR/status.proto" "$RPC_DIR/error_details.proto" "$GEN/include/google/rpc/"

protoc -I "$ROOT/proto" -I "$GEN/include" -I "$WKT_INCLUDE" \
    --java_out="$GEN/java" \
    --plugin=protoc-gen-grpc-java="$GRPC_JAVA_PLUGIN" --grpc-java_out="$GEN/java" \
    gateway/v1/upload_service.proto google/rpc/status.proto google/rpc/error_details.proto

rm -rf "$OUT/classes"
find "$GEN/java" "$HERE/src" -name '*.java' > "$GEN/sources"
javac --release 17 -encoding UTF-8 -nowarn -d "$OUT/classes" -cp "$CP" "@$GEN/sources"

echo "$OUT/classes:$CP" > "$OUT/classpath"
cat > "$OUT/client" <<LAUNCHER
#!/bin/sh
exec java \${JAVA_OPTS:-} -cp "$OUT/classes:$CP" io.github.s3uploadgateway.example.Client "\$@"
LAUNCHER
chmod +x "$OUT/client"
echo "build.sh: built $OUT/client" >&2
