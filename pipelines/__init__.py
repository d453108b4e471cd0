"""Pipeline definitions runnable by ``headrace submit``."""
