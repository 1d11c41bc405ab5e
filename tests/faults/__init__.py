"""Fault injection: the gateway against an S3 that stalls, resets, throttles or fails, and against
its own processes being killed."""
