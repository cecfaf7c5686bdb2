"""Benchmarks of leakyspanner's overhead; see benchmarks/README.md. Not part of the package."""
