"""A small shop backend: routers with prefixes, a token dependency, Pydantic bodies, a service module."""
