"""The gateway's domain: version resolution, feature checks, experiments, records.

Nothing here imports grpc or generated messages; the upstream adapters and the
transport convert at the edges.
"""
