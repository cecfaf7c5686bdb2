"""The directory ``leakyspanner run`` puts first on PYTHONPATH; only its ``sitecustomize`` matters."""
