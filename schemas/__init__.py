"""qatir's JSON Schemas (the IR dump and the pattern table), shipped as package data."""
