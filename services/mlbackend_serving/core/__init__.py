"""The serving domain: loaded model versions, input validation, batching, health.

Nothing here imports grpc or generated messages; ``transport/`` converts.
"""
