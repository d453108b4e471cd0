"""Ready-made stages, one module per modality or concern."""
