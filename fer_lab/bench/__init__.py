"""Measuring fer_lab: overhead against a plain loop, data pipelines, sweeps; the GPU check."""
