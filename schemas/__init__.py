"""Pandera schemas: the output contracts of the shipped pipelines."""
