"""Shared server runtime of every mlbackend service.

Bootstrap (``server``), settings, auth, the call interceptor (request ids,
deadlines, metrics, error mapping), TLS, logging and the domain errors that
service cores raise. Cores import only ``mlbackend_runtime.errors``.
"""
