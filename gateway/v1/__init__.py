"""Generated code for the gateway.v1 protobuf package (see scripts/gen_protos.py)."""
