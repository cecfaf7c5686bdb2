"""Scenario suite that scores the diagnosis on apps it was not written for.

``apps/`` holds FastAPI apps written the way users write them, each with one
leak (or none); ``scenarios.py`` says how to drive each and what the truth is;
``harness.py`` serves one under a real uvicorn, drives it, measures RSS from
outside and scores the verdict. ``benchmarks/bench_diagnosis.py`` runs all of
them; ``tests/diagnosis/test_unseen.py`` is the short CI subset.
"""
