"""Unit tests (no root). A package, so module names may repeat those of tests/integration."""
