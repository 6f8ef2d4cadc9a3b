"""Generated gRPC stubs for proto/plugforge/v1 (scripts/gen-protos). Do not edit."""
