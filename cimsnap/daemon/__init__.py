"""The ``cimsnap serve`` process.

gRPC server, listening, configuration, metrics, sd_notify, logging, and the client.
"""
