"""Generic resilience: circuit breakers, retry, database recovery. Knows nothing about tweets."""

from resilience.breaker import CircuitBreaker
from resilience.errors import CircuitOpenError, ErrorKind, ServiceError
from resilience.registry import get_breaker

__all__ = ["CircuitBreaker", "CircuitOpenError", "ErrorKind", "ServiceError", "get_breaker"]
